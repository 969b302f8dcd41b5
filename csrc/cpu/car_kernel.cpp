// CPU kernels of the CAR ops (SRDL eq. 5 and eq. 6 + GMP).
//
// Nothing of size N x C x P x D is ever allocated: eq. 5 is a dot over k of
// s[k] tanh(u[n,p,k] wc[c,k]) computed on the fly per (n, c, p), and its
// backward recomputes tanh. The innermost loops run over D, contiguous in
// every operand, so the compiler vectorises them (see FMLR_CPU_CLONES).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "car_math.h"
#include "car_simd.h"
#include "checks.h"
#include "parallel.h"

namespace fastmlr {
namespace {

// Width of the partial sums of the reductions over D: independent lanes let
// the loops vectorise without -ffast-math (which would be needed to reorder a
// single running sum). 16 floats = one AVX-512 or two AVX2 registers.
constexpr int kLanes = 16;

template <typename T>
inline T sum_lanes(T* acc) {
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0];
}

// out[c * P] = sigmoid(b + sum_k s[k] tanh(u[k] wc[c, k])) for one (n, p) row
// u. The tanh is evaluated inside the reduction (nothing is stored), for two
// categories per pass over u and s: two independent chains of vector work
// and half the loads of u and s.
template <typename T>
FMLR_CPU_CLONES void sa_forward_row(const T* __restrict__ u, const T* __restrict__ wc, const T* __restrict__ s, T b,
                                    int64_t C, int64_t D, int64_t P, T* __restrict__ out) {
  int64_t c = 0;
  for (; c + 2 <= C; c += 2) {
    const T* w0 = wc + c * D;
    const T* w1 = w0 + D;
    T a0[kLanes] = {}, a1[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= D; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        a0[j] += s[k + j] * tanh_fast(u[k + j] * w0[k + j]);
        a1[j] += s[k + j] * tanh_fast(u[k + j] * w1[k + j]);
      }
    }
    T t0 = 0, t1 = 0;
    for (; k < D; ++k) {
      t0 += s[k] * tanh_fast(u[k] * w0[k]);
      t1 += s[k] * tanh_fast(u[k] * w1[k]);
    }
    out[c * P] = sigmoid(b + (sum_lanes(a0) + t0));
    out[(c + 1) * P] = sigmoid(b + (sum_lanes(a1) + t1));
  }
  for (; c < C; ++c) {
    const T* w = wc + c * D;
    T a[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= D; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) a[j] += s[k + j] * tanh_fast(u[k + j] * w[k + j]);
    }
    T t = 0;
    for (; k < D; ++k) t += s[k] * tanh_fast(u[k] * w[k]);
    out[c * P] = sigmoid(b + (sum_lanes(a) + t));
  }
}

// One (n, p) row of the backward: with dz = dL/dz[n, c, p] (z the pre-sigmoid
// logit) and t = tanh(u[k] wc[c, k]), a = dz s[k] (1 - t^2):
//   du[k] += a wc[c, k],  dwc[c, k] += a u[k],  ds[k] += dz t.
template <typename T>
FMLR_CPU_CLONES void sa_backward_row(const T* __restrict__ u, const T* __restrict__ wc, const T* __restrict__ s,
                                     const T* __restrict__ dz, int64_t C, int64_t D, int64_t P, T* __restrict__ du,
                                     T* __restrict__ dwc, T* __restrict__ ds) {
  for (int64_t c = 0; c < C; ++c) {
    const T g = dz[c * P];
    const T* w = wc + c * D;
    T* dw = dwc + c * D;
    for (int64_t k = 0; k < D; ++k) {
      const T t = tanh_fast(u[k] * w[k]);
      const T a = g * s[k] * (T(1) - t * t);
      du[k] += a * w[k];
      dw[k] += a * u[k];
      ds[k] += g * t;
    }
  }
}

