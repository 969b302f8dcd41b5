"""The command: flags, configuration, the run over every runtime, the files it writes."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile

import torch

from ..engine import UsageError, run_command
from ..progress import progress_bar
from .cells import (
    child_main,
    describe_machine,
    fused_backend,
    run_cell_isolated,
    run_group,
    run_group_isolated,
    run_train_cell,
)
from ..measure import CLOCKS
from .report import PAPER_MS, PAPER_ONLY_MS, add_overheads, format_markdown, plot, uncertain_overheads
from .runtimes import RUNTIMES

QUICK = dict(backbone="resnet18", image_size=64, num_classes=10, warmup=2, min_iters=15, max_iters=300, max_time=10.0,
             target_spread=0.02, mem_iters=3, batch_sizes=[1], models=["baseline", "srdl", "mlgcn"],
             runtimes=["eager", "onnxrt-fp32"], train_batch_size=2, threads=1, clock="cpu")
DEFAULTS = dict(backbone="resnet101", image_size=448, num_classes=80, warmup=5, min_iters=20, max_iters=500,
                max_time=120.0, target_spread=0.01, mem_iters=5, batch_sizes=[1], models=None, runtimes=None,
                train_batch_size=4, threads=None, clock="wall")

DESCRIPTION = "the SRDL paper's inference-time table (table 3), measured here on every runtime"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.bench", description=DESCRIPTION)
    p.add_argument("--models", default=None, help="comma-separated registered models (default: every registered one)")
    p.add_argument("--runtimes", default=None, help=f"comma-separated, from {', '.join(RUNTIMES)} (default: all)")
    p.add_argument("--backends", default=None, help="deprecated name of --runtimes")
    p.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 1, the paper's)")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default 448)")
    p.add_argument("--num-classes", type=int, default=None, help="C (default 80, COCO)")
    p.add_argument("--backbone", default=None, help="backbone (default resnet101, the paper's)")
    p.add_argument("--iters", type=int, default=None,
                   help="exactly this many timed rounds (one call per model each); default: adaptive, see --min-iters")
    p.add_argument("--min-iters", type=int, default=None, help="rounds timed at least (default 20; quick 15)")
    p.add_argument("--max-iters", type=int, default=None, help="rounds timed at most (default 500; quick 300)")
    p.add_argument("--max-time", type=float, default=None,
                   help="seconds of timing per runtime and batch size after --min-iters (default 120; quick 10)")
    p.add_argument("--target-spread", type=float, default=None,
                   help="stop once every overhead's 90%% interval is within +- this fraction (default 0.01; quick 0.02)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls of each model first (default 5)")
    p.add_argument("--clock", choices=["auto", *CLOCKS], default="auto",
                   help="what a CPU call's time is: wall (latency) or cpu (the process's CPU time, which waits for "
                   "a core do not inflate; for comparing models on a loaded machine). auto: cpu with --quick, else "
                   "wall. CUDA calls are timed by CUDA events either way")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    p.add_argument("--ops-backend", default=None,
                   help="fastmlr.ops backend inside the PyTorch runtimes (default: the dispatch's choice)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: their own defaults); on a loaded machine "
                   "fewer threads than cores avoids OpenMP threads waiting on each other (quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="small configuration (resnet18, 64 px, 10 classes, baseline/srdl/mlgcn, eager and onnxrt-fp32, "
                   "15 to 300 rounds, 10 s per runtime, 1 CPU thread, CPU-time clock); explicit flags still win")
    p.add_argument("--train", action="store_true", help="add the forward+backward table (reference vs fused ops)")
    p.add_argument("--train-batch-size", type=int, default=None, help="batch of the --train table (default 4)")
    p.add_argument("--isolate", choices=["auto", "on", "off"], default="auto",
                   help="each cell's peak memory measured in a fresh process, and each runtime's timing in one "
                   "(auto: on unless --quick)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--_cell", help=argparse.SUPPRESS)
    p.add_argument("--_cell-out", help=argparse.SUPPRESS)
    return p


def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def _runtimes(args, base) -> list[str]:
    flag, value = "--runtimes", args.runtimes
    if args.backends is not None:
        if args.runtimes is not None:
            raise UsageError("--backends: give --runtimes only (--backends is its deprecated name)")
        print("bench: --backends is deprecated, use --runtimes (a backend is a fastmlr.ops implementation; the "
              "columns are runtimes)", file=sys.stderr)
        flag, value = "--backends", args.backends
    runtimes = _csv(value) if value else (base["runtimes"] or list(RUNTIMES))
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise UsageError(f"{flag}: unknown {bad}; expected some of {', '.join(RUNTIMES)}")
    return runtimes


def resolve_config(args) -> dict:
    from ..engine import DeviceUnavailable, resolve_device
    from ..models import list_models
    from ..models.backbones import BACKBONES

    base = QUICK if args.quick else DEFAULTS
    cfg = {}
    for key in ("backbone", "image_size", "num_classes", "warmup", "min_iters", "max_iters", "max_time",
                "target_spread", "train_batch_size"):
        v = getattr(args, key)
        cfg[key] = base[key] if v is None else v
    cfg["mem_iters"] = base["mem_iters"]
    cfg["iters"] = args.iters
    if args.iters is not None:
        if args.iters < 1:
            raise UsageError(f"--iters: expected an integer >= 1, got {args.iters}")
        cfg["min_iters"] = cfg["max_iters"] = args.iters
    known = list_models()
    models = _csv(args.models) if args.models else (base["models"] or known)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UsageError(f"--models: unknown {unknown}; registered models: {', '.join(known)}")
    if "baseline" in known:  # the overhead column needs it, first
        models = ["baseline"] + [m for m in models if m != "baseline"]
    cfg["models"] = models
    cfg["runtimes"] = _runtimes(args, base)
    try:
        bss = [int(b) for b in _csv(args.batch_sizes)] if args.batch_sizes else base["batch_sizes"]
    except ValueError:
        raise UsageError(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}") from None
    if not bss or min(bss) < 1:
        raise UsageError(f"--batch-sizes: expected positive integers, got {args.batch_sizes!r}")
    cfg["batch_sizes"] = sorted(set(bss))
    if cfg["backbone"] not in BACKBONES:
        raise UsageError(f"--backbone: unknown {cfg['backbone']!r}; expected one of {', '.join(BACKBONES)}")
    for key, lo in (("image_size", 32), ("num_classes", 1), ("min_iters", 1), ("warmup", 0), ("train_batch_size", 1)):
        if cfg[key] < lo:
            raise UsageError(f"--{key.replace('_', '-')}: expected an integer >= {lo}, got {cfg[key]}")
    if cfg["max_iters"] < cfg["min_iters"]:
        raise UsageError(f"--max-iters: expected at least --min-iters ({cfg['min_iters']}), got {cfg['max_iters']}")
    if not cfg["max_time"] > 0:
        raise UsageError(f"--max-time: expected seconds > 0, got {cfg['max_time']}")
    if not 0 < cfg["target_spread"] < 1:
        raise UsageError(f"--target-spread: expected a fraction in (0, 1), got {cfg['target_spread']}")
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as e:
        raise UsageError(str(e)) from None
    cfg["device"] = str(device)
    cfg["ops_backend"] = args.ops_backend
    if args.ops_backend is not None:
        from ..ops import available_backends

        avail = available_backends(device)
        if args.ops_backend not in avail:
            raise UsageError(f"--ops-backend: {args.ops_backend!r} does not run on {device.type} here; "
                             f"expected one of {', '.join(avail)}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads: expected an integer >= 1, got {args.threads}")
    cfg["threads"] = base["threads"] if args.threads is None else args.threads
    cfg["clock"] = base["clock"] if args.clock == "auto" else args.clock
    cfg["isolate"] = (not args.quick) if args.isolate == "auto" else args.isolate == "on"
    cfg["quick"] = bool(args.quick)
    return cfg


_GROUP_KEYS = ("backbone", "image_size", "num_classes", "warmup", "min_iters", "max_iters", "max_time",
               "target_spread", "mem_iters", "batch_sizes", "device", "threads", "ops_backend", "models", "clock")


def _merge_memory(cell: dict, mem: dict) -> None:
    """Put the per-cell process's memory figures into the interleaved cell."""
    if mem.get("status") != "ok":
        if cell.get("status") == "ok":
            cell["memory_reason"] = mem.get("reason", "memory cell did not run")
        return
    for bs, st in cell.get("batches", {}).items():
        for key in ("peak_mem_mb", "rss_increase_mb", "mem_kind"):
            if key in mem["batches"].get(bs, {}):
                st[key] = mem["batches"][bs][key]


