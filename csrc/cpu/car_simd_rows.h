// The bodies of the explicitly vectorised CAR row kernels (car_simd.h), written once against a small
// vector type V and compiled twice: car_simd_avx512.cpp (V = 16 floats) and car_simd_avx2.cpp
// (V = 8 floats), each under its own `#pragma GCC target`. Everything here has internal linkage
// (anonymous namespace) and includes nothing but the coefficients, so that no inline function compiled
// for AVX-512 can be merged by the linker into code that runs on a CPU without it.
//
// V provides: type R (register of V::kW floats), I (of kW int32), M (a lane mask); set1, seti, addi,
// load, load_n (the first n lanes, zeros elsewhere), store, store_n, store_i, add, mul,
// fmadd(a, b, c) = a b + c, clamp(x, -h, h) (tanh_fast's clamps, x < -h ? -h : x then x > h ? h : x,
// NaN kept), clamp_no_nan (the same for a number; anything for a NaN), div, sum (of the lanes),
// gt_or_nan(v, b) (v > b, or v NaN and b not: pool_row's rule), select / select_i (b where the mask is
// off, v where it is on), max(v, b) (v > b ? v : b).
#pragma once

#include "tanh_coeffs.h"

namespace {

using fastmlr::tanh_coeffs::kClamp;
using fastmlr::tanh_coeffs::kP;
using fastmlr::tanh_coeffs::kQ;

// tanh_fast (car_math.h), operation for operation: clamp, z = x^2, the two Horner chains (contracted
// to FMAs as GCC contracts the scalar code), (x p) / q, clamp to [-1, 1]. kNoNaN: the caller knows x is
// never NaN (finite inputs; x may still overflow to +-inf), and the clamps may use V::clamp_no_nan,
// which on AVX-512 is one instruction but turns a NaN into a number.
template <class V, bool kNoNaN>
struct Tanh {
  typename V::R lo = V::set1(-kClamp), hi = V::set1(kClamp), one = V::set1(1.0f), mone = V::set1(-1.0f);
  typename V::R p0 = V::set1(kP[0]), p1 = V::set1(kP[1]), p2 = V::set1(kP[2]), p3 = V::set1(kP[3]);
  typename V::R q0 = V::set1(kQ[0]), q1 = V::set1(kQ[1]), q2 = V::set1(kQ[2]), q3 = V::set1(kQ[3]);

  inline typename V::R operator()(typename V::R x) const {
    x = kNoNaN ? V::clamp_no_nan(x, lo, hi) : V::clamp(x, lo, hi);
    const auto z = V::mul(x, x);
    auto p = V::fmadd(p0, z, p1);
    auto q = V::fmadd(q0, z, q1);
    p = V::fmadd(p, z, p2);
    q = V::fmadd(q, z, q2);
    p = V::fmadd(p, z, p3);
    q = V::fmadd(q, z, q3);
    p = V::fmadd(p, z, one);
    q = V::fmadd(q, z, one);
    auto t = V::div(V::mul(x, p), q);
    return kNoNaN ? V::clamp_no_nan(t, mone, one) : V::clamp(t, mone, one);
  }
};

// Four categories per pass over u and s (four independent chains of vector work, a quarter of the
// loads of u and s); the last lanes of a row (D not a multiple of kW) are loaded as zeros, whose
// tanh is 0 and adds nothing. kNoNaN: u and wc hold no NaN and no infinity, so no u wc is NaN.
template <class V, bool kNoNaN>
inline void sa_row(const float* u, const float* wc, const float* s, int64_t C, int64_t D, float* zsum,
                   int64_t stride) {
  const Tanh<V, kNoNaN> th;
  const int64_t Dv = D - D % V::kW;
  const int rem = static_cast<int>(D - Dv);
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    const float* w0 = wc + c * D;
    const float* w1 = w0 + D;
    const float* w2 = w1 + D;
    const float* w3 = w2 + D;
    auto a0 = V::set1(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < Dv; k += V::kW) {
      const auto uk = V::load(u + k), sk = V::load(s + k);
      a0 = V::fmadd(sk, th(V::mul(uk, V::load(w0 + k))), a0);
      a1 = V::fmadd(sk, th(V::mul(uk, V::load(w1 + k))), a1);
      a2 = V::fmadd(sk, th(V::mul(uk, V::load(w2 + k))), a2);
      a3 = V::fmadd(sk, th(V::mul(uk, V::load(w3 + k))), a3);
    }
    if (rem) {
      const auto uk = V::load_n(u + Dv, rem), sk = V::load_n(s + Dv, rem);
      a0 = V::fmadd(sk, th(V::mul(uk, V::load_n(w0 + Dv, rem))), a0);
      a1 = V::fmadd(sk, th(V::mul(uk, V::load_n(w1 + Dv, rem))), a1);
      a2 = V::fmadd(sk, th(V::mul(uk, V::load_n(w2 + Dv, rem))), a2);
      a3 = V::fmadd(sk, th(V::mul(uk, V::load_n(w3 + Dv, rem))), a3);
    }
    zsum[c * stride] = V::sum(a0);
    zsum[(c + 1) * stride] = V::sum(a1);
    zsum[(c + 2) * stride] = V::sum(a2);
    zsum[(c + 3) * stride] = V::sum(a3);
  }
  for (; c < C; ++c) {
    const float* w = wc + c * D;
    auto a = V::set1(0.0f);
    for (int64_t k = 0; k < Dv; k += V::kW) a = V::fmadd(V::load(s + k), th(V::mul(V::load(u + k), V::load(w + k))), a);
    if (rem) a = V::fmadd(V::load_n(s + Dv, rem), th(V::mul(V::load_n(u + Dv, rem), V::load_n(w + Dv, rem))), a);
    zsum[c * stride] = V::sum(a);
  }
}