// The explicit float32 kernels of this CPU (car_simd.h), or nullptr: the generic loops run (double,
// FASTMLR_CPU_CAPABILITY=default, or a CPU/compiler without them).
using SaRow = void (*)(const float*, const float*, const float*, int64_t, int64_t, float*, int64_t, bool);
using PoolTile = void (*)(const float*, const float*, const float*, const float*, const float*, int64_t, float*,
                         int32_t*, float*, int32_t*);
using PoolValues = void (*)(const float*, const float*, const float*, const float*, const float*, int64_t, float*,
                           float*);
using TanhRow = void (*)(const float*, int64_t, float*);

// One table per ISA, so adding a kernel or an ISA is one row, not one more switch.
struct SimdKernels {
  SaRow sa_row;
  PoolTile pool_tile;
  PoolValues pool_values;
  TanhRow tanh_row;
};

// nullptr where the generic loops run.
const SimdKernels* simd_kernels() {
#if FMLR_X86_SIMD
  static const SimdKernels avx512{&simd::sa_row_avx512, &simd::pool_tile_avx512, &simd::pool_values_avx512,
                                  &simd::tanh_avx512};
  static const SimdKernels avx2{&simd::sa_row_avx2, &simd::pool_tile_avx2, &simd::pool_values_avx2,
                                &simd::tanh_avx2};
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return &avx512;
    case CpuIsa::kAvx2: return &avx2;
    default: break;
  }
#endif
  return nullptr;
}

SaRow sa_row_simd() { return simd_kernels() ? simd_kernels()->sa_row : nullptr; }
TanhRow tanh_row_simd() { return simd_kernels() ? simd_kernels()->tanh_row : nullptr; }

// Whether x[0..n) holds only finite numbers; *maxabs = the largest magnitude (meaningful when true).
// On the bit patterns with the sign cleared, which order as the magnitudes do and put every infinity and
// NaN (exponent all ones, >= 0x7f800000) above every finite number: one integer maximum, which vectorises.
FMLR_CPU_CLONES bool finite_maxabs(const float* __restrict__ x, int64_t n, float* maxabs) {
  int32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t b;
    std::memcpy(&b, x + i, sizeof b);
    b &= 0x7fffffff;
    m = b > m ? b : m;
  }
  std::memcpy(maxabs, &m, sizeof m);
  return m < 0x7f800000;
}

// Eq. 5 with the explicit float32 kernels; false (nothing done) where they do not run.
bool sa_forward_simd(const float* up, const float* wp, const float* sp, float b, int64_t N, int64_t C, int64_t P,
                     int64_t D, float* op) {
  const auto row = sa_row_simd();
  if (!row) return false;
  // Finite u and wc (one pass over each, shared by the C x P x D products): no product is NaN.
  float unused;
  const bool finite = finite_maxabs(up, N * P * D, &unused) && finite_maxabs(wp, C * D, &unused);
  // Grain: a few rows per task; each row is C x D tanh evaluations.
  cpu::parallel_for(0, N * P, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / P, p = r % P;
      float* o = op + n * C * P + p;
      row(up + r * D, wp, sp, C, D, o, P, finite);
      for (int64_t c = 0; c < C; ++c) o[c * P] = sigmoid(b + o[c * P]);
    }
  });
  return true;
}
bool sa_forward_simd(const double*, const double*, const double*, double, int64_t, int64_t, int64_t, int64_t,
                     double*) {
  return false;
}

