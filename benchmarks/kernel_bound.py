"""The CPU CAR kernels against this CPU's vector-unit bound (issue 20), as a printed table.

    python benchmarks/kernel_bound.py [--rounds 9] [--isa avx512,avx2] [--json out.json]

The bound is measured, not looked up: a small C function of 12 independent FMA chains (registers only,
``zmm`` or ``ymm``) is compiled here with the system's C compiler and timed in this process, interleaved
round by round with the kernel, so both see the same clock. Eq. 5's tanh reduction costs 12 multiply/FMA
operations per element (``u*wc``, ``x*x``, 4 + 4 Horner steps of tanh_fast's rational, ``x*p``, the
``s``-weighted accumulation; the division and the clamps issue on other units), so its bound in tanh
elements per CPU-second is ``lane-FMAs per second / 12``. ``car_pool``'s line is its rate of candidates as
inference calls it (no gradient: ``sa + ca``, ``* f``, max per lane), given for reference, and its time
with the positions of the maxima that training's backward reads (compare and two selects instead of max).
The last two columns run the instruction stream of eq. 5 with the division replaced by a reciprocal estimate
and one Newton step (the division-free form of the same quotient, about one float spacing apart), and with
tanh_fast replaced by a table-driven piecewise polynomial (16 intervals, degree 6: the least degree whose
fit meets tanh_fast's absolute bound; fewer FMA-pipe operations, no division, but a permute per
coefficient): whether either would buy speed on this CPU.

Every figure is CPU time of this process (``time.process_time``), one thread, ResNet-101's head at
448 px: N=1, C=80, P=196, D=2048. Each ISA runs in its own child process with ``FASTMLR_CPU_CAPABILITY``
set (the extension picks its kernels once per process).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PEAK_C = r"""
#include <immintrin.h>
#define CHAINS(T, FMA, SET1)                                                                       \
  T a0 = SET1(1.f), a1 = SET1(1.01f), a2 = SET1(1.02f), a3 = SET1(1.03f), a4 = SET1(1.04f),        \
    a5 = SET1(1.05f), a6 = SET1(1.06f), a7 = SET1(1.07f), a8 = SET1(1.08f), a9 = SET1(1.09f),        \
    a10 = SET1(1.10f), a11 = SET1(1.11f); /* distinct, or the compiler merges the chains into one */ \
  const T m = SET1(0.999999f), c = SET1(1e-7f);                                                    \
  for (long i = 0; i < n; ++i) {                                                                   \
    a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);                \
    a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);                \
    a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);            \
  }                                                                                                \
  T s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;

/* The instruction stream of eq. 5's inner loop in car_simd_rows.h, with its operands in L1: per step, one
   load of u and of s, then for 4 categories a load of wc, the product x = u wc, TANH(x) (an expression in
   x) and the s-weighted FMA, over rows of 256 floats that stay in L1. Its rate is what this CPU's vector
   units sustain for exactly this arithmetic when memory costs nothing. */
#define STREAM(T, W, SET1, LOAD, MUL, FMA, SUM, TANH)                                                \
  static float buf[6 * 256] __attribute__((aligned(64)));                                          \
  for (int i = 0; i < 6 * 256; ++i) buf[i] = 0.001f * (i % 97) - 0.04f;                            \
  const float *u = buf, *s = buf + 256, *w = buf + 512;                                             \
  float total = 0.f;                                                                                \
  for (long it = 0; it < n; ++it) {                                                                 \
    T acc[4] = {SET1(0.f), SET1(0.f), SET1(0.f), SET1(0.f)};                                        \
    for (int k = 0; k < 256; k += W) {                                                              \
      const T uk = LOAD(u + k), sk = LOAD(s + k);                                                   \
      for (int c = 0; c < 4; ++c) {                                                                 \
        const T x = MUL(uk, LOAD(w + 256 * c + k));                                                 \
        acc[c] = FMA(sk, TANH, acc[c]);                                                             \
      }                                                                                             \
    }                                                                                               \
    total += SUM(acc[0]) + SUM(acc[1]) + SUM(acc[2]) + SUM(acc[3]);                                 \
  }                                                                                                 \
  return total;

/* tanh_fast as the kernels issue it: clamp, z = x^2, 4 + 4 Horner FMAs, mul, div, clamp (a GNU statement
   expression over the constants MIX defines; CLAMP_X and CLAMP_T are expressions in v and t). */
