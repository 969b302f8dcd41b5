"""gpu-check's ops step: every declared op x dtype x backend once at the paper's shapes, checked and timed.

Names no op: it iterates the declarations (``fastmlr.ops.specs()``), each of which makes its own example
inputs (``spec.example_inputs(device, dtype, size="paper")``). Each backend's output is compared with the
reference backend's on the same inputs (non-finite values or a different shape fail the cell; the
difference is reported, the op tests hold the accuracy), then forward and forward+backward are timed
with the bench's timer (CUDA events on a GPU). Its own process:

    python -m fastmlr.gpucheck.opsbench OUT.json [--device cuda] [--size paper]
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..measure import CallTimer, percentile, time_calls
from ..files import atomic_write_json

DTYPES = (torch.float32, torch.float16)


def _ms(seconds: list[float]) -> dict:
    return {"median_ms": round(1e3 * percentile(seconds, 50), 4), "min_ms": round(1e3 * min(seconds), 4)}


def _compare(cell: dict, out, ref) -> None:
    """Checks ``out`` against the reference output ``ref``; records the difference, marks the cell failed."""
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"output shape {tuple(out.shape)}, the reference's {tuple(ref.shape)}")
    if not out.is_floating_point():
        cell["elements_differing"] = int((out != ref).sum())
        return
    if not bool(torch.isfinite(out).all()):
        raise AssertionError("non-finite values in the output")
    cell["max_abs_diff"] = float((out.double() - ref.double()).abs().max())
    cell["ref_max_abs"] = float(ref.double().abs().max())


def run_cell(spec, backend: str, inputs: tuple, ref, timer: CallTimer, iters: int, warmup: int) -> dict:
    """One op x dtype x backend; never raises: a backend that refuses the call is "unsupported"."""
    from .. import ops

    cell = {"op": spec.name, "dtype": str(next(t.dtype for t in inputs if isinstance(t, torch.Tensor)
                                              and t.is_floating_point())).replace("torch.", ""),
            "backend": backend}
    device = timer.device
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = spec.function(*inputs, backend=backend)
        _compare(cell, out, ref)
        del out
        cell["forward"] = _ms(time_calls(lambda _: spec.function(*inputs, backend=backend), None, iters, warmup,
                                         device, timer))
        if spec.differentiable:
            leaves = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point()
                      else t for t in inputs]
            grad = torch.ones_like(spec.function(*leaves, backend=backend))

            def fwd_bwd(_):
                for t in leaves:
                    if isinstance(t, torch.Tensor):
                        t.grad = None
                spec.function(*leaves, backend=backend).backward(grad)
            cell["forward_backward"] = _ms(time_calls(fwd_bwd, None, iters, warmup, device, timer))
        if device.type == "cuda":
            cell["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        cell["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one cell's failure is a result
        cell["status"] = "unsupported" if isinstance(e, ops.BackendError) else "failed"
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        cell["error"] = f"{type(e).__name__}: {first}"
    return cell


def ops_bench(out_file: str, device: str = "cuda", size: str = "paper", iters: int = 20, warmup: int = 3,
              dtypes=DTYPES, specs=None) -> dict:
    """Every op of ``specs`` (default: all declared) x ``dtypes`` x the backends available on ``device``;
    the result is written to ``out_file`` after each cell (kept should the step be ended)."""
    from .. import ops

    specs = ops.specs() if specs is None else specs
    dev = torch.device(device)
    backends = list(ops.available_backends(dev.type))
    timer = CallTimer(dev)
    result = {"device": str(dev), "size": size, "iters": iters, "warmup": warmup, "backends": backends,
              "ops": [s.name for s in specs], "cells": []}
    for spec in specs:
        for dtype in dtypes:
            inputs = spec.example_inputs(dev, dtype, size=size)
            result.setdefault("shapes", {})[spec.name] = [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
            with torch.no_grad():
                ref = spec.function(*inputs, backend="reference")
            for backend in backends:
                result["cells"].append(run_cell(spec, backend, inputs, ref, timer, iters, warmup))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                atomic_write_json(str(out_file), result)
            del inputs, ref
    atomic_write_json(str(out_file), result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastmlr.gpucheck.opsbench", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the result's JSON file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="paper", choices=["small", "paper"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    result = ops_bench(args.out, args.device, args.size, args.iters, args.warmup)
    failed = [c for c in result["cells"] if c["status"] == "failed"]
    print(f"ops: {len(result['cells'])} cells, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
