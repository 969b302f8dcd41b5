"""The runtime settings fastmlr chose for the CPU, each timed on and off: one command.

    python benchmarks/runtime_options.py [--models baseline,srdl] [--threads 2] [--image-size 448]
                                         [--rounds 15] [--what aoti-freezing,onnx-spin,pyop-threads,eager-linear]

aoti-freezing: the same exported program compiled into two AOTInductor packages, with Inductor's
``freezing`` (what ``fastmlr.deploy.aoti.inductor_configs("cpu")`` asks for) and without; both timed
interleaved in one process. onnx-spin: the fused-op-set ONNX graph in ONNX Runtime with its intra-op
threads spinning (ONNX Runtime's default) and not (what ``fastmlr.runtime`` does for a fused graph);
each setting in its own phase, so that one session's spinning threads do not slow the other's calls.
pyop-threads: the same fused graph (not spinning), its PyOps' kernels running their loops on OpenMP's
threads (ATen's pool) and on fastmlr's sleeping pool (what ``fastmlr.runtime`` does), a phase each.
eager-linear: eager inference with the head's linear layers through ``F.linear`` and through oneDNN with
the weights packed (``fastmlr.models.cpu_linear``, the default), interleaved in one process.

ResNet-101, batch 1, 80 classes, random weights (BatchNorm statistics set from random images, as
export does), wall clock (``fastmlr.measure``), median ms of the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch


def _timed(calls: dict, rounds: int) -> dict:
    from fastmlr.measure import CallTimer, interleaved_times

    for fn in calls.values():
        fn()
        fn()
    samples, failed, _ = interleaved_times(calls, timer=CallTimer.named("cpu", "wall"), min_rounds=rounds,
                                           max_rounds=rounds)
    if failed:
        raise SystemExit(f"runtime_options: calls failed: {failed}")
    return {k: 1e3 * statistics.median(v) for k, v in samples.items()}


def aoti_freezing(models: dict, size: int, rounds: int, tmp: str) -> dict:
    from torch._inductor import aoti_compile_and_package

    from fastmlr.deploy.aoti import default_aoti_ops, export_program, inductor_configs
    from fastmlr.runtime.aoti import load_package

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    calls = {}
    for name, model in models.items():
        ep, _ = export_program(model, size, aoti_ops=default_aoti_ops("cpu"), min_batch=1, max_batch=1, device="cpu")
        for frozen in (True, False):
            path = os.path.join(tmp, f"{name}-{int(frozen)}.pt2")
            with torch.no_grad():
                aoti_compile_and_package(ep, package_path=path,
                                         inductor_configs=inductor_configs("cpu") if frozen else {})
            run = load_package(path)
            calls[(name, "frozen" if frozen else "not frozen")] = lambda run=run: run(x)
    with torch.no_grad():
        return _timed(calls, rounds)


def onnx_spin(models: dict, size: int, rounds: int, threads: int, tmp: str) -> dict:
    import numpy as np

    from fastmlr import runtime
    from fastmlr.deploy.onnx import export_onnx

    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    paths = {}
    for name, model in models.items():
        paths[name] = os.path.join(tmp, f"{name}-fused.onnx")
        export_onnx(model, paths[name], size, max_batch=1, opt_batch=1, onnx_ops="fused")
    out = {}
    for spin in (True, False):
        runners = {name: runtime.load(p, device="cpu", threads=threads, spin=spin) for name, p in paths.items()}
        x_np = np.ascontiguousarray(x.numpy())
        calls = {(name, "spinning" if spin else "not spinning"): (lambda r=r: r.session.run(None, {"images": x_np}))
                 for name, r in runners.items()}
        out.update(_timed(calls, rounds))
        del runners, calls
    return out


def pyop_threads(models: dict, size: int, rounds: int, threads: int, tmp: str) -> dict:
    import numpy as np

    from fastmlr import runtime
    from fastmlr.deploy.onnx import export_onnx
    from fastmlr.runtime import onnx_fused

    x_np = np.ascontiguousarray(torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy())
    runners = {}
    for name, model in models.items():
        path = os.path.join(tmp, f"{name}-fused.onnx")
        if not os.path.exists(path):
            export_onnx(model, path, size, max_batch=1, opt_batch=1, onnx_ops="fused")
        runners[name] = runtime.load(path, device="cpu", threads=threads, spin=False)
    out = {}
    try:
        for sleeping in (False, True):
            onnx_fused.SLEEPING_POOL = sleeping
            calls = {(name, "kernels on fastmlr's sleeping pool" if sleeping else "kernels on OpenMP's threads"):
                     (lambda r=r: r.session.run(None, {"images": x_np})) for name, r in runners.items()}
            out.update(_timed(calls, rounds))
    finally:
        onnx_fused.SLEEPING_POOL = True
    return out


def eager_linear(models: dict, size: int, rounds: int) -> dict:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    def call(model, packed):
        os.environ["FASTMLR_PACKED_LINEAR"] = "1" if packed else "0"  # read on every call
        return model(x)

    calls = {(name, "oneDNN, packed weights" if packed else "F.linear"): (lambda m=m, p=packed: call(m, p))
             for name, m in models.items() for packed in (False, True)}
    before = os.environ.get("FASTMLR_PACKED_LINEAR")
    try:
        with torch.inference_mode():
            return _timed(calls, rounds)
    finally:
        if before is None:
            os.environ.pop("FASTMLR_PACKED_LINEAR", None)
        else:
            os.environ["FASTMLR_PACKED_LINEAR"] = before


OPTIONS = ("aoti-freezing", "onnx-spin", "pyop-threads", "eager-linear")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="baseline,srdl")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--what", default=",".join(OPTIONS), help=f"comma-separated, from {', '.join(OPTIONS)}")
    args = p.parse_args(argv)
    what = args.what.split(",")
    unknown = [w for w in what if w not in OPTIONS]
    if unknown:
        p.error(f"--what {','.join(unknown)}: expected some of {', '.join(OPTIONS)}")
    torch.set_num_threads(args.threads)
    from fastmlr.bench.cells import build_model
    from fastmlr.models.base import calibrate_batchnorm

    models = {}
    for name in args.models.split(","):
        m = build_model(name, 80, "resnet101").eval()
        calibrate_batchnorm(m, args.image_size)
        models[name] = m.eval()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fastmlr-options-") as tmp:
        if "aoti-freezing" in what:
            rows["AOTInductor"] = aoti_freezing(models, args.image_size, args.rounds, tmp)
        if "onnx-spin" in what:
            rows["ONNX Runtime, fused op set"] = onnx_spin(models, args.image_size, args.rounds, args.threads, tmp)
        if "pyop-threads" in what:
            rows["ONNX Runtime, fused op set, not spinning"] = pyop_threads(models, args.image_size, args.rounds,
                                                                            args.threads, tmp)
        if "eager-linear" in what:
            rows["eager, cpp ops"] = eager_linear(models, args.image_size, args.rounds)
    print(f"{args.threads} threads, ResNet-101 at {args.image_size} px, batch 1, wall clock, median of {args.rounds} "
          f"rounds; load average {os.getloadavg()[0]:.1f}")
    print("| runtime | setting | " + " | ".join(models) + " | overhead |")
    print("|---|---|" + "---:|" * len(models) + "---:|")
    for rt, t in rows.items():
        for setting in dict.fromkeys(s for _, s in t):
            ms = [t[(m, setting)] for m in models]
            over = f"{100 * (ms[1] / ms[0] - 1):+.1f}%" if len(ms) > 1 else ""
            print(f"| {rt} | {setting} | " + " | ".join(f"{v:.1f}" for v in ms) + f" | {over} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