def measure_runtime(cfg: dict, rt: str, work: str, bar) -> list[dict]:
    """Every model on runtime ``rt``: timed interleaved; memory in the same process, or per cell with isolation."""
    spec = {k: cfg[k] for k in _GROUP_KEYS}
    spec.update(runtime=rt, workdir=work, memory=not cfg["isolate"])
    if RUNTIMES[rt].why_not(torch.device(cfg["device"])) or not cfg["isolate"]:
        bar.set_postfix_str(f"{rt}: {', '.join(cfg['models'])}")
        return run_group(spec)
    mems = {}
    for m in cfg["models"]:
        bar.set_postfix_str(f"{rt}: memory of {m}")
        cell_spec = {k: cfg[k] for k in _GROUP_KEYS if k != "models"}
        cell_spec.update(model=m, runtime=rt, workdir=work, iters=cfg["mem_iters"])
        mems[m] = run_cell_isolated(cell_spec)
    bar.set_postfix_str(f"{rt}: timing {', '.join(cfg['models'])}")
    cells = run_group_isolated(spec)
    for c in cells:
        _merge_memory(c, mems[c["model"]])
    return cells


def run(args, argv: list[str] | None = None) -> dict:
    """The bench the flags ``args`` describe; ``argv`` (the command line as given) is recorded in the result."""
    from ..files import atomic_write_bytes, atomic_write_json

    cfg = resolve_config(args)
    device = torch.device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    os.makedirs(args.out, exist_ok=True)
    machine = describe_machine(device)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m fastmlr.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": cfg,
        "machine": machine,
        "paper_ms_per_image": {**PAPER_MS, **PAPER_ONLY_MS},
        "paper_reference": "SRDL paper table 3: RTX 3070, PyTorch, ResNet-101, 448 x 448, batch 1",
        "cells": [],
    }
    work = tempfile.mkdtemp(prefix="fastmlr-bench-")
    n_train = 2 * len(cfg["models"]) if args.train else 0
    bar = progress_bar(total=len(cfg["runtimes"]) + n_train, desc="bench", enabled=not args.no_progress)
    try:
        for rt in cfg["runtimes"]:
            result["cells"] += measure_runtime(cfg, rt, work, bar)
            bar.update(1)
        if args.train:
            result["train"] = _train(cfg, device, bar)
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    add_overheads(result)
    result["overheads_uncertain"] = [f"{mo} / {rt} / batch {bs}" for mo, rt, bs, _ in uncertain_overheads(result)]
    md = format_markdown(result)
    paths = {k: os.path.join(args.out, f"bench.{k}") for k in ("json", "md", "png")}
    atomic_write_json(paths["json"], result)
    atomic_write_bytes(paths["md"], lambda fh: fh.write(md.encode()))
    try:
        plot(result, paths["png"])
    except ImportError as e:
        print(f"bench: no chart ({e}; pip install matplotlib)", file=sys.stderr)
        paths.pop("png")
    print(md)
    print("wrote " + ", ".join(paths.values()))
    result["paths"] = paths
    return result


def _train(cfg: dict, device: torch.device, bar) -> dict:
    fused, why = fused_backend(device)
    tr = {"batch": cfg["train_batch_size"], "fused_backend": fused, "fused_reason": why, "cells": [],
          "timed": "forward_train + loss + backward (no optimiser step), train mode"}
    for model in cfg["models"]:
        for ob in ("reference", fused):
            bar.set_postfix_str(f"train {model} / {ob}")
            if ob is not None:
                spec = {k: cfg[k] for k in ("backbone", "image_size", "num_classes", "device", "train_batch_size",
                                            "threads")}
                spec.update(model=model, ops_backend=ob, train=True, train_iters=max(2, min(cfg["min_iters"], 10)))
                tr["cells"].append(run_cell_isolated(spec) if cfg["isolate"] else run_train_cell(spec))
            bar.update(1)
    return tr


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args._cell:
        child_main(args._cell, args._cell_out)
        return 0
    return run_command(lambda: (run(args, argv), 0)[1], debug=args.debug)