at::Tensor car_spatial_attention_cpu(const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_,
                                     const at::Tensor& b_) {
  check_car_spatial_attention(u_, wc_, s_, b_);
  TORCH_CHECK(u_.device().is_cpu(), "car_spatial_attention: expected CPU tensors, got ", u_.device());
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  const int64_t N = u.size(0), P = u.size(1), D = u.size(2), C = wc.size(0);
  auto out = at::empty({N, C, P}, u.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "car_spatial_attention_cpu", [&] {
    const scalar_t b = b_.item<scalar_t>();
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // Grain: a few rows per task; each row is C x D tanh evaluations.
    if (sa_forward_simd(up, wp, sp, b, N, C, P, D, op)) return;
    cpu::parallel_for(0, N * P, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / P, p = r % P;
        sa_forward_row<scalar_t>(up + r * D, wp, sp, b, C, D, P, op + n * C * P + p);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> car_spatial_attention_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_, const at::Tensor& b,
    const at::Tensor& out) {
  check_car_spatial_attention(u_, wc_, s_, b);
  const char* op = "car_spatial_attention_backward";
  const int64_t N = u_.size(0), P = u_.size(1), D = u_.size(2), C = wc_.size(0);
  check_shape(op, "grad", grad, "[N, C, P]", {N, C, P});
  check_shape(op, "out", out, "[N, C, P]", {N, C, P});
  check_same(op, "u", u_, {{"grad", &grad}, {"out", &out}});
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  // dL/dz through the sigmoid; N x C x P, small.
  const auto dz = (grad * out * (1 - out)).contiguous();
  auto db = dz.sum().reshape(b.sizes());
  auto du = at::zeros_like(u);
  const int64_t R = N * P;
  // Fixed chunks of rows, each with its own dwc/ds partial sums, reduced in
  // chunk order: deterministic for a given thread count, no atomics.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R));
  auto dwc_part = at::zeros({chunks, C, D}, u.options());
  auto ds_part = at::zeros({chunks, D}, u.options());
  if (R > 0 && C > 0 && D > 0) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "car_spatial_attention_backward_cpu", [&] {
      const scalar_t* up = u.const_data_ptr<scalar_t>();
      const scalar_t* wp = wc.const_data_ptr<scalar_t>();
      const scalar_t* sp = s.const_data_ptr<scalar_t>();
      const scalar_t* dzp = dz.const_data_ptr<scalar_t>();
      scalar_t* dup = du.mutable_data_ptr<scalar_t>();
      scalar_t* dwp = dwc_part.mutable_data_ptr<scalar_t>();
      scalar_t* dsp = ds_part.mutable_data_ptr<scalar_t>();
      cpu::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t ch = cb; ch < ce; ++ch) {
          for (int64_t r = ch * R / chunks; r < (ch + 1) * R / chunks; ++r) {
            const int64_t n = r / P, p = r % P;
            sa_backward_row<scalar_t>(up + r * D, wp, sp, dzp + n * C * P + p, C, D, P, dup + r * D,
                                      dwp + ch * C * D, dsp + ch * D);
          }
        }
      });
    });
  }
  auto dwc = dwc_part[0].clone();
  auto ds = ds_part[0].clone();
  for (int64_t ch = 1; ch < chunks; ++ch) {
    dwc.add_(dwc_part[ch]);
    ds.add_(ds_part[ch]);
  }
  return {du, dwc, ds, db};
}

// feat[k] = max_p hf[p, k] (sa[p] + ca[k]) for k < K of one (n, c), with hf
// the [P, D] transpose of 0.5 f[n] (row stride ld) so that k is contiguous;
// arg = first maximising p. hf holds 0.5 f rounded once, as the reference
// rounds it before the product. NaN propagates (as torch.amax): the first NaN
// term wins and stays.
template <typename T>
FMLR_CPU_CLONES void pool_row(const T* __restrict__ hf, const T* __restrict__ sa, const T* __restrict__ ca, int64_t P,
                              int64_t K, int64_t ld, T* __restrict__ best, int32_t* __restrict__ arg) {
  for (int64_t k = 0; k < K; ++k) {
    best[k] = hf[k] * (sa[0] + ca[k]);
    arg[k] = 0;
  }
  for (int64_t p = 1; p < P; ++p) {
    const T* fp = hf + p * ld;
    const T sp = sa[p];
    const int32_t pi = static_cast<int32_t>(p);
    for (int64_t k = 0; k < K; ++k) {
      const T v = fp[k] * (sp + ca[k]);
      const T b = best[k];
      const int32_t a = arg[k];
      // strict: the first p wins ties; v != v: a NaN replaces a number, never another NaN
      const bool gt = v > b || (v != v && b == b);
      // Both stores unconditional (a select, not a masked store, which is slow on some x86 CPUs).
      best[k] = gt ? v : b;
      arg[k] = a ^ ((a ^ pi) & -static_cast<int32_t>(gt));
    }
  }
}

