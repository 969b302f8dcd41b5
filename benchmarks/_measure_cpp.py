"""Time and peak memory of the fused "cpp" CAR ops against the reference (CPU).

Forward + backward of ``car_spatial_attention`` then ``car_pool`` at SRDL's
COCO head size (default N=8, C=80, P=196, D=2048, float32), each backend in a
fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own;
the figure reported is the peak above the resident size once the inputs
exist. Also times ``oe_boxes`` on 16 x 3 maps of 14 x 14.

    python benchmarks/_measure_cpp.py [--n 8 --c 80 --p 196 --d 2048 --repeats 3]

Issue 3's targets: fused >= 3x faster and >= 20x less peak memory than the
reference (forward + backward); oe_boxes for 16 x 3 maps under 1 ms.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(backend: str, n: int, c: int, p: int, d: int, repeats: int) -> dict:
    import torch

    from fastmlr import ops

    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, p, d, generator=g).requires_grad_(True)
    wc = (torch.randn(c, d, generator=g) * 0.1).requires_grad_(True)
    s = (torch.randn(d, generator=g) * 0.05).requires_grad_(True)
    b = torch.zeros((), requires_grad=True)
    f = torch.randn(n, d, p, generator=g).relu().requires_grad_(True)
    ca = torch.rand(n, c, d, generator=g).requires_grad_(True)

    def step():
        sa = ops.car_spatial_attention(u, wc, s, b, backend=backend)
        feat = ops.car_pool(f, sa, ca, backend=backend)
        feat.sum().backward()
        for t in (u, wc, s, b, f, ca):
            t.grad = None

    base = _rss_mib()
    t0 = time.perf_counter()
    step()  # the first run sets the peak; it also counts as a timing sample
    times = [time.perf_counter() - t0]
    peak = _rss_mib() - base
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    maps = torch.rand(16, 3, 14, 14, generator=g)
    ops.oe_boxes(maps, 0.5, backend=backend)
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        ops.oe_boxes(maps, 0.5, backend=backend)
    oe_ms = (time.perf_counter() - t0) / reps * 1e3
    return {
        "backend": backend,
        "threads": torch.get_num_threads(),
        "fwd_bwd_s_min": min(times),
        "fwd_bwd_s_all": times,
        "peak_mib_above_inputs": peak,
        "oe_boxes_16x3x14x14_ms": oe_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--c", type=int, default=80)
    ap.add_argument("--p", type=int, default=196)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["cpp", "reference"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.n, a.c, a.p, a.d, a.repeats)))
        return
    res = {}
    for backend in ("cpp", "reference"):
        cmd = [sys.executable, __file__, "--child", backend, "--n", str(a.n), "--c", str(a.c), "--p", str(a.p),
               "--d", str(a.d), "--repeats", str(a.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[backend] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(res[backend]))
    cpp, ref = res["cpp"], res["reference"]
    print(f"N={a.n} C={a.c} P={a.p} D={a.d} float32 CPU, {cpp['threads']} threads, forward+backward:")
    print(f"  time  cpp {cpp['fwd_bwd_s_min'] * 1e3:.0f} ms  reference {ref['fwd_bwd_s_min'] * 1e3:.0f} ms"
          f"  speed-up {ref['fwd_bwd_s_min'] / cpp['fwd_bwd_s_min']:.1f}x (target >= 3x)")
    print(f"  peak  cpp {cpp['peak_mib_above_inputs']:.0f} MiB  reference {ref['peak_mib_above_inputs']:.0f} MiB"
          f"  ratio {ref['peak_mib_above_inputs'] / max(cpp['peak_mib_above_inputs'], 1e-9):.0f}x (target >= 20x)")
    print(f"  oe_boxes 16x3 maps 14x14: cpp {cpp['oe_boxes_16x3x14x14_ms']:.3f} ms"
          f"  reference {ref['oe_boxes_16x3x14x14_ms']:.3f} ms (target < 1 ms)")


if __name__ == "__main__":
    main()