#define RATIONAL(T, MUL, FMA, DIV, CLAMP_X, CLAMP_T)                                                 \
  ({                                                                                                \
    T v = x;                                                                                        \
    v = CLAMP_X;                                                                                    \
    T z = MUL(v, v), p = FMA(p0, z, p1), q = FMA(q0, z, q1);                                        \
    p = FMA(p, z, p2); q = FMA(q, z, q2); p = FMA(p, z, p3); q = FMA(q, z, q3);                     \
    p = FMA(p, z, one); q = FMA(q, z, one);                                                         \
    T t = DIV(MUL(v, p), q);                                                                        \
    t = CLAMP_T;                                                                                    \
    t;                                                                                              \
  })
#define MIX(T, W, P, SET1, LOAD, MUL, FMA, DIV, CLAMP_X, CLAMP_T, SUM)                              \
  const T h = SET1(9.f), one = SET1(1.f), mone = SET1(-1.f), mh = SET1(-9.f);                       \
  const T p0 = SET1(P[0]), p1 = SET1(P[1]), p2 = SET1(P[2]), p3 = SET1(P[3]);                        \
  const T q0 = SET1(P[4]), q1 = SET1(P[5]), q2 = SET1(P[6]), q3 = SET1(P[7]);                        \
  (void)mone, (void)mh;                                                                             \
  STREAM(T, W, SET1, LOAD, MUL, FMA, SUM, RATIONAL(T, MUL, FMA, DIV, CLAMP_X, CLAMP_T))

__attribute__((target("avx512f,avx512dq"))) float mix_avx512(long n, const float* P) {
  MIX(__m512, 16, P, _mm512_set1_ps, _mm512_load_ps, _mm512_mul_ps, _mm512_fmadd_ps, _mm512_div_ps,
      _mm512_range_ps(v, h, 0x02), _mm512_range_ps(t, one, 0x02), _mm512_reduce_add_ps)
}
__attribute__((target("avx2,fma"))) static float sum8(__m256 v) {
  float o[8];
  _mm256_storeu_ps(o, v);
  return o[0] + o[1] + o[2] + o[3] + o[4] + o[5] + o[6] + o[7];
}
__attribute__((target("avx2,fma"))) float mix_avx2(long n, const float* P) {
  MIX(__m256, 8, P, _mm256_set1_ps, _mm256_load_ps, _mm256_mul_ps, _mm256_fmadd_ps, _mm256_div_ps,
      _mm256_min_ps(h, _mm256_max_ps(mh, v)), _mm256_min_ps(one, _mm256_max_ps(mone, t)), sum8)
}

/* The same stream with the division replaced by a reciprocal estimate and one Newton step (r = rcp(q);
   r += r (1 - q r); t = x p r): the division-free form of the same quotient, for comparison. */
__attribute__((target("avx512f,avx512dq"))) static inline __m512 div_rcp512(__m512 a, __m512 b) {
  const __m512 r = _mm512_rcp14_ps(b);
  return _mm512_mul_ps(a, _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.f)), r));
}
__attribute__((target("avx512f,avx512dq"))) float mix_rcp_avx512(long n, const float* P) {
  MIX(__m512, 16, P, _mm512_set1_ps, _mm512_load_ps, _mm512_mul_ps, _mm512_fmadd_ps, div_rcp512,
      _mm512_range_ps(v, h, 0x02), _mm512_range_ps(t, one, 0x02), _mm512_reduce_add_ps)
}
__attribute__((target("avx2,fma"))) static inline __m256 div_rcp256(__m256 a, __m256 b) {
  const __m256 r = _mm256_rcp_ps(b);
  return _mm256_mul_ps(a, _mm256_fmadd_ps(r, _mm256_fnmadd_ps(b, r, _mm256_set1_ps(1.f)), r));
}
__attribute__((target("avx2,fma"))) float mix_rcp_avx2(long n, const float* P) {
  MIX(__m256, 8, P, _mm256_set1_ps, _mm256_load_ps, _mm256_mul_ps, _mm256_fmadd_ps, div_rcp256,
      _mm256_min_ps(h, _mm256_max_ps(mh, v)), _mm256_min_ps(one, _mm256_max_ps(mone, t)), sum8)
}

