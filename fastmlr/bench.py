"""python -m fastmlr.bench: the SRDL paper's inference-time table (table 3), measured here on every backend.

Rows are models (every registered model unless ``--models``), columns are
backends; defaults follow the paper (ResNet-101, 448 x 448, batch 1, 80
classes). Each cell: warm-up, then ``--iters`` timed calls (CUDA events on a
GPU, ``time.perf_counter`` on the CPU), median and p90 per batch, images/s,
peak memory, and the model's overhead over ``baseline`` on the same backend in
the same run. The paper's figures (RTX 3070, PyTorch eager) stand beside as a
labelled reference column. A backend that cannot run here says why in its cell.

What is timed, for every backend: one inference call on an input tensor that
was prepared beforehand (random normal images, never zeros), from the call to
its outputs (logits and sigmoid probabilities) being ready. Model building,
export, compilation and engine building are reported separately as
``prepare_s``. Exported graphs (ONNX, AOTInductor, TensorRT) fold SRDL's
image-independent label graph into a constant; eager and compiled PyTorch
recompute it each call (a C x E graph, tiny beside the backbone). ONNX Runtime
runners take CPU tensors, so on a GPU their time includes the copies.

Weights are random (timings do not depend on them). ``--train`` adds a
forward+backward table per model with the ``reference`` ops and with the
fastest fused backend of :mod:`fastmlr.ops`.

Writes ``OUT/bench.json`` (every figure), ``OUT/bench.md`` and ``OUT/bench.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable

import torch

# Paper table 3: ms per image, ResNet-101, 448 x 448, RTX 3070, PyTorch.
PAPER_MS = {
    "baseline": 31.54,
    "srdl": 32.58,
    "mlgcn": 32.40,
}
PAPER_ONLY_MS = {"SSGRL": 33.36, "P-GCN": 32.33, "MCAR (global)": 32.48, "MCAR (global-local)": 123.47}
PAPER_LABEL = "paper: RTX 3070, PyTorch, R101 448 px (ms/image)"

QUICK = dict(backbone="resnet18", image_size=64, num_classes=10, iters=5, warmup=2, batch_sizes=[1],
             models=["baseline", "srdl", "mlgcn"], backends=["eager", "onnxrt-fp32"], train_batch_size=2)
DEFAULTS = dict(backbone="resnet101", image_size=448, num_classes=80, iters=30, warmup=5, batch_sizes=[1],
                models=None, backends=None, train_batch_size=4)


# -- statistics ---------------------------------------------------------------------------------------
def percentile(samples, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds, batch: int) -> dict:
    """Latency statistics of per-call times in seconds, for calls of ``batch`` images."""
    med = percentile(seconds, 50)
    return {
        "iters": len(seconds),
        "median_ms": 1e3 * med,
        "p90_ms": 1e3 * percentile(seconds, 90),
        "mean_ms": 1e3 * sum(seconds) / len(seconds),
        "min_ms": 1e3 * min(seconds),
        "ms_per_image": 1e3 * med / batch,
        "images_per_s": batch / med if med > 0 else float("inf"),
    }


def overhead(model_ms: float, baseline_ms: float) -> float:
    """Relative cost over the baseline: (model - baseline) / baseline."""
    return (model_ms - baseline_ms) / baseline_ms


# -- memory -------------------------------------------------------------------------------------------
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's resident-set high-water mark (Linux: write 5 to clear_refs); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set since the last reset (VmHWM), else the process lifetime's (ru_maxrss)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0.0) / 1024.0


class MemoryMeter:
    """Peak memory of a section: device memory on CUDA (torch's allocator, or the device's used memory for
    runtimes with their own allocator), the process's resident set on the CPU."""

    def __init__(self, device: torch.device, torch_alloc: bool):
        self.device, self.torch_alloc = device, torch_alloc

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            self.start_rss = rss_mb()
            self.reset_ok = reset_peak_rss()

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.torch_alloc:
                return {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                        "mem_kind": "device memory, torch allocator peak"}
            free, total = torch.cuda.mem_get_info(self.device)
            return {"peak_mem_mb": (total - free) / 2**20, "mem_kind": "device memory in use after timing (all processes)"}
        peak = peak_rss_mb()
        return {
            "peak_mem_mb": peak,
            "rss_increase_mb": max(0.0, peak - self.start_rss),
            "mem_kind": "resident set peak of the process while timing" + ("" if self.reset_ok else " (lifetime peak: clear_refs unavailable)"),
        }


