"""The workloads the op benchmarks time, shared by the pytest-benchmark suite and the peak-memory child.

CAR head = spatial attention (eq. 5) + category pooling (eq. 6 + GMP) + the
per-category classifier (eq. 2), at SRDL's COCO head size by default
(N=8, C=80, 14 x 14, D=2048, float32). OE = ``oe_boxes`` + ``oe_erase`` on
16 x 3 maps of 14 x 14. ``FASTMLR_BENCH_SIZE=small`` shrinks the CAR head for
a quick look (N=2, C=20, 7 x 7, D=256).
"""

from __future__ import annotations

import os

import torch

from fastmlr import ops

SIZES = {"paper": dict(N=8, C=80, P=196, D=2048), "small": dict(N=2, C=20, P=49, D=256)}


def size() -> dict:
    name = os.environ.get("FASTMLR_BENCH_SIZE", "paper")
    if name not in SIZES:
        raise SystemExit(f"FASTMLR_BENCH_SIZE={name!r}: expected one of {', '.join(SIZES)}")
    return dict(SIZES[name], name=name)


def car_head(backend: str, backward: bool, N: int, C: int, P: int, D: int, **_):
    """A closure running the CAR head once (forward, or forward + backward) with ``backend``."""
    g = torch.Generator().manual_seed(0)
    req = backward
    u = torch.randn(N, P, D, generator=g).requires_grad_(req)
    wc = (torch.randn(C, D, generator=g) * 0.1).requires_grad_(req)
    s = (torch.randn(D, generator=g) * 0.05).requires_grad_(req)
    b = torch.zeros((), requires_grad=req)
    f = torch.randn(N, D, P, generator=g).relu().requires_grad_(req)
    ca = torch.rand(N, C, D, generator=g).requires_grad_(req)
    wcls = (torch.randn(C, D, generator=g) * 0.02).requires_grad_(req)
    leaves = (u, wc, s, b, f, ca, wcls)

    def run():
        with torch.set_grad_enabled(backward):
            sa = ops.car_spatial_attention(u, wc, s, b, backend=backend)
            logits = (ops.car_pool(f, sa, ca, backend=backend) * wcls).sum(-1)
            if backward:
                logits.sum().backward()
                for t in leaves:
                    t.grad = None
        return logits

    return run


def oe(backend: str, **_):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(16, 3, 14, 14, generator=g)

    def run():
        return ops.oe_erase(maps, ops.oe_boxes(maps, 0.5, backend=backend), backend=backend)

    return run