/* The same loop with a table-driven tanh instead of the rational: |x| clamped to 9, its interval of 16 found
   (i = (int) min(|x| 16/9, 15)), t = |x| - centre[i], a degree-6 polynomial in t with the interval's
   coefficients fetched by vector permutes (7 + 1 tables of 16), the sign put back. 9 FMA-pipe operations
   per element instead of 12, and no division, but 8 permutes (AVX2: two 8-entry permutes and a blend
   each). T: 8 x 16 floats, the centres then the coefficients from degree 0 up. */
#define TABLE_MIX(T, TI, W, SET1, LOAD, MUL, FMA, SUB, ABS, MIN, IDX, PERM, SIGN, SUM)              \
  const T nine = SET1(9.f), scale = SET1(16.f / 9.f), last = SET1(15.f);                            \
  STREAM(T, W, SET1, LOAD, MUL, FMA, SUM, ({                                                        \
           const T a = MIN(ABS(x), nine);                                                           \
           const TI i = IDX(MIN(MUL(a, scale), last));                                              \
           const T t = SUB(a, PERM(i, 0));                                                          \
           T r = PERM(i, 7);                                                                        \
           for (int d = 6; d >= 1; --d) r = FMA(r, t, PERM(i, d));                                  \
           SIGN(r, x);                                                                              \
         }))

__attribute__((target("avx512f,avx512dq"))) float mix_table_avx512(long n, const float* tab) {
  __m512 tv[8];
  for (int j = 0; j < 8; ++j) tv[j] = _mm512_loadu_ps(tab + 16 * j);
  const __m512 sign = _mm512_set1_ps(-0.f);
#define PERM512(i, j) _mm512_permutexvar_ps(i, tv[j])
#define SIGN512(r, x) _mm512_or_ps(r, _mm512_and_ps(x, sign))
  TABLE_MIX(__m512, __m512i, 16, _mm512_set1_ps, _mm512_load_ps, _mm512_mul_ps, _mm512_fmadd_ps, _mm512_sub_ps,
            _mm512_abs_ps, _mm512_min_ps, _mm512_cvttps_epi32, PERM512, SIGN512, _mm512_reduce_add_ps)
}
__attribute__((target("avx2,fma"))) float mix_table_avx2(long n, const float* tab) {
  __m256 lo[8], hi[8];
  for (int j = 0; j < 8; ++j) lo[j] = _mm256_loadu_ps(tab + 16 * j), hi[j] = _mm256_loadu_ps(tab + 16 * j + 8);
  const __m256 sign = _mm256_set1_ps(-0.f);
#define ABS256(x) _mm256_andnot_ps(sign, x)
#define PERM256(i, j) _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo[j], i), _mm256_permutevar8x32_ps(hi[j], i), \
                                       _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)))
#define SIGN256(r, x) _mm256_or_ps(r, _mm256_and_ps(x, sign))
  TABLE_MIX(__m256, __m256i, 8, _mm256_set1_ps, _mm256_load_ps, _mm256_mul_ps, _mm256_fmadd_ps, _mm256_sub_ps,
            ABS256, _mm256_min_ps, _mm256_cvttps_epi32, PERM256, SIGN256, sum8)
}

