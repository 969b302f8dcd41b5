// The CAR row kernels (car_simd_rows.h) for AVX2 + FMA (8 floats a register). Only called after cpu_isa()
// has found AVX2 and FMA on this CPU (car_simd.h).
#include "car_simd.h"
#if FMLR_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <cstdint>

namespace {
struct V256 {
  static constexpr int kW = 8;
  using R = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes where true
  static inline R set1(float v) { return _mm256_set1_ps(v); }
  static inline I seti(int32_t v) { return _mm256_set1_epi32(v); }
  static inline I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static inline R load(const float* p) { return _mm256_loadu_ps(p); }
  static inline __m256i first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline R load_n(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }
  static inline void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static inline void store_n(float* p, R v, int n) { _mm256_maskstore_ps(p, first(n), v); }
  static inline void store_i(int32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
  static inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static inline R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  // vmaxps/vminps return the second operand when either is NaN, and (first > second ? first : second).
  // so x < lo ? lo : x is max(lo, x) and x > hi ? hi : x is min(hi, x), a NaN x kept.
  static inline R clamp(R x, R lo, R hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, x)); }
  static inline R clamp_no_nan(R x, R lo, R hi) { return clamp(x, lo, hi); }
  static inline R div(R a, R b) { return _mm256_div_ps(a, b); }
  static inline float sum(R v) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
  }
  // !(v <= b) is v > b or either NaN; and "b is a number": pool_row's rule.
  static inline M gt_or_nan(R v, R b) { return _mm256_and_ps(_mm256_cmp_ps(v, b, _CMP_NLE_UQ), _mm256_cmp_ps(b, b, _CMP_ORD_Q)); }
  static inline R select(M m, R b, R v) { return _mm256_blendv_ps(b, v, m); }
  static inline R max(R v, R b) { return _mm256_max_ps(v, b); }  // v > b ? v : b
  static inline I select_i(M m, I a, I v) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(v), m));
  }
};
}  // namespace

#include "car_simd_rows.h"

namespace fastmlr {
namespace simd {
void sa_row_avx2(const float* u, const float* wc, const float* s, int64_t C, int64_t D, float* zsum,
                 int64_t stride, bool) {
  sa_row<V256, false>(u, wc, s, C, D, zsum, stride);  // no faster clamp for numbers on AVX2
}
void pool_tile_avx2(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, int32_t* arg, float* best2, int32_t* arg2) {
  pool_tile<V256, 2, kPoolTile, true>(hf, sa, ca, sa2, ca2, P, best, arg, best2, arg2);
}
void pool_values_avx2(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, float* best2) {
  pool_tile<V256, 2, kPoolTile, false>(hf, sa, ca, sa2, ca2, P, best, nullptr, best2, nullptr);
}
void tanh_avx2(const float* x, int64_t n, float* y) { tanh_rows<V256>(x, n, y); }
}  // namespace simd
}  // namespace fastmlr
#pragma GCC pop_options
#endif