// Columns of hf per pass: a [P, kPoolBlock] block of it (200 KB at P = 196)
// stays in the L2 cache while every category of a task reads it.
constexpr int64_t kPoolBlock = 256;

// hf[p * kPoolTile + k] = 0.5 f[k * P + p] for k < K, zero for K <= k < kPoolTile (one column tile of f,
// transposed so that k is contiguous). With check, returns whether every value is finite; without it (the
// answer is not needed), false and no scan.
bool load_pool_tile(const float* f, int64_t K, int64_t P, float* hf, bool check) {
  float unused;
  bool ok = check;
  for (int64_t k = 0; k < K; ++k) {
    const float* fk = f + k * P;
    if (ok) ok = finite_maxabs(fk, P, &unused);
    for (int64_t p = 0; p < P; ++p) hf[p * kPoolTile + k] = 0.5f * fk[p];
  }
  if (K < kPoolTile) {
    for (int64_t p = 0; p < P; ++p) std::fill(hf + p * kPoolTile + K, hf + (p + 1) * kPoolTile, 0.0f);
  }
  return ok;
}

// car_pool with the explicit kernels. One task per (n, column tile of kPoolTile): the tile of 0.5 f (exact),
// transposed to [P][kPoolTile] and zero-padded, goes into a buffer of the thread's own (kept between calls,
// so no call allocates and faults in fresh pages for it) and stays in L1/L2 while every category reads it,
// two categories per pass. Values and positions as pool_row's (same rounding, ties, NaN rule). Without idx
// (the caller needs no gradient) and with candidates that cannot be NaN, the kernel keeps the values alone.
void car_pool_tiled(const SimdKernels& kern, const at::Tensor& f_, const at::Tensor& sa, const at::Tensor& ca_,
                    at::Tensor& feat, int64_t* ip) {
  const auto f = f_.contiguous();
  const auto ca = ca_.contiguous();
  const int64_t N = f.size(0), D = f.size(1), P = f.size(2), C = sa.size(1);
  const int64_t T = (D + kPoolTile - 1) / kPoolTile;
  const float* fp = f.const_data_ptr<float>();
  const float* sp = sa.const_data_ptr<float>();
  const float* cp = ca.const_data_ptr<float>();
  float* op = feat.mutable_data_ptr<float>();
  // No candidate is NaN when f, sa and ca are finite and max |sa| + max |ca| does not overflow (then every
  // sa + ca is a number and 0.5 f (sa + ca) a number or an infinity); f is checked tile by tile below.
  float msa = 0.0f, mca = 0.0f;
  const bool values_only = ip == nullptr && finite_maxabs(sp, sa.numel(), &msa) &&
                           finite_maxabs(cp, ca.numel(), &mca) && msa + mca <= std::numeric_limits<float>::max();
  cpu::parallel_for(0, N * T, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> tile;
    if (tile.size() < static_cast<size_t>(P * kPoolTile)) tile.resize(P * kPoolTile);
    float* hf = tile.data();
    alignas(64) float cpad[2][kPoolTile];
    alignas(64) float best[2][kPoolTile];
    alignas(64) int32_t arg[2][kPoolTile];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / T, k0 = (r % T) * kPoolTile, K = std::min(kPoolTile, D - k0);
      const bool fast = load_pool_tile(fp + (n * D + k0) * P, K, P, hf, values_only);
      for (int64_t c = 0; c < C; c += 2) {
        const int64_t nc = n * C + c, two = std::min<int64_t>(2, C - c);
        const float* cas[2] = {cp + nc * D + k0, cp + (nc + 1) * D + k0};
        float* outs[2] = {best[0], best[1]};
        for (int64_t j = 0; j < two; ++j) {
          if (K < kPoolTile) {  // the last tile: ca zero-padded, results through the local rows
            std::fill(std::copy(cas[j], cas[j] + K, cpad[j]), cpad[j] + kPoolTile, 0.0f);
            cas[j] = cpad[j];
          } else if (fast) {
            outs[j] = op + (nc + j) * D + k0;  // a whole tile of the output row: written in place
          }
        }
        const float* sa2 = two == 2 ? sp + (nc + 1) * P : nullptr;
        if (fast) {
          kern.pool_values(hf, sp + nc * P, cas[0], sa2, cas[1], P, outs[0], outs[1]);
        } else {
          kern.pool_tile(hf, sp + nc * P, cas[0], sa2, cas[1], P, best[0], arg[0], best[1], arg[1]);
        }
        for (int64_t j = 0; j < two; ++j) {
          if (outs[j] == best[j]) std::copy(best[j], best[j] + K, op + (nc + j) * D + k0);
          if (ip && !fast) std::copy(arg[j], arg[j] + K, ip + (nc + j) * D + k0);
        }
      }
    }
  });
}