__attribute__((target("avx512f"))) float peak_avx512(long n) {
  CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps)
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx2,fma"))) float peak_avx2(long n) {
  CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps)
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}
"""
LANES = {"avx512": 16, "avx2": 8}
FMA_OPS_PER_TANH = 12
SHAPE = dict(N=1, C=80, P=196, D=2048)


def build_peak(folder: str) -> ctypes.CDLL:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise SystemExit("kernel_bound: no C compiler (cc or gcc) on PATH to build the FMA-peak probe; set CC")
    src, lib = os.path.join(folder, "peak.c"), os.path.join(folder, "peak.so")
    with open(src, "w") as fh:
        fh.write(PEAK_C)
    subprocess.run([cc, "-O2", "-shared", "-fPIC", src, "-o", lib], check=True)
    dll = ctypes.CDLL(lib)
    for name in ("peak_avx512", "peak_avx2"):
        getattr(dll, name).argtypes, getattr(dll, name).restype = [ctypes.c_long], ctypes.c_float
    for name in ("mix_avx512", "mix_avx2", "mix_rcp_avx512", "mix_rcp_avx2", "mix_table_avx512", "mix_table_avx2"):
        getattr(dll, name).argtypes, getattr(dll, name).restype = [ctypes.c_long, ctypes.c_void_p], ctypes.c_float
    return dll


def tanh_coeffs() -> list[float]:
    """kP then kQ of csrc/tanh_coeffs.h, read from the header the kernels are compiled from."""
    import re

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "csrc", "tanh_coeffs.h")) as fh:
        text = fh.read()
    out = []
    for name in ("kP", "kQ"):
        body = re.search(name + r"\[4\] = \{([^}]*)\}", text).group(1)
        out += [float(v.strip().rstrip("f")) for v in body.split(",")]
    return out


TABLE_DEGREE, TABLE_INTERVALS, TABLE_CLAMP = 6, 16, 9.0


def table_coeffs() -> tuple[list[float], float]:
    """The table-driven stream's 8 x 16 table (interval centres, then the degree-0..6 coefficients in
    t = |x| - centre of a least-squares fit at Chebyshev nodes per interval) and its worst absolute error
    against float64 tanh on [0, 9], evaluated in float32 Horner as the stream evaluates it."""
    import numpy as np

    h = TABLE_CLAMP / TABLE_INTERVALS
    centres = (np.arange(TABLE_INTERVALS) + 0.5) * h
    coef = np.zeros((TABLE_DEGREE + 1, TABLE_INTERVALS))
    nodes = np.cos(np.linspace(0, np.pi, 64)) * h / 2
    for i, c in enumerate(centres):
        coef[:, i] = np.polynomial.polynomial.polyfit(nodes, np.tanh(c + nodes), TABLE_DEGREE)
    a = np.linspace(0, TABLE_CLAMP, 2_000_001).astype(np.float32)
    i = np.minimum((a * np.float32(16 / 9)).astype(np.int32), TABLE_INTERVALS - 1)
    t = a - centres.astype(np.float32)[i]
    c32 = coef.astype(np.float32)
    r = c32[TABLE_DEGREE][i]
    for d in range(TABLE_DEGREE - 1, -1, -1):
        r = r * t + c32[d][i]
    err = float(np.abs(r.astype(np.float64) - np.tanh(a.astype(np.float64))).max())
    return [float(v) for v in np.concatenate([centres[None], coef]).astype(np.float32).reshape(-1)], err


def child(isa: str, rounds: int) -> dict:
    """Runs in a process whose extension is capped at ``isa``: medians of interleaved rounds."""
    import torch

    from fastmlr import _C, ops

    torch.set_num_threads(1)
    if _C.cpu_capability != isa:
        return {"isa": isa, "skipped": f"the extension runs {_C.cpu_capability!r} kernels here, not {isa!r}"}
    g = torch.Generator().manual_seed(0)
    N, C, P, D = SHAPE["N"], SHAPE["C"], SHAPE["P"], SHAPE["D"]
    u = torch.randn(N, P, D, generator=g)
    wc = torch.randn(C, D, generator=g) * 0.1
    s = torch.randn(D, generator=g) * 0.05
    b = torch.zeros(())
    f = torch.randn(N, D, P, generator=g).relu()
    ca = torch.rand(N, C, D, generator=g)
    sa = ops.car_spatial_attention(u, wc, s, b, backend="cpp")
    with tempfile.TemporaryDirectory(prefix="fastmlr-peak-") as tmp:
        dll = build_peak(tmp)
        peak_fn, mix_fn, rcp_fn, table_fn = (getattr(dll, f"{k}_{isa}") for k in ("peak", "mix", "mix_rcp",
                                                                                      "mix_table"))
        coeffs = (ctypes.c_float * 8)(*tanh_coeffs())
        tab, table_err = table_coeffs()
        table = (ctypes.c_float * len(tab))(*tab)
        n_fma, n_mix = 2_000_000, 20_000
        calls = {
            "peak": lambda: peak_fn(n_fma),
            "mix": lambda: mix_fn(n_mix, coeffs),
            "mix_rcp": lambda: rcp_fn(n_mix, coeffs),
            "mix_table": lambda: table_fn(n_mix, table),
            "car_spatial_attention": lambda: ops.car_spatial_attention(u, wc, s, b, backend="cpp"),
            "car_pool": lambda: ops.car_pool(f, sa, ca, backend="cpp"),  # no gradient wanted: values alone
            "car_pool_index": lambda: torch.ops.fastmlr.car_pool(f, sa, ca, True),  # training's call: and positions
        }
        for fn in calls.values():
            fn()
        t = {k: [] for k in calls}
        for r in range(rounds):
            names = list(calls)[r % len(calls):] + list(calls)[:r % len(calls)]
            for k in names:
                t0 = time.process_time()
                calls[k]()
                t[k].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in t.items()}
    lane_fma = n_fma * 12 * LANES[isa] / med["peak"]
    bound = lane_fma / FMA_OPS_PER_TANH
    ceiling = n_mix * 4 * 256 / med["mix"]
    elems = N * C * P * D
    rate = elems / med["car_spatial_attention"]
    return {
        "isa": isa, "rounds": rounds,
        "peak_lane_fma_per_s": lane_fma,
        "tanh_bound_per_s": bound,
        "car_spatial_attention_ms": 1e3 * med["car_spatial_attention"],
        "car_spatial_attention_ms_range": [1e3 * min(t["car_spatial_attention"]), 1e3 * max(t["car_spatial_attention"])],
        "car_spatial_attention_per_s": rate,
        "fraction_of_bound": rate / bound,
        "mix_ceiling_per_s": ceiling,
        "fraction_of_mix_ceiling": rate / ceiling,
        "mix_rcp_per_s": n_mix * 4 * 256 / med["mix_rcp"],
        "mix_table_per_s": n_mix * 4 * 256 / med["mix_table"],
        "table_abs_error": table_err,
        "car_pool_ms": 1e3 * med["car_pool"],
        "car_pool_candidates_per_s": elems / med["car_pool"],
        "car_pool_index_ms": 1e3 * med["car_pool_index"],
    }


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per ISA (median taken)")
    p.add_argument("--isa", default="avx512,avx2", help="comma-separated: avx512, avx2")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.rounds)))
        return 0
    rows = []
    for isa in args.isa.split(","):
        if isa not in LANES:
            p.error(f"--isa {isa!r}: expected avx512 or avx2")
        env = {**os.environ, "FASTMLR_CPU_CAPABILITY": isa, "OMP_NUM_THREADS": "1"}
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", isa, "--rounds", str(args.rounds)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"kernel_bound: the {isa} child failed:\n{r.stderr.strip()}", file=sys.stderr)
            return 1
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(f"{machine()}; 1 thread, CPU time, load average {load:.1f}; N=1 C=80 P=196 D=2048 (ResNet-101 at 448 px)")
    print("| ISA | peak, G lane-FMA/s | FMA bound, G tanh/s | mix ceiling, G tanh/s | car_spatial_attention ms "
          "[min, max] | G tanh/s | of the FMA bound | of the mix ceiling | car_pool ms | G candidates/s | "
          "car_pool with positions (training) ms | mix with rcp + Newton instead of the division, G tanh/s | "
          "mix with a table-driven degree-6 tanh, G tanh/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['isa']} | skipped: {r['skipped']} | | | | | | | | | | | |")
            continue
        lo, hi = r["car_spatial_attention_ms_range"]
        print(f"| {r['isa']} | {r['peak_lane_fma_per_s'] / 1e9:.0f} | {r['tanh_bound_per_s'] / 1e9:.2f} | "
              f"{r['mix_ceiling_per_s'] / 1e9:.2f} | {r['car_spatial_attention_ms']:.2f} [{lo:.2f}, {hi:.2f}] | "
              f"{r['car_spatial_attention_per_s'] / 1e9:.2f} | **{100 * r['fraction_of_bound']:.0f}%** | "
              f"**{100 * r['fraction_of_mix_ceiling']:.0f}%** | {r['car_pool_ms']:.2f} | "
              f"{r['car_pool_candidates_per_s'] / 1e9:.1f} | {r['car_pool_index_ms']:.2f} | "
              f"{r['mix_rcp_per_s'] / 1e9:.2f} | {r['mix_table_per_s'] / 1e9:.2f} |")
    errs = [r["table_abs_error"] for r in rows if "table_abs_error" in r]
    if errs:
        print(f"The table-driven tanh: {TABLE_INTERVALS} intervals on [0, {TABLE_CLAMP:g}], degree {TABLE_DEGREE}, "
              f"worst absolute error {errs[0]:.1e} in float32 (tanh_fast: at most 4e-7; near 0 the table would "
              "still need tanh_fast's relative accuracy, which this stream does not pay for)")
    if args.json:
        from fastmlr.files import atomic_write_json

        atomic_write_json(args.json, {"machine": machine(), "load_average": load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
