// Per-element math of fastmlr's fused ops, shared by the CPU kernels
// (csrc/cpu) and the CUDA kernels (csrc/cuda) so that both compute the same
// function with the same index arithmetic. Definitions: docs/srdl.md, steps 5
// and 6 and "Object erasing"; fastmlr/ops/reference.py is the reference.
//
// Precision promised (setup.py builds the CUDA side with nvcc's IEEE modes,
// -ftz=false -prec-div=true -prec-sqrt=true, never --use_fast_math):
// - division and square root are IEEE round-to-nearest on both sides, and
//   denormals are kept (no flush to zero);
// - float tanh/exp: the CPU uses tanh_fast below (absolute error at most 4e-7)
//   and libm's expf; the GPU uses CUDA's tanhf and expf (at most 2 ulp, CUDA
//   Math API), not the hardware approximations (__expf, tanh.approx) that
//   fast-math substitutes; double uses the libm/CUDA double functions;
// - products and sums may be contracted into FMAs (one rounding instead of
//   two) on both sides, so float sums agree with the reference to float
//   rounding, not bit for bit;
// - the OE rule (oe_axis_run) and pool_value round every intermediate as the
//   reference does and agree with it exactly, in every dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tanh_coeffs.h"

#if defined(__CUDACC__)
#define FMLR_HD __host__ __device__ __forceinline__
#else
#define FMLR_HD inline
#endif

// Hot CPU row loops are compiled three times, for AVX-512, AVX2+FMA and the baseline
// x86-64, and picked at load time, so one wheel is fast and still portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && !defined(__clang__)
#define FMLR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FMLR_CPU_CLONES
#endif