// index: whether to return the positions of the maxima (what the backward reads); without them idx is an
// empty tensor and the float32 kernels may skip tracking them.
std::tuple<at::Tensor, at::Tensor> car_pool_cpu(const at::Tensor& f_, const at::Tensor& sa_, const at::Tensor& ca_,
                                                bool index) {
  check_car_pool(f_, sa_, ca_);
  TORCH_CHECK(f_.device().is_cpu(), "car_pool: expected CPU tensors, got ", f_.device());
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  TORCH_CHECK(P <= std::numeric_limits<int32_t>::max(), "car_pool: P = ", P, " exceeds the int32 range");
  const auto sa = sa_.contiguous();
  auto feat = at::empty({N, C, D}, f_.options());
  auto idx = at::empty({index ? N : 0, C, D}, f_.options().dtype(at::kLong));
  if (feat.numel() == 0) return {feat, idx};
  if (f_.scalar_type() == at::kFloat) {
    if (const auto kern = simd_kernels()) {
      car_pool_tiled(*kern, f_, sa, ca_, feat, index ? idx.mutable_data_ptr<int64_t>() : nullptr);
      return {feat, idx};
    }
  }
  // 0.5 f transposed to [N, P, D] (the size of f, never N x C x P x D).
  const auto hf = (f_ * 0.5).transpose(1, 2).contiguous();
  const auto ca = ca_.contiguous();
  AT_DISPATCH_FLOATING_TYPES(f_.scalar_type(), "car_pool_cpu", [&] {
    const scalar_t* fp = hf.const_data_ptr<scalar_t>();
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    const scalar_t* cp = ca.const_data_ptr<scalar_t>();
    scalar_t* op = feat.mutable_data_ptr<scalar_t>();
    int64_t* ip = index ? idx.mutable_data_ptr<int64_t>() : nullptr;
    cpu::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> arg(std::min(D, kPoolBlock));
      for (int64_t k0 = 0; k0 < D; k0 += kPoolBlock) {
        const int64_t K = std::min(kPoolBlock, D - k0);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / C;
          pool_row<scalar_t>(fp + n * P * D + k0, sp + r * P, cp + r * D + k0, P, K, D, op + r * D + k0, arg.data());
          if (ip) std::copy(arg.begin(), arg.begin() + K, ip + r * D + k0);
        }
      }
    });
  });
  return {feat, idx};
}

