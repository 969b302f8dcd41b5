// The CAR row kernels (car_simd_rows.h) for AVX-512 F + DQ (16 floats a register). Only called after
// cpu_isa() has found AVX-512 F and DQ on this CPU (car_simd.h).
#include "car_simd.h"
#if FMLR_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
#include <immintrin.h>

#include <cstdint>

namespace {
struct V512 {
  static constexpr int kW = 16;
  using R = __m512;
  using I = __m512i;
  using M = __mmask16;
  static inline R set1(float v) { return _mm512_set1_ps(v); }
  static inline I seti(int32_t v) { return _mm512_set1_epi32(v); }
  static inline I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static inline R load(const float* p) { return _mm512_loadu_ps(p); }
  static inline __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static inline R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static inline void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static inline void store_n(float* p, R v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
  static inline void store_i(int32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
  static inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static inline R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  // vmaxps/vminps return the second operand when either is NaN, and (first > second ? first : second),
  // so x < lo ? lo : x is max(lo, x) and x > hi ? hi : x is min(hi, x), a NaN x kept.
  static inline R clamp(R x, R lo, R hi) { return _mm512_min_ps(hi, _mm512_max_ps(lo, x)); }
  // One vrangeps (AVX512DQ) instead of two: imm 0b0010 = the operand of smaller magnitude, with x's sign,
  // i.e. x clamped to [-h, h]. A NaN x comes out as h on AMD Zen 5 (measured), hence only for numbers.
  static inline R clamp_no_nan(R x, R, R h) { return _mm512_range_ps(x, h, 0x02); }
  static inline R div(R a, R b) { return _mm512_div_ps(a, b); }
  static inline float sum(R v) { return _mm512_reduce_add_ps(v); }
  // !(v <= b) is v > b or either NaN; masked by "b is a number": pool_row's rule.
  static inline M gt_or_nan(R v, R b) {
    return _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(b, b, _CMP_ORD_Q), v, b, _CMP_NLE_UQ);
  }
  static inline R select(M m, R b, R v) { return _mm512_mask_mov_ps(b, m, v); }
  static inline R max(R v, R b) { return _mm512_max_ps(v, b); }  // v > b ? v : b
  static inline I select_i(M m, I a, I v) { return _mm512_mask_mov_epi32(a, m, v); }
};
}  // namespace

#include "car_simd_rows.h"

namespace fastmlr {
namespace simd {
void sa_row_avx512(const float* u, const float* wc, const float* s, int64_t C, int64_t D, float* zsum,
                   int64_t stride, bool finite) {
  if (finite) {
    sa_row<V512, true>(u, wc, s, C, D, zsum, stride);
  } else {
    sa_row<V512, false>(u, wc, s, C, D, zsum, stride);
  }
}
void pool_tile_avx512(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, int32_t* arg, float* best2, int32_t* arg2) {
  pool_tile<V512, 4, kPoolTile, true>(hf, sa, ca, sa2, ca2, P, best, arg, best2, arg2);
}
void pool_values_avx512(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, float* best2) {
  pool_tile<V512, 4, kPoolTile, false>(hf, sa, ca, sa2, ca2, P, best, nullptr, best2, nullptr);
}
void tanh_avx512(const float* x, int64_t n, float* y) { tanh_rows<V512>(x, n, y); }
}  // namespace simd
}  // namespace fastmlr
#pragma GCC pop_options
#endif