# -- backends -----------------------------------------------------------------------------------------
class SkipCell(Exception):
    """This backend cannot run here; the message says why."""


class BenchBackend:
    """One column. ``why_not(device)`` says why it cannot run (None if it can); ``prepare`` returns the timed call."""

    name = "?"
    label = "?"
    devices: tuple[str, ...] = ("cpu", "cuda")
    timed = "model(images) then sigmoid, PyTorch"
    torch_alloc = True

    def why_not(self, device: torch.device) -> str | None:
        if device.type not in self.devices:
            need = " or ".join("a CUDA GPU" if d == "cuda" else "the CPU" for d in self.devices)
            have = "no GPU is present" if not torch.cuda.is_available() else f"running on {device.type}"
            return f"{self.label} needs {need}; {have}"
        return None

    def prepare(self, model: torch.nn.Module, ctx: dict) -> Callable:
        raise NotImplementedError


class Eager(BenchBackend):
    name, label = "eager", "PyTorch eager fp32"

    def prepare(self, model, ctx):
        def fn(x):
            with torch.inference_mode():
                return torch.sigmoid(model(x))

        return fn


class Compile(BenchBackend):
    name, label = "compile", "torch.compile (inductor) fp32"
    timed = "torch.compile(model)(images) then sigmoid; compilation in prepare_s"

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
            return "torch.compile on the CPU needs a C++ compiler (c++/g++ not on PATH)"
        return None

    def prepare(self, model, ctx):
        compiled = torch.compile(model, dynamic=False)

        def fn(x):
            with torch.inference_mode():
                return torch.sigmoid(compiled(x))

        # Compile for every batch size now, so prepare_s holds the compilation and warm-up only warms.
        for b in ctx["batch_sizes"]:
            fn(ctx["example"](b))
        return fn


class AutocastFP16(BenchBackend):
    name, label = "autocast-fp16", "PyTorch fp16 autocast"
    devices = ("cuda",)
    timed = "model(images) under torch.autocast(float16), then sigmoid"

    def prepare(self, model, ctx):
        def fn(x):
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                return torch.sigmoid(model(x).float())

        return fn


def _import_export():
    try:
        from . import export, runtime
    except ImportError as e:
        raise SkipCell(f"fastmlr.export / fastmlr.runtime not available: {type(e).__name__}: {e}") from e
    return export, runtime


class OnnxRT(BenchBackend):
    timed = "ONNX Runtime session.run on the prepared images (runner._run): logits and probs"
    torch_alloc = False

    def __init__(self, fp16: bool):
        self.fp16 = fp16
        self.name = "onnxrt-fp16" if fp16 else "onnxrt-fp32"
        self.label = f"ONNX Runtime {'fp16' if fp16 else 'fp32'}"

    def why_not(self, device):
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU host)"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return (f"onnxruntime offers only {ort.get_available_providers()} here: it would run on the CPU, "
                        "not the GPU (pip install onnxruntime-gpu)")
        return None

    def prepare(self, model, ctx):
        export, runtime = _import_export()
        path = os.path.join(ctx["workdir"], f"{ctx['model_name']}-{self.name}.onnx")
        bs = ctx["batch_sizes"]
        export.export_onnx(model.cpu(), path, ctx["image_size"], min_batch=1, opt_batch=min(bs), max_batch=max(bs),
                           fp16=self.fp16)
        opts = {"threads": ctx["threads"]} if ctx.get("threads") else {}
        runner = runtime.load(path, device=ctx["device"].type, **opts)
        ctx["provider"] = runner.provider
        ctx["input_device"] = "cpu"  # the ONNX runner takes host tensors
        return runner._run