// With p* = idx[n,c,k] and feat = (0.5 f[n,k,p*]) (sa[n,c,p*] + ca[n,c,k]):
//   dca[n,c,k] = g 0.5 f[n,k,p*],  dsa[n,c,p*] += g 0.5 f[n,k,p*],
//   df[n,k,p*] += g 0.5 (sa[n,c,p*] + ca[n,c,k]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> car_pool_backward_cpu(const at::Tensor& grad_, const at::Tensor& f_,
                                                                     const at::Tensor& sa_, const at::Tensor& ca_,
                                                                     const at::Tensor& idx_) {
  check_car_pool(f_, sa_, ca_);
  const char* op = "car_pool_backward";
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  check_shape(op, "grad", grad_, "[N, C, D]", {N, C, D});
  check_shape(op, "idx", idx_, "[N, C, D]", {N, C, D});
  TORCH_CHECK(idx_.scalar_type() == at::kLong, op, ": idx must be int64, got ", idx_.scalar_type());
  check_same(op, "f", f_, {{"grad", &grad_}});
  const auto grad = grad_.contiguous();
  const auto f = f_.contiguous();
  const auto sa = sa_.contiguous();
  const auto ca = ca_.contiguous();
  const auto idx = idx_.contiguous();
  auto df = at::zeros_like(f);
  auto dsa = at::zeros_like(sa);
  auto dca = at::zeros_like(ca);
  if (grad.numel() == 0) return {df, dsa, dca};
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "car_pool_backward_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    const scalar_t* cp = ca.const_data_ptr<scalar_t>();
    const int64_t* ip = idx.const_data_ptr<int64_t>();
    scalar_t* dfp = df.mutable_data_ptr<scalar_t>();
    scalar_t* dsp = dsa.mutable_data_ptr<scalar_t>();
    scalar_t* dcp = dca.mutable_data_ptr<scalar_t>();
    // dsa and dca: each (n, c) row owned by one task.
    cpu::parallel_for(0, N * C, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / C;
        for (int64_t k = 0; k < D; ++k) {
          const int64_t p = ip[r * D + k];
          const scalar_t v = gp[r * D + k] * (scalar_t(0.5) * fp[(n * D + k) * P + p]);
          dcp[r * D + k] = v;
          dsp[r * P + p] += v;
        }
      }
    });
    // df: each (n, k) row of P entries owned by one task.
    cpu::parallel_for(0, N * D, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / D, k = r % D;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t nc = n * C + c;
          const int64_t p = ip[nc * D + k];
          dfp[r * P + p] += gp[nc * D + k] * scalar_t(0.5) * (sp[nc * P + p] + cp[nc * D + k]);
        }
      }
    });
  });
  return {df, dsa, dca};
}

template <typename T>
FMLR_CPU_CLONES void tanh_row(const T* __restrict__ x, int64_t n, T* __restrict__ y) {
  for (int64_t i = 0; i < n; ++i) y[i] = tanh_fast(x[i]);
}

at::Tensor tanh_fast_cpu(const at::Tensor& x_) {
  TORCH_CHECK(x_.device().is_cpu() && x_.scalar_type() == at::kFloat, "tanh_fast: expected a float32 CPU tensor, got ",
              x_.scalar_type(), " on ", x_.device());
  const auto x = x_.contiguous();
  auto y = at::empty_like(x);
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  const auto simd_row = tanh_row_simd();
  cpu::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    if (simd_row) {
      simd_row(xp + begin, end - begin, yp + begin);
    } else {
      tanh_row<float>(xp + begin, end - begin, yp + begin);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmlr, CPU, m) {
  m.impl("tanh_fast", &tanh_fast_cpu);
  m.impl("car_spatial_attention", &car_spatial_attention_cpu);
  m.impl("car_spatial_attention_backward", &car_spatial_attention_backward_cpu);
  m.impl("car_pool", &car_pool_cpu);
  m.impl("car_pool_backward", &car_pool_backward_cpu);
}

}  // namespace fastmlr
