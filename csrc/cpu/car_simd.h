// Explicitly vectorised float32 row kernels of the CAR ops for x86-64 (AVX-512 and AVX2+FMA), and
// the choice between them, made once per process.
//
// Why not the compiler's vectorisation of the generic loops (car_kernel.cpp, FMLR_CPU_CLONES): GCC
// turns the clamps of tanh_fast into compare-and-mask sequences and the weighted sum into separate
// masked multiplies and adds, and keeps the pooling's running maxima in memory; written with the
// vector types directly, the tanh reduction issues the 12 multiply/FMA operations per element that
// the rational function needs and the pooling keeps its maxima and their positions in registers.
// Both compute exactly what the generic loops compute (same rational, same order of operations per
// element, same tie and NaN rules); only the order of the partial sums over D differs.
//
// Which one runs: the best the CPU supports (cpuid), unless FASTMLR_CPU_CAPABILITY (or, when it is
// unset, ATen's ATEN_CPU_CAPABILITY) asks for less: "avx512", "avx2" or "default" (the generic
// loops). Asking for more than the CPU has, or for an unknown name, says so once on stderr and uses
// the best the CPU has.
#pragma once

#include <cstdint>

// Whether the explicit kernels are compiled in (x86-64 with GCC); elsewhere only the generic loops run.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FMLR_X86_SIMD 1
#else
#define FMLR_X86_SIMD 0
#endif

namespace fastmlr {

enum class CpuIsa { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The ISA the float32 kernels use in this process (decided on first call).
CpuIsa cpu_isa();
// "avx512", "avx2" or "default".
const char* cpu_isa_name(CpuIsa isa);

// Width of the pooling's column tiles: car_pool lays 0.5 f out as [N][ceil(D / kPoolTile)][P][kPoolTile]
// (zero-padded), so that one tile (P x 64 floats, 50 KB at P = 196) is contiguous and stays in L1/L2
// while every category reads it.
constexpr int64_t kPoolTile = 64;

namespace simd {
// zsum[c * stride] = sum_k s[k] tanh_fast(u[k] wc[c * D + k]) for c < C (one (n, p) row of eq. 5, before
// the bias and the sigmoid). finite: the caller has checked that u and wc hold only finite numbers (then
// no product is NaN, and AVX-512 clamps in one instruction instead of two).
void sa_row_avx512(const float* u, const float* wc, const float* s, int64_t C, int64_t D, float* zsum,
                   int64_t stride, bool finite);
void sa_row_avx2(const float* u, const float* wc, const float* s, int64_t C, int64_t D, float* zsum,
                 int64_t stride, bool finite);
// One tile of eq. 6 + GMP for one (n, c): best[k] = max_p hf[p * kPoolTile + k] (sa[p] + ca[k]) and
// arg[k] its first maximising p, k < kPoolTile; ca holds kPoolTile values (zero-padded past D); and the
// same for a second category (sa2, ca2 -> best2, arg2) in the same pass, unless sa2 is nullptr.
// NaN rule as pool_row in car_kernel.cpp: a NaN term replaces a number and stays.
void pool_tile_avx512(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, int32_t* arg, float* best2, int32_t* arg2);
void pool_tile_avx2(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                    int64_t P, float* best, int32_t* arg, float* best2, int32_t* arg2);
// The same values without their positions, for candidates that cannot be NaN: f, sa and ca finite and no
// sa + ca overflowing (the caller checks; a NaN term would be lost, not propagated).
void pool_values_avx512(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                        int64_t P, float* best, float* best2);
void pool_values_avx2(const float* hf, const float* sa, const float* ca, const float* sa2, const float* ca2,
                      int64_t P, float* best, float* best2);
// y[i] = tanh_fast(x[i]), i < n.
void tanh_avx512(const float* x, int64_t n, float* y);
void tanh_avx2(const float* x, int64_t n, float* y);
}  // namespace simd

}  // namespace fastmlr