class AOTI(BenchBackend):
    name, label = "aoti", "AOTInductor fp32"
    devices = ("cpu",)
    timed = "the AOTInductor package's call on the prepared images (runner._run): logits and probs"

    def why_not(self, device):
        if device.type != "cpu":
            return "fastmlr.export.export_aoti compiles for the CPU only; a GPU package is not built by it"
        if not (shutil.which("c++") or shutil.which("g++")):
            return "AOTInductor needs a C++ compiler (c++/g++ not on PATH)"
        return None

    def prepare(self, model, ctx):
        export, runtime = _import_export()
        path = os.path.join(ctx["workdir"], f"{ctx['model_name']}-aoti.pt2")
        export.export_aoti(model.cpu(), path, ctx["image_size"], max_batch=max(ctx["batch_sizes"]))
        runner = runtime.load(path, device="cpu")
        ctx["provider"] = runner.provider
        return runner._run


class TensorRTFP16(BenchBackend):
    name, label = "trt-fp16", "TensorRT fp16"
    devices = ("cuda",)
    timed = "TensorRT execution context on the prepared CUDA images (runner._run): logits and probs"
    torch_alloc = False

    def why_not(self, device):
        r = super().why_not(device)
        if r:
            return r
        try:
            from .export_trt import TRTUnavailable, import_tensorrt
        except ImportError as e:
            return f"fastmlr.export_trt not available: {type(e).__name__}: {e}"
        try:
            import_tensorrt()
        except TRTUnavailable as e:
            return str(e)
        return None

    def prepare(self, model, ctx):
        export, runtime = _import_export()
        bs = ctx["batch_sizes"]
        onnx_path = os.path.join(ctx["workdir"], f"{ctx['model_name']}-trt-fp16.onnx")
        engine = os.path.join(ctx["workdir"], f"{ctx['model_name']}-fp16.engine")
        export.export_onnx(model.cpu(), onnx_path, ctx["image_size"], min_batch=1, opt_batch=min(bs),
                           max_batch=max(bs), fp16=True)
        export.build_trt_engine(onnx_path, engine, min_batch=1, opt_batch=min(bs), max_batch=max(bs),
                                timing_cache=os.path.join(ctx["workdir"], "trt-timing.cache"))
        runner = runtime.load(engine, device="cuda")
        ctx["provider"] = runner.provider
        return runner._run


BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (Eager(), Compile(), AutocastFP16(), OnnxRT(False), OnnxRT(True), AOTI(), TensorRTFP16())
}


# -- one cell: (model, backend) over every batch size -------------------------------------------------
def _build_model(name: str, num_classes: int, backbone: str):
    from .models import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights / embeddings are the point here
        return create_model(name, num_classes, backbone=backbone, weights="none")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable, x, iters: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call: CUDA events on a GPU, the monotonic perf_counter on the CPU."""
    for _ in range(warmup):
        fn(x)
    _sync(device)
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t0)
    return out


def _example_fn(image_size: int, device):
    def example(batch: int):
        g = torch.Generator().manual_seed(1234 + batch)
        return torch.randn(batch, 3, image_size, image_size, generator=g).to(device)

    return example


@contextlib.contextmanager
def _quiet_stdout():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield


def run_cell(spec: dict) -> dict:
    """Time one (model, backend) at every batch size. Never raises: failures become the cell's reason."""
    device = torch.device(spec["device"])
    backend = BACKENDS[spec["backend"]]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cell = {"model": spec["model"], "backend": backend.name, "label": backend.label, "timed": backend.timed,
            "batches": {}}
    why = backend.why_not(device)
    if why:
        return {**cell, "status": "skipped", "reason": why}
    ctx = {**spec, "device": device, "model_name": spec["model"], "example": _example_fn(spec["image_size"], device),
           "input_device": device.type}
    try:
        t0 = time.perf_counter()
        model = _build_model(spec["model"], spec["num_classes"], spec["backbone"]).to(device).eval()
        with warnings.catch_warnings(), _quiet_stdout():
            warnings.simplefilter("ignore")
            fn = backend.prepare(model, ctx)
        cell["prepare_s"] = time.perf_counter() - t0
        cell["provider"] = ctx.get("provider", f"torch:{device.type}")
        meter = MemoryMeter(device, backend.torch_alloc)
        for b in spec["batch_sizes"]:
            x = _example_fn(spec["image_size"], ctx["input_device"])(b)
            meter.start()
            secs = time_calls(fn, x, spec["iters"], spec["warmup"], device)
            cell["batches"][str(b)] = {**summarize(secs, b), **meter.stop()}
        cell["status"] = "ok"
    except SkipCell as e:
        return {**cell, "status": "skipped", "reason": str(e)}
    except Exception as e:  # the table says what failed instead of stopping the run
        msg = f"{type(e).__name__}: {e}".strip().splitlines()
        return {**cell, "status": "failed", "reason": " ".join(msg[:3])[:400]}
    finally:
        gc.collect()
        torch._dynamo.reset()  # compiled graphs of this cell must not hold memory in the next
    return cell