// kT registers of maxima (and, with kIndex, of their positions) per category, two categories per pass over
// the P rows of a tile (each row's load serves both; 2 kT independent chains); kTile / (kT kW) passes per
// tile. Candidate values are rounded as pool_row rounds them: (sa + ca) first, then the product with 0.5 f
// (never contracted: a sum times a number). sa and ca point at category c; sa2 and ca2 at the second
// category (nullptr: one category).
// kIndex: compare-and-select with pool_row's rules (first maximum; a NaN term replaces a number and stays),
// positions kept in arg/arg2. !kIndex: the values alone, by max(v, best), which keeps the earlier of equal
// values as pool_row does but would lose a NaN: only for candidates that cannot be NaN (the caller has
// checked that f, sa, ca are finite and that no sa + ca overflows); arg/arg2 are not touched.
template <class V, int kT, int64_t kTile, bool kIndex>
inline void pool_tile(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, int32_t* arg, float* best2, int32_t* arg2) {
  static_assert(kTile % (kT * V::kW) == 0, "the tile is a whole number of passes");
  const int nc = sa2 ? 2 : 1;
  const float* sas[2] = {sa, sa2};
  const float* cas[2] = {ca, ca2};
  float* bests[2] = {best, best2};
  int32_t* args[2] = {arg, arg2};
  for (int64_t k0 = 0; k0 < kTile; k0 += kT * V::kW) {
    typename V::R cv[2][kT], bv[2][kT];
    typename V::I av[2][kT];
    for (int j = 0; j < 2; ++j) {
      const int jj = j < nc ? j : 0;  // one category: the second set of registers repeats the first
      const auto s0 = V::set1(sas[jj][0]);
      for (int t = 0; t < kT; ++t) {
        cv[j][t] = V::load(cas[jj] + k0 + t * V::kW);
        bv[j][t] = V::mul(V::load(hf + k0 + t * V::kW), V::add(s0, cv[j][t]));
        if constexpr (kIndex) av[j][t] = V::seti(0);
      }
    }
    const float* sb = sas[nc - 1];
    auto pi = V::seti(0);
    const auto one = V::seti(1);
    for (int64_t p = 1; p < P; ++p) {
      const float* row = hf + p * kTile + k0;
      const typename V::R sp[2] = {V::set1(sa[p]), V::set1(sb[p])};
      if constexpr (kIndex) pi = V::addi(pi, one);
      for (int t = 0; t < kT; ++t) {
        const auto h = V::load(row + t * V::kW);
        for (int j = 0; j < 2; ++j) {
          const auto v = V::mul(h, V::add(sp[j], cv[j][t]));
          if constexpr (kIndex) {
            const auto m = V::gt_or_nan(v, bv[j][t]);
            bv[j][t] = V::select(m, bv[j][t], v);
            av[j][t] = V::select_i(m, av[j][t], pi);
          } else {
            bv[j][t] = V::max(v, bv[j][t]);
          }
        }
      }
    }
    for (int j = 0; j < nc; ++j) {
      for (int t = 0; t < kT; ++t) {
        V::store(bests[j] + k0 + t * V::kW, bv[j][t]);
        if constexpr (kIndex) V::store_i(args[j] + k0 + t * V::kW, av[j][t]);
      }
    }
  }
}

template <class V>
inline void tanh_rows(const float* x, int64_t n, float* y) {
  const Tanh<V, false> th;
  int64_t i = 0;
  for (; i + V::kW <= n; i += V::kW) V::store(y + i, th(V::load(x + i)));
  if (i < n) V::store_n(y + i, th(V::load_n(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

}  // namespace