namespace fastmlr {

// A marginal whose max - min is at most this is "flat": no obvious object
// (reference.FLAT_EPS).
constexpr double kFlatEps = 1e-6;

// NaN and finiteness tests on the op math type (float or double; half and
// bfloat16 are widened first), for the NaN rules of car_pool (NaN propagates)
// and oe_boxes (a map with a non-finite value erases nothing).
template <typename Op>
FMLR_HD bool is_nan(Op v) {
#if defined(__CUDA_ARCH__)
  return isnan(v);
#else
  return std::isnan(v);
#endif
}

template <typename Op>
FMLR_HD bool is_finite(Op v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// tanh in float, written so that a host loop over it vectorises (std::tanh
// does not): an odd rational minimax approximation on [-9, 9],
//   tanh(x) ~ x (1 + p1 z + p2 z^2 + p3 z^3 + p4 z^4) / (1 + q1 z + ... + q4 z^4),  z = x^2,
// fitted to float64 tanh (Lawson-weighted linearised least squares, leading
// coefficients fixed to 1 so that tanh(x) = x exactly for tiny and subnormal x).
// |x| > 9 is clamped to 9, where 1 - tanh(9) = 3e-8 is below float's spacing
// at 1; inf gives +-1 and NaN stays NaN (the clamps compare false on NaN).
// Error against float64 tanh: at most 4e-7 absolute (3.3e-7 measured, near
// |x| = 8.5: under 6 float spacings of the result) and 3e-7 relative for
// |x| < 1 (2.3e-7 measured); libm's tanhf is within 3.1e-8. tests/test_ops_cpp.py
// checks both bounds on a dense grid. In eq. 5 these errors enter sums over D
// weighted by s, far inside the float32 tolerance of the op. Cost: one
// division, ten multiply-adds and four compare-selects, no branch.
FMLR_HD float tanh_fast(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  using namespace tanh_coeffs;
  x = x < -kClamp ? -kClamp : x;
  x = x > kClamp ? kClamp : x;
  const float z = x * x;
  float p = kP[0];
  p = p * z + kP[1];
  p = p * z + kP[2];
  p = p * z + kP[3];
  p = p * z + 1.0f;
  float q = kQ[0];
  q = q * z + kQ[1];
  q = q * z + kQ[2];
  q = q * z + kQ[3];
  q = q * z + 1.0f;
  // Near |x| = 9 the rounded quotient can pass 1 by one float spacing: kept in
  // [-1, 1], so that 1 - t^2 (the backward's derivative) is never negative.
  float t = (x * p) / q;
  t = t > 1.0f ? 1.0f : t;
  t = t < -1.0f ? -1.0f : t;
  return t;
#endif
}

// Double precision keeps the exact libm tanh: gradcheck differentiates it.
FMLR_HD double tanh_fast(double x) { return tanh(x); }

FMLR_HD float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
FMLR_HD double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

// One candidate of eq. 6, (0.5 f) (sa + ca), rounded to T after each step as
// PyTorch rounds each op of the reference, so the maximum and its position
// match the reference exactly in every dtype. Op is T's arithmetic type.
template <typename T, typename Op>
FMLR_HD Op pool_value(T f, T sa, T ca) {
  const T half_f = static_cast<T>(Op(0.5) * static_cast<Op>(f));
  const T w = static_cast<T>(static_cast<Op>(sa) + static_cast<Op>(ca));
  return static_cast<Op>(static_cast<T>(static_cast<Op>(half_f) * static_cast<Op>(w)));
}

// IEEE round-to-nearest division whatever the compiler flags (__fdiv_rn is
// never approximated, even under --use_fast_math): the OE threshold compares a
// quotient with alpha, and the reference divides with IEEE rounding.
FMLR_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FMLR_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// The OE rule on one marginal m[0..L) (docs/srdl.md "Object erasing"):
// min-max normalise, keep positions with value >= alpha, group them into runs
// of consecutive indices, and choose the run that contains the global maximum;
// among several such runs the widest, then the first. A marginal with
// max - min <= kFlatEps is flat. T is the storage type (float, double, Half,
// BFloat16); each intermediate is rounded to T as the reference does, and
// `Op` is float for Half/BFloat16 (their arithmetic), T otherwise.
template <typename T, typename Op>
FMLR_HD void oe_axis_run(const T* m, int64_t L, double alpha, int64_t* start, int64_t* end, bool* flat) {
  T lo = m[0];
  T hi = m[0];
  for (int64_t i = 1; i < L; ++i) {
    lo = static_cast<Op>(m[i]) < static_cast<Op>(lo) ? m[i] : lo;
    hi = static_cast<Op>(m[i]) > static_cast<Op>(hi) ? m[i] : hi;
  }
  const T rng = static_cast<T>(static_cast<Op>(hi) - static_cast<Op>(lo));
  *flat = static_cast<Op>(rng) <= static_cast<Op>(static_cast<T>(kFlatEps));
  const Op denom = static_cast<Op>(rng) > Op(0) ? static_cast<Op>(rng) : Op(1);
  const Op a = static_cast<Op>(static_cast<T>(alpha));
  int64_t best_start = -1, best_end = -1, best_len = 0;
  int64_t run_start = -1;
  bool run_has_max = false;
  for (int64_t i = 0; i <= L; ++i) {
    bool on = false;
    bool is_max = false;
    if (i < L) {
      const T d = static_cast<T>(static_cast<Op>(m[i]) - static_cast<Op>(lo));
      const T v = static_cast<T>(div_rn(static_cast<Op>(d), denom));
      on = static_cast<Op>(v) >= a;
      is_max = static_cast<Op>(m[i]) == static_cast<Op>(hi);
    }
    if (on) {
      if (run_start < 0) {
        run_start = i;
        run_has_max = false;
      }
      run_has_max = run_has_max || is_max;
    } else if (run_start >= 0) {
      const int64_t len = i - run_start;
      if (run_has_max && len > best_len) {  // strict: the first run wins ties
        best_len = len;
        best_start = run_start;
        best_end = i - 1;
      }
      run_start = -1;
    }
  }
  *start = best_start;
  *end = best_end;
}

// Whether (x, y) lies in the inclusive box (x0, x1, y0, y1); a row of -1
// contains nothing.
FMLR_HD bool in_box(int64_t x, int64_t y, const int64_t* box) {
  return x >= box[0] && x <= box[1] && y >= box[2] && y <= box[3];
}

}  // namespace fastmlr