def run_cell_isolated(spec: dict) -> dict:
    """run_cell (or run_train_cell, for a spec with ``ops_backend``) in a fresh interpreter, so the
    resident-set peak is this cell's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        sp, op = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(sp, "w") as fh:
            json.dump(spec, fh)
        proc = subprocess.run([sys.executable, "-m", "fastmlr.bench", "--_cell", sp, "--_cell-out", op],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(op):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            reason = f"cell process exited with {proc.returncode}: {' '.join(tail)[:300]}"
            if "ops_backend" in spec:
                return {"model": spec["model"], "ops_backend": spec["ops_backend"], "status": "failed", "reason": reason}
            return {"model": spec["model"], "backend": spec["backend"], "label": BACKENDS[spec["backend"]].label,
                    "batches": {}, "status": "failed", "reason": reason}
        with open(op) as fh:
            return json.load(fh)


# -- training throughput (--train) --------------------------------------------------------------------
def fused_backend(device: torch.device) -> tuple[str | None, str]:
    """The fastest non-reference fastmlr.ops backend on ``device``, or (None, why none)."""
    from .ops import available_backends
    from .ops._dispatch import _UNAVAILABLE

    names = [n for n in available_backends(device) if n != "reference"]
    if names:
        return names[0], ""
    reasons = "; ".join(f"{k}: {v}" for k, v in sorted(_UNAVAILABLE.items())) or "none is registered"
    return None, f"no fused fastmlr.ops backend on {device.type} ({reasons})"


def _set_ops_backend(model: torch.nn.Module, backend: str) -> None:
    for mod in model.modules():
        if hasattr(mod, "backend"):
            mod.backend = backend


def run_train_cell(spec: dict) -> dict:
    """Forward+backward (forward_train, loss, backward; no optimiser step) images/s and peak memory."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    cell = {"model": spec["model"], "ops_backend": spec["ops_backend"]}
    try:
        model = _build_model(spec["model"], spec["num_classes"], spec["backbone"]).to(device).train()
        _set_ops_backend(model, spec["ops_backend"])
        b = spec["train_batch_size"]
        g = torch.Generator().manual_seed(99)
        x = torch.randn(b, 3, spec["image_size"], spec["image_size"], generator=g).to(device)
        y = (torch.rand(b, spec["num_classes"], generator=g) < 0.3).float().to(device)

        def step(_):
            model.zero_grad(set_to_none=True)
            model.loss(model.forward_train(x), y).backward()

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


def machine_line(m: dict) -> str:
    hw = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    la = m.get("load_average_start")
    le = m.get("load_average_end")
    load = ""
    if la:
        load = f"; load average (1/5/15 min) {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} at start"
        if le:
            load += f", {le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f} at end"
    return (f"{m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']} cores, {hw}; torch {m['torch']} "
            f"({m['torch_threads']} threads), onnxruntime {m.get('onnxruntime') or 'absent'}, "
            f"Python {m['python']}{load}")


# -- output -------------------------------------------------------------------------------------------
def add_overheads(result: dict) -> None:
    """Each ok cell's overhead over ``baseline`` on the same backend and batch size, from the median."""
    cells = result["cells"]
    for c in cells:
        base = next((b for b in cells if b["model"] == "baseline" and b["backend"] == c["backend"]), None)
        for bs, st in c.get("batches", {}).items():
            ref = base["batches"].get(bs) if base and base.get("status") == "ok" else None
            st["overhead_vs_baseline"] = overhead(st["median_ms"], ref["median_ms"]) if ref else None


def _fmt_pct(x: float | None) -> str:
    return "" if x is None else f" ({100 * x:+.1f}%)"


