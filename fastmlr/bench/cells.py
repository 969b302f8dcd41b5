"""Cells: one cell is one model on one runtime.

Two ways a cell is measured:

- :func:`run_group`: every model of one runtime, prepared in one process and
  timed interleaved (:func:`fastmlr.measure.interleaved_times`). The
  latency columns and the overhead over ``baseline`` come from here, so the
  models being compared share the same moments of machine load.
- :func:`run_cell`: one model alone, for its memory (in a fresh process,
  :func:`run_cell_isolated`, the resident-set peak is that cell's alone).

Neither raises for a model or runtime that fails: the cell's ``status`` is
"skipped" (the runtime cannot run here) or "failed", with a ``reason``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import torch

from ..measure import CallTimer, MemoryMeter, interleaved_times, summarize, time_calls
from .runtimes import RUNTIMES, SkipCell


def build_model(name: str, num_classes: int, backbone: str):
    from ..models import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights / embeddings are the point here
        return create_model(name, num_classes, backbone=backbone, weights="none")


def example_fn(image_size: int, device):
    """batch -> random normal images (never zeros), the same for every model and runtime."""

    def example(batch: int):
        g = torch.Generator().manual_seed(1234 + batch)
        return torch.randn(batch, 3, image_size, image_size, generator=g).to(device)

    return example


@contextlib.contextmanager
def _quiet_stdout():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _reason(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".strip().splitlines()[:3])[:400]


def _ops_backend(spec: dict):
    """The fastmlr.ops backend the cell's models run (None: the dispatch's own choice)."""
    from .. import ops

    return ops.use_backend(spec.get("ops_backend"))


def _new_cell(model: str, rt) -> dict:
    return {"model": model, "runtime": rt.name, "label": rt.label, "timed": rt.timed, "batches": {}}


def _prepare(rt, model_name: str, spec: dict, device: torch.device) -> tuple:
    """Build ``model_name`` and prepare it on runtime ``rt``: (timed call, input device, prepare_s, provider)."""
    ctx = {**spec, "device": device, "model_name": model_name, "example": example_fn(spec["image_size"], device),
           "input_device": device.type}
    t0 = time.perf_counter()
    model = build_model(model_name, spec["num_classes"], spec["backbone"]).to(device).eval()
    with warnings.catch_warnings(), _quiet_stdout():
        warnings.simplefilter("ignore")
        fn = rt.prepare(model, ctx)
    return fn, ctx["input_device"], time.perf_counter() - t0, ctx.get("provider", f"torch:{device.type}")


def run_cell(spec: dict) -> dict:
    """One model alone on one runtime, at every batch size: ``spec["iters"]`` timed calls and peak memory."""
    device = torch.device(spec["device"])
    rt = RUNTIMES[spec["runtime"]]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cell = _new_cell(spec["model"], rt)
    why = rt.why_not(device)
    if why:
        return {**cell, "status": "skipped", "reason": why}
    try:
        with _ops_backend(spec):
            fn, input_device, cell["prepare_s"], cell["provider"] = _prepare(rt, spec["model"], spec, device)
            meter = MemoryMeter(device, rt.torch_alloc)
            for b in spec["batch_sizes"]:
                x = example_fn(spec["image_size"], input_device)(b)
                meter.start()
                secs = time_calls(fn, x, spec["iters"], spec["warmup"], device,
                                  CallTimer.named(device, spec.get("clock", "wall")))
                cell["batches"][str(b)] = {**summarize(secs, b), **meter.stop(), "timing": "alone"}
        cell["status"] = "ok"
    except SkipCell as e:
        return {**cell, "status": "skipped", "reason": str(e)}
    except Exception as e:  # the table says what failed instead of stopping the run
        return {**cell, "status": "failed", "reason": _reason(e)}
    finally:
        gc.collect()
        torch._dynamo.reset()  # compiled graphs of this cell must not hold memory in the next
    return cell


def run_group(spec: dict, timer: CallTimer | None = None) -> list[dict]:
    """Every model of ``spec["models"]`` on runtime ``spec["runtime"]``, timed interleaved in this process.

    Per batch size: ``warmup`` calls of each model (its peak memory measured around them and
    ``mem_iters`` more calls when ``spec["memory"]``), then rounds of one call per model, between
    ``min_iters`` and ``max_iters`` rounds, stopping early once ``max_time`` seconds have passed or
    every overhead's interval is at most ``2 * target_spread`` wide. Each batch's stats keep the raw
    ``samples_ms`` (sample i of every model of the group was taken in round i).
    """
    device = torch.device(spec["device"])
    rt = RUNTIMES[spec["runtime"]]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cells = {m: _new_cell(m, rt) for m in spec["models"]}
    why = rt.why_not(device)
    if why:
        return [{**c, "status": "skipped", "reason": why} for c in cells.values()]
    timer = timer or CallTimer.named(device, spec.get("clock", "wall"))
    prepared = {}
    try:
        with _ops_backend(spec):
            for m, cell in cells.items():
                try:
                    fn, input_device, cell["prepare_s"], cell["provider"] = _prepare(rt, m, spec, device)
                    prepared[m] = (fn, input_device)
                except SkipCell as e:
                    cell.update(status="skipped", reason=str(e))
                except Exception as e:
                    cell.update(status="failed", reason=_reason(e))
            for b in spec["batch_sizes"]:
                _time_batch(spec, rt, device, timer, cells, prepared, b)
    finally:
        prepared.clear()
        gc.collect()
        torch._dynamo.reset()
    for m, cell in cells.items():
        cell.setdefault("status", "ok")
    return list(cells.values())


def _time_batch(spec, rt, device, timer, cells, prepared, b: int) -> None:
    calls, memory = {}, {}
    for m, (fn, input_device) in list(prepared.items()):
        x = example_fn(spec["image_size"], input_device)(b)
        try:
            meter = MemoryMeter(device, rt.torch_alloc)
            meter.start()
            time_calls(fn, x, spec.get("mem_iters", 0) if spec.get("memory") else 0, spec["warmup"], device, timer)
            if spec.get("memory"):
                memory[m] = meter.stop()
        except Exception as e:
            cells[m].update(status="failed", reason=_reason(e))
            prepared.pop(m)
            continue
        calls[m] = (lambda fn=fn, x=x: fn(x))
    if not calls:
        return
    samples, failed, info = interleaved_times(
        calls, timer=timer, min_rounds=spec["min_iters"], max_rounds=spec["max_iters"],
        max_seconds=spec.get("max_time"), target=spec.get("target_spread"),
        baseline="baseline" if "baseline" in calls else None)
    for m, reason in failed.items():
        cells[m].update(status="failed", reason=reason)
        prepared.pop(m, None)
    for m, secs in samples.items():
        cells[m]["batches"][str(b)] = {
            **summarize(secs, b), **memory.get(m, {}),
            "timing": "interleaved", "rounds": info["rounds"], "stop": info["stop"],
            "timing_s": info["seconds"], "interleaved_with": sorted(samples),
            "samples_ms": [round(1e3 * s, 5) for s in secs],
        }


# -- fresh processes ----------------------------------------------------------------------------------


def _in_child(spec: dict, failed):
    """Run ``spec`` (a cell, a group or a train cell) in a fresh interpreter; ``failed(reason)`` if it dies."""
    with tempfile.TemporaryDirectory() as tmp:
        sp, op = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(sp, "w") as fh:
            json.dump(spec, fh)
        proc = subprocess.run([sys.executable, "-m", "fastmlr.bench", "--_cell", sp, "--_cell-out", op],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(op):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            return failed(f"cell process exited with {proc.returncode}: {' '.join(tail)[:300]}")
        with open(op) as fh:
            return json.load(fh)


def run_cell_isolated(spec: dict) -> dict:
    """run_cell (or run_train_cell, for a spec with ``train``) in a fresh interpreter, so the resident-set
    peak is this cell's alone."""
    if spec.get("train"):
        return _in_child(spec, lambda r: {"model": spec["model"], "ops_backend": spec["ops_backend"],
                                          "status": "failed", "reason": r})
    rt = RUNTIMES[spec["runtime"]]
    return _in_child(spec, lambda r: {**_new_cell(spec["model"], rt), "status": "failed", "reason": r})