def format_markdown(result: dict) -> str:
    cfg, m = result["config"], result["machine"]
    models = cfg["models"]
    backends = cfg["backends"]
    cells = {(c["model"], c["backend"]): c for c in result["cells"]}
    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    lines = [
        "# fastmlr inference table (python -m fastmlr.bench)",
        "",
        f"- Run: {result['date']}, command `{result['command']}`",
        f"- Machine: {machine_line(m)}",
        f"- Config: {cfg['backbone']}, {cfg['image_size']} x {cfg['image_size']}, {cfg['num_classes']} classes, "
        f"batch {', '.join(map(str, cfg['batch_sizes']))}; {cfg['iters']} timed calls after {cfg['warmup']} "
        f"warm-up; random weights, random normal inputs; CPU threads {cfg.get('threads') or 'default'}; "
        f"{'each cell in its own process' if cfg['isolate'] else 'all cells in one process'}.",
        "- Timed: one inference call on a prepared input tensor, outputs ready (CUDA events on a GPU, "
        "perf_counter on the CPU); export/compilation excluded (prepare_s in bench.json).",
    ]
    paper_applies = (cfg["backbone"], cfg["image_size"]) == ("resnet101", 448) and cfg["num_classes"] == 80
    for bs in cfg["batch_sizes"]:
        k = str(bs)
        lines += ["", f"## Latency per call, batch {bs}: median ms [p90], overhead over baseline on the same backend",
                  ""]
        head = ["model", PAPER_LABEL + ("" if paper_applies else " (other config)")] + backends
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in models:
            p = PAPER_MS.get(name)
            paper = "-" if p is None else f"{p:.2f}" + (_fmt_pct(overhead(p, PAPER_MS["baseline"])) if name != "baseline" else "")
            row = [name, paper]
            for be in backends:
                c = cells.get((name, be))
                if c is None:
                    row.append("-")
                elif c["status"] != "ok":
                    # A skip reason belongs to the backend, a failure to the (model, backend) pair.
                    text = (f"{name} / {be}: " if c["status"] == "failed" else f"{be}: ") + c["reason"]
                    row.append(f"{c['status']} {note(text)}")
                else:
                    st = c["batches"][k]
                    ov = _fmt_pct(st.get("overhead_vs_baseline")) if name != "baseline" else ""
                    row.append(f"{st['median_ms']:.2f} [{st['p90_ms']:.2f}]{ov}")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", f"## Throughput and peak memory, batch {bs}: images/s, peak MB", ""]
        head = ["model"] + backends
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in models:
            row = [name]
            for be in backends:
                c = cells.get((name, be))
                if c is None or c["status"] != "ok":
                    row.append("-" if c is None else c["status"])
                else:
                    st = c["batches"][k]
                    inc = f" (+{st['rss_increase_mb']:.0f})" if "rss_increase_mb" in st else ""
                    row.append(f"{st['images_per_s']:.2f} img/s, {st['peak_mem_mb']:.0f}{inc} MB")
            lines.append("| " + " | ".join(row) + " |")
    mem_kinds = sorted({st["mem_kind"] for c in result["cells"] for st in c.get("batches", {}).values()})
    if mem_kinds:
        lines += ["", "Peak memory: " + "; ".join(mem_kinds) + "; on the CPU, (+N) is its rise over the resident "
                  "set when timing began" + (" (cells share one process: earlier cells' memory is included)"
                                              if not cfg["isolate"] else "") + "."]
    if "train" in result:
        tr = result["train"]
        lines += ["", f"## Training forward+backward, batch {tr['batch']}: images/s, peak MB "
                      f"(fastmlr.ops reference vs fused)", ""]
        fused = tr["fused_backend"] or "fused"
        head = ["model", "reference", fused, "speed-up"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name in models:
            row = [name]
            pair = []
            for ob in ("reference", tr["fused_backend"]):
                c = next((t for t in tr["cells"] if t["model"] == name and t["ops_backend"] == ob), None)
                if ob is None:
                    row.append(f"skipped {note('fused: ' + tr['fused_reason'])}")
                elif c is None or c["status"] != "ok":
                    row.append("-" if c is None else f"failed {note(name + ' / train ' + ob + ': ' + c['reason'])}")
                else:
                    inc = f" (+{c['rss_increase_mb']:.0f})" if "rss_increase_mb" in c else ""
                    row.append(f"{c['images_per_s']:.2f} img/s, {c['peak_mem_mb']:.0f}{inc} MB")
                    pair.append(c["images_per_s"])
            row.append(f"x{pair[1] / pair[0]:.2f}" if len(pair) == 2 else "-")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Models whose head calls no fastmlr.ops (baseline, ML-GCN) run the same code in both columns: "
                      "their difference is noise."]
    lines += ["", "Paper rows without a fastmlr model (ms/image, RTX 3070): "
              + ", ".join(f"{k} {v:.2f}" for k, v in PAPER_ONLY_MS.items()) + "."]
    timed = sorted({(c["backend"], c["timed"], c.get("provider", "")) for c in result["cells"] if c["status"] == "ok"})
    if timed:
        lines += ["", "What each backend's time covers:"]
        lines += [f"- {be}: {t}" + (f" ({p})" if p else "") for be, t, p in timed]
    if notes:
        lines += ["", "Notes:"] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    bs = str(cfg["batch_sizes"][0])
    models, backends = cfg["models"], cfg["backends"]
    cells = {(c["model"], c["backend"]): c for c in result["cells"]}
    series = [(be, [cells[(mo, be)]["batches"][bs]["ms_per_image"] if cells.get((mo, be), {}).get("status") == "ok"
                    else float("nan") for mo in models]) for be in backends]
    series.append(("paper (RTX 3070)", [PAPER_MS.get(mo, float("nan")) for mo in models]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) * max(1, len(series)) / 2), 4.5))
    width = 0.8 / len(series)
    for i, (label, ys) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(models))]
        ax.bar(xs, ys, width, label=label, hatch="//" if label.startswith("paper") else None,
               color="lightgrey" if label.startswith("paper") else None, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(models)
    ax.set_ylabel("ms per image (median)")
    ax.set_title(f"{cfg['backbone']} {cfg['image_size']} px, batch {bs}, {result['machine'].get('gpu') or result['machine']['cpu']}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- command ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated registered models (default: every registered one)")
    p.add_argument("--backends", default=None, help=f"comma-separated, from {', '.join(BACKENDS)} (default: all)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 1, the paper's)")
    p.add_argument("--image-size", type=int, default=None, help="input side in pixels (default 448)")
    p.add_argument("--num-classes", type=int, default=None, help="C (default 80, COCO)")
    p.add_argument("--backbone", default=None, help="backbone (default resnet101, the paper's)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per cell (default 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: their own defaults); on a loaded machine "
                   "fewer threads than cores avoids OpenMP threads waiting on each other")
    p.add_argument("--quick", action="store_true",
                   help="small configuration (resnet18, 64 px, 10 classes, baseline/srdl/mlgcn, eager and onnxrt-fp32, "
                   "5 iterations); explicit flags still win")
    p.add_argument("--train", action="store_true", help="add the forward+backward table (reference vs fused ops)")
    p.add_argument("--train-batch-size", type=int, default=None, help="batch of the --train table (default 4)")
    p.add_argument("--isolate", choices=["auto", "on", "off"], default="auto",
                   help="each cell in a fresh process, for per-cell peak resident set (auto: on unless --quick)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--_cell", help=argparse.SUPPRESS)
    p.add_argument("--_cell-out", help=argparse.SUPPRESS)
    return p


def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def resolve_config(args) -> dict:
    from .models import list_models
    from .models.backbones import BACKBONES

    base = QUICK if args.quick else DEFAULTS
    cfg = {}
    for key in ("backbone", "image_size", "num_classes", "iters", "warmup", "train_batch_size"):
        v = getattr(args, key)
        cfg[key] = base[key] if v is None else v
    known = list_models()
    models = _csv(args.models) if args.models else (base["models"] or known)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; registered models: {', '.join(known)}")
    if "baseline" in known and "baseline" not in models:
        models = ["baseline"] + models  # the overhead column needs it
    elif "baseline" in models:
        models = ["baseline"] + [m for m in models if m != "baseline"]
    cfg["models"] = models
    backends = _csv(args.backends) if args.backends else (base["backends"] or list(BACKENDS))
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise SystemExit(f"--backends: unknown {bad}; expected some of {', '.join(BACKENDS)}")
    cfg["backends"] = backends
    try:
        bss = [int(b) for b in _csv(args.batch_sizes)] if args.batch_sizes else base["batch_sizes"]
    except ValueError:
        raise SystemExit(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}") from None
    if not bss or min(bss) < 1:
        raise SystemExit(f"--batch-sizes: expected positive integers, got {args.batch_sizes!r}")
    cfg["batch_sizes"] = sorted(set(bss))
    if cfg["backbone"] not in BACKBONES:
        raise SystemExit(f"--backbone: unknown {cfg['backbone']!r}; expected one of {', '.join(BACKBONES)}")
    for key, lo in (("image_size", 32), ("num_classes", 1), ("iters", 1), ("warmup", 0), ("train_batch_size", 1)):
        if cfg[key] < lo:
            raise SystemExit(f"--{key.replace('_', '-')}: expected an integer >= {lo}, got {cfg[key]}")
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {dev}: no CUDA device is available on this machine (use --device cpu)")
    cfg["device"] = dev
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads: expected an integer >= 1, got {args.threads}")
    cfg["threads"] = args.threads
    cfg["isolate"] = (not args.quick) if args.isolate == "auto" else args.isolate == "on"
    cfg["quick"] = bool(args.quick)
    return cfg


def run(args) -> dict:
    from tqdm import tqdm

    cfg = resolve_config(args)
    device = torch.device(cfg["device"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    os.makedirs(args.out, exist_ok=True)
    machine = describe_machine(device)
    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m fastmlr.bench " + " ".join(args.argv),
        "config": cfg,
        "machine": machine,
        "paper_ms_per_image": {**PAPER_MS, **PAPER_ONLY_MS},
        "paper_reference": "SRDL paper table 3: RTX 3070, PyTorch, ResNet-101, 448 x 448, batch 1",
        "cells": [],
    }
    work = tempfile.mkdtemp(prefix="fastmlr-bench-")
    jobs = [(m, b) for m in cfg["models"] for b in cfg["backends"]]
    n_train = 2 * len(cfg["models"]) if args.train else 0
    bar = tqdm(total=len(jobs) + n_train, desc="bench", disable=args.no_progress, dynamic_ncols=True)
    try:
        for model, be in jobs:
            bar.set_postfix_str(f"{model} / {be}")
            spec = {k: cfg[k] for k in ("backbone", "image_size", "num_classes", "iters", "warmup", "batch_sizes",
                                          "device", "threads")}
            spec.update(model=model, backend=be, workdir=work)
            skip = BACKENDS[be].why_not(device)
            if skip:
                cell = run_cell(spec)  # cheap: returns the reason without building anything
            else:
                cell = run_cell_isolated(spec) if cfg["isolate"] else run_cell(spec)
            result["cells"].append(cell)
            bar.update(1)
        if args.train:
            fused, why = fused_backend(device)
            tr = {"batch": cfg["train_batch_size"], "fused_backend": fused, "fused_reason": why, "cells": [],
                  "timed": "forward_train + loss + backward (no optimiser step), train mode"}
            for model in cfg["models"]:
                for ob in ("reference", fused):
                    bar.set_postfix_str(f"train {model} / {ob}")
                    if ob is not None:
                        spec = {k: cfg[k] for k in ("backbone", "image_size", "num_classes", "device",
                                                    "train_batch_size", "threads")}
                        spec.update(model=model, ops_backend=ob, train_iters=max(2, min(cfg["iters"], 10)))
                        tr["cells"].append(run_cell_isolated(spec) if cfg["isolate"] else run_train_cell(spec))
                    bar.update(1)
            result["train"] = tr
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    add_overheads(result)
    md = format_markdown(result)
    from .checkpoint import atomic_write_bytes, atomic_write_json

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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args._cell:
        with open(args._cell) as fh:
            spec = json.load(fh)
        cell = run_train_cell(spec) if "ops_backend" in spec else run_cell(spec)
        with open(args._cell_out, "w") as fh:
            json.dump(cell, fh)
        return 0
    args.argv = argv
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