def run_group_isolated(spec: dict) -> list[dict]:
    """run_group in a fresh interpreter."""
    rt = RUNTIMES[spec["runtime"]]
    return _in_child({**spec, "group": True},
                     lambda r: [{**_new_cell(m, rt), "status": "failed", "reason": r} for m in spec["models"]])


def child_main(spec_path: str, out_path: str) -> None:
    with open(spec_path) as fh:
        spec = json.load(fh)
    if spec.get("train"):
        out = run_train_cell(spec)
    elif spec.get("group"):
        out = run_group(spec)
    else:
        out = run_cell(spec)
    with open(out_path, "w") as fh:
        json.dump(out, fh)


# -- training throughput (--train) --------------------------------------------------------------------


def fused_backend(device: torch.device) -> tuple[str | None, str]:
    """The fastest non-reference fastmlr.ops backend on ``device``, or (None, why none)."""
    from ..ops import available_backends

    avail = available_backends(device)
    names = [n for n in avail if n != "reference"]
    if names:
        return names[0], ""
    return None, f"no fused fastmlr.ops backend on {torch.device(device).type} (available: {', '.join(avail) or 'none'})"


def run_train_cell(spec: dict) -> dict:
    """Forward+backward (forward_train, loss, backward; no optimiser step) images/s and peak memory."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cell = {"model": spec["model"], "ops_backend": spec["ops_backend"]}
    try:
        model = build_model(spec["model"], spec["num_classes"], spec["backbone"]).to(device).train()
        b = spec["train_batch_size"]
        g = torch.Generator().manual_seed(99)
        x = torch.randn(b, 3, spec["image_size"], spec["image_size"], generator=g).to(device)
        y = (torch.rand(b, spec["num_classes"], generator=g) < 0.3).float().to(device)

        def step(_):
            model.zero_grad(set_to_none=True)
            model.loss(model.forward_train(x), y).backward()

        with _ops_backend(spec):
            meter = MemoryMeter(device, True)
            meter.start()
            secs = time_calls(step, None, spec["train_iters"], 1, device)
            cell.update(status="ok", batch=b, **summarize(secs, b), **meter.stop())
    except Exception as e:
        cell.update(status="failed", reason=f"{type(e).__name__}: {e}".splitlines()[0][:400])
    gc.collect()
    return cell


# -- machine ------------------------------------------------------------------------------------------


def describe_machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    m = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import onnxruntime

        m["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        m["onnxruntime"] = None
    return m
