#!/usr/bin/env python3
"""`make gpu-check`: everything fastmlr does on a GPU, in one command, within about 8 minutes.

Meant for a GPU host that brings its own python3, torch and Triton and has no network: nothing is
installed or downloaded, no virtualenv is used. In order, each step under a time limit:

1. build ``fastmlr._C`` in place against the torch found (``python3 setup.py build_ext --inplace``,
   CUDA_HOME from nvcc, TORCH_CUDA_ARCH_LIST = this GPU's capability only, MAX_JOBS=16);
2. ``python3 -m pytest -m gpu tests``;
3. SRDL and AAMN, a few dozen AMP steps each on CUDA (``python3 -m fastmlr.train``, built-in mosaics,
   resnet18 at a small size);
4. the ops at the paper's shapes (N=16, C=80, 14 x 14, D=2048): every backend among reference, cpp and
   triton, fp32 and fp16, forward and forward+backward, timed with CUDA events (written here, not in
   the bench package, so that it depends on nothing but fastmlr.ops);
5. the bench's model columns on CUDA (eager fp32, autocast fp16, torch.compile, AOTInductor) through
   ``python3 -m fastmlr.bench`` with the flags its --help lists; its failure is recorded, not fatal.

Each step is recorded as ok / failed / skipped with its seconds, figures and log
(OUT/logs/<step>.log); OUT/report.json and OUT/report.md hold the whole. Without a usable CUDA GPU
it prints one line saying so and exits 2 before building or writing anything.

Usage: python3 tools/gpu_check.py [--out runs/gpu-check] [--budget 480]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # a run without a GPU must leave the tree as it found it

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable or "python3"

# Seconds each step may take at most (the whole is also held to --budget); expected on an H100/H200
# with 16 cores in the comments.
LIMITS = {
    "build": 240,  # ~90 s: 3 C++ and 2 CUDA files, one arch, 16 jobs
    "pytest-gpu": 120,  # ~40 s
    "train-srdl": 75,  # ~35 s: start-up, mosaics, 40 steps, one validation pass
    "train-aamn": 75,  # ~35 s
    "ops-bench": 120,  # ~60 s: Triton's first compiles and autotuning dominate
    "bench-eager": 90,  # ~40 s: eager fp32 and autocast fp16
    "bench-compiled": 180,  # ~150 s: torch.compile and AOTInductor compile the model first
}
DEFAULT_BUDGET = 480


# ---------------------------------------------------------------------------
# The GPU probe (nothing may be written before it passes)
# ---------------------------------------------------------------------------


def probe_gpu() -> tuple[dict | None, str]:
    """(facts about GPU 0, "") when torch sees a CUDA GPU, else (None, why not)."""
    import warnings

    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means: no torch to run anything with
        return None, f"{PY} cannot import torch ({type(e).__name__}: {e})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when the driver is missing; the line below says it
        available = torch.cuda.is_available()
    if not available:
        why = "no CUDA driver or device" if torch.version.cuda else "this torch is built without CUDA"
        return None, f"torch {torch.__version__} sees no CUDA GPU ({why})"
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{major}.{minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "python_executable": PY,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"unavailable ({type(e).__name__})"
    return info, ""


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


class Runner:
    """Runs the steps in order under one time budget, recording each."""

    def __init__(self, out: Path, budget: float, env: dict):
        self.out, self.env = out, env
        self.deadline = time.monotonic() + budget
        self.steps: list[dict] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], figures=None, env: dict | None = None) -> dict:
        """Run ``cmd`` (in the repository) with the step's limit; ``figures(step, log_text)`` adds figures."""
        limit = min(LIMITS[name], self.left())
        step = {"step": name, "command": " ".join(cmd), "status": "skipped", "seconds": 0.0, "figures": {},
                "limit_s": round(max(limit, 0), 1), "log": f"logs/{name}.log"}
        self.steps.append(step)
        if limit < 10:
            step["detail"] = f"time budget spent ({max(self.left(), 0):.0f} s left)"
            return step
        log_path = self.out / step["log"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=limit)
            text, rc = proc.stdout.decode(errors="replace"), proc.returncode
        except subprocess.TimeoutExpired as e:
            text, rc = (e.stdout or b"").decode(errors="replace"), None
        step["seconds"] = round(time.monotonic() - t0, 1)
        log_path.write_text(text)
        if rc is None:
            step.update(status="failed", detail=f"timed out after {limit:.0f} s")
        elif rc != 0:
            step.update(status="failed", detail=f"exit code {rc}: {_last_line(text)}")
        else:
            step["status"] = "ok"
        if figures is not None:
            try:
                figures(step, text)
            except Exception as e:  # noqa: BLE001 - a figure that cannot be read is reported, not fatal
                step["figures"]["figures_error"] = f"{type(e).__name__}: {e}"
        step["tail"] = text[-2000:] if step["status"] == "failed" else ""
        return step


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def find_cuda_home() -> str | None:
    """The toolkit root whose bin/ holds the real nvcc (the nvcc on PATH may be a wrapper)."""
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return home
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        err = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        err = ""
    for line in err.splitlines():
        if "_HERE_=" in line:
            return os.path.dirname(line.split("_HERE_=", 1)[1].strip())
    return str(Path(nvcc).resolve().parent.parent)


def build_env(info: dict) -> dict:
    env = dict(os.environ)
    env.pop("FASTMLR_BACKEND", None)
    cuda_home = find_cuda_home()
    if cuda_home:
        env["CUDA_HOME"] = cuda_home
    env["TORCH_CUDA_ARCH_LIST"] = info["capability"]
    env["MAX_JOBS"] = str(min(16, os.cpu_count() or 1))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "4")
    return env


def _build_figures(step: dict, text: str) -> None:
    so = sorted(p.name for p in (ROOT / "fastmlr").glob("_C*.so"))
    step["figures"]["extension"] = so[0] if so else None
    m = re.search(r"^fastmlr: .*$", text, re.M)  # setup.py's one line when it builds CPU-only
    if m:
        step["figures"]["setup_says"] = m.group(0)


def _backends_probe(runner: Runner) -> dict:
    code = ("import json, fastmlr.ops as o; from fastmlr.ops import _dispatch as d; "
            "print(json.dumps({'cuda': o.available_backends('cuda'), 'unavailable': getattr(d, '_UNAVAILABLE', {})}, "
            "default=str))")
    try:
        out = subprocess.run([PY, "-c", code], cwd=ROOT, env=runner.env, capture_output=True, text=True,
                             timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def _pytest_figures(step: dict, text: str) -> None:
    summary = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if summary:
        for n, what in _PYTEST_COUNT.findall(summary[-1]):
            step["figures"][what.rstrip("s") if what.startswith("error") else what] = int(n)
    step["figures"]["failures"] = [ln[7:] for ln in text.splitlines() if ln.startswith("FAILED ")][:20]


def _train_figures(out_dir: Path):
    def read(step: dict, text: str) -> None:
        log = out_dir / "log.jsonl"
        if log.exists():
            rec = json.loads(log.read_text().strip().splitlines()[-1])
            step["figures"].update(train_loss=round(rec["train_loss"], 4),
                                   train_images_per_s=round(rec["train_images_per_s"], 1),
                                   train_images=rec["train_images"], val_mAP=round(100 * rec["val"]["mAP"], 2))
    return read


def write_synthetic_fmnist(folder: Path, n_train: int = 2000, n_val: int = 500, seed: int = 0) -> None:
    """Fashion-MNIST-format idx files (28 x 28 uint8, 10 classes) of simple per-class patterns.

    For GPU hosts without Debian's dataset-fashion-mnist: the mosaics then tile these instead of the
    photos. Each class is a different stripe frequency and orientation plus noise, so the models
    still have something to learn.
    """
    import gzip

    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        freq = 0.25 + 0.15 * (labels % 5)[:, None, None]
        along = np.where((labels < 5)[:, None, None], xx[None], yy[None])
        images = 127.5 * (1 + np.sin(freq * along)) + rng.normal(0, 20, (n, 28, 28))
        images = np.clip(images, 0, 255).astype(np.uint8)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (folder / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(header + arr.tobytes(), compresslevel=1))


def mosaics_env(runner: Runner) -> tuple[dict, str | None]:
    """Env for training on the mosaics: the real Fashion-MNIST if present, else synthetic idx files."""
    env = dict(runner.env)
    folder = env.get("FASTMLR_FMNIST_DIR") or "/usr/share/datasets/fashion-mnist"
    if (Path(folder) / "train-images-idx3-ubyte.gz").exists() or (Path(folder) / "train-images-idx3-ubyte").exists():
        return env, None
    synth = runner.out / "fmnist-synthetic"
    write_synthetic_fmnist(synth)
    env["FASTMLR_FMNIST_DIR"] = str(synth)
    note = f"no Fashion-MNIST in {folder}: the mosaics use synthetic striped photos ({synth})"
    print(f"gpu-check: {note}", flush=True)
    return env, note


def train_cmd(model: str, out_dir: Path) -> list[str]:
    return [PY, "-m", "fastmlr.train", "--model", model, "--backbone", "resnet18", "--weights", "none",
            "--data", "mosaics", "--image-size", "128", "--train-size", "1280", "--val-size", "256",
            "--batch-size", "32", "--epochs", "1", "--max-steps", "40", "--amp", "on", "--device", "cuda",
            "--workers", "4", "--out", str(out_dir), "--no-progress"]


# The bench's model columns wanted on CUDA, by the names its --help may use.
_EAGER_RUNTIMES = ("eager", "eager-fp32", "autocast-fp16", "eager-fp16")
_COMPILED_RUNTIMES = ("compile", "torch-compile", "aoti", "aot-inductor")


def bench_cmds(help_text: str, out: Path) -> list[tuple[str, list[str]]]:
    """The bench invocations for the eager and the compiled columns, from the flags --help lists."""
    def has(flag: str) -> bool:
        return re.search(rf"(^|[\s\[]){re.escape(flag)}[\s=,\]]", help_text) is not None

    words = set(re.findall(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", help_text))
    runtime_flag = next((f for f in ("--runtimes", "--backends") if has(f)), None)
    base = [PY, "-m", "fastmlr.bench"]
    for flag, value in (("--device", "cuda"), ("--models", "srdl"), ("--backbone", "resnet101"),
                        ("--image-size", "448"), ("--batch-sizes", "1,16"), ("--iters", "20"),
                        ("--warmup", "3"), ("--isolate", "off"), ("--no-progress", None)):
        if has(flag):
            base += [flag] if value is None else [flag, value]
    cmds = []
    for name, wanted in (("bench-eager", _EAGER_RUNTIMES), ("bench-compiled", _COMPILED_RUNTIMES)):
        chosen = [r for r in wanted if r in words]
        if runtime_flag is None or not chosen:
            continue
        cmd = base + [runtime_flag, ",".join(chosen)]
        if has("--out"):
            cmd += ["--out", str(out / name)]
        cmds.append((name, cmd))
    return cmds


def _bench_figures(out_dir: Path):
    def read(step: dict, text: str) -> None:
        for name in ("bench.json", "results.json"):
            if (out_dir / name).exists():
                step["figures"]["bench_json"] = json.loads((out_dir / name).read_text())
                break
        if (out_dir / "bench.md").exists():
            step["markdown"] = (out_dir / "bench.md").read_text()
    return read


# ---------------------------------------------------------------------------
# The ops micro-benchmark (runs in its own process: python3 tools/gpu_check.py --ops-bench FILE)
# ---------------------------------------------------------------------------

def _time_ms(fn, iters: int, warmup: int) -> dict:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"median_ms": round(times[len(times) // 2], 4), "min_ms": round(times[0], 4)}


def ops_bench(out_file: Path, iters: int = 20, warmup: int = 3) -> None:
    import torch

    from fastmlr import ops
    from fastmlr.files import atomic_write_json

    result = {"shapes": {}, "iters": iters, "warmup": warmup, "backends": ops.available_backends("cuda"),
              "cells": []}
    names = [b for b in ("reference", "cpp", "triton") if b in result["backends"]]
    result["missing_backends"] = [b for b in ("reference", "cpp", "triton") if b not in names]
    for spec in ops.specs():  # each op at its paper's shapes (fastmlr/ops/opspec.py, OpSpec.example_inputs)
        op = spec.name
        for dtype in (torch.float32, torch.float16):
            inputs = list(spec.example_inputs("cuda", dtype, size="paper"))
            result["shapes"][op] = [list(a.shape) for a in inputs if isinstance(a, torch.Tensor)]
            op_fn = spec.function

            def fn(*args, backend, op_fn=op_fn):
                with ops.use_backend(backend):
                    return op_fn(*args)
            ref_out = fn(*inputs, backend="reference") if "reference" in names else None
            for backend in names:
                cell = {"op": op, "dtype": str(dtype).replace("torch.", ""), "backend": backend}
                result["cells"].append(cell)
                try:
                    torch.cuda.reset_peak_memory_stats()
                    out = fn(*inputs, backend=backend)
                    if ref_out is not None:
                        if out.dtype == torch.int64:
                            cell["boxes_differing"] = int((out != ref_out).any(-1).sum())
                        else:
                            cell["max_abs_diff"] = float((out.double() - ref_out.double()).abs().max())
                    del out
                    cell["forward"] = _time_ms(lambda xs=inputs, b=backend: fn(*xs, backend=b), iters, warmup)
                    if spec.differentiable:
                        leaves = [t.detach().clone().requires_grad_(t.is_floating_point())
                                  if isinstance(t, torch.Tensor) else t for t in inputs]
                        grad = torch.ones_like(fn(*leaves, backend=backend))

                        def fwd_bwd():
                            for t in leaves:
                                if isinstance(t, torch.Tensor):
                                    t.grad = None
                            fn(*leaves, backend=backend).backward(grad)
                        cell["forward_backward"] = _time_ms(fwd_bwd, iters, warmup)
                        del leaves, grad
                    cell["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    cell["status"] = "ok"
                except Exception as e:  # noqa: BLE001 - one cell's failure is a result
                    # A backend that does not implement the op (or dtype) refuses it: not a failure.
                    cell["status"] = "unsupported" if isinstance(e, ops.BackendError) else "failed"
                    cell["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                torch.cuda.empty_cache()
                atomic_write_json(str(out_file), result)  # kept so far, should the step time out
            del inputs, ref_out
    atomic_write_json(str(out_file), result)


def _ops_figures(path: Path):
    def read(step: dict, text: str) -> None:
        if path.exists():
            data = json.loads(path.read_text())
            step["figures"]["ops"] = data
            cells = data.get("cells", [])
            step["figures"]["cells_ok"] = sum(c.get("status") == "ok" for c in cells)
            step["figures"]["cells_failed"] = sum(c.get("status") == "failed" for c in cells)
            if step["status"] == "ok" and step["figures"]["cells_failed"]:
                step.update(status="failed", detail=f"{step['figures']['cells_failed']} op cells failed")
    return read


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def _fmt_figures(fig: dict) -> str:
    parts = []
    for k, v in fig.items():
        if isinstance(v, (dict, list)) and k != "failures":
            continue
        if k == "failures":
            if v:
                parts.append(f"failures: {len(v)}")
            continue
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def render_markdown(result: dict) -> str:
    host = result.get("host", {})
    lines = [
        "# fastmlr gpu-check",
        "",
        f"{result.get('started', '')}: {host.get('gpu', '?')} (sm_{host.get('capability', '?').replace('.', '')}, "
        f"{host.get('memory_gib', '?')} GiB), torch {host.get('torch', '?')} (CUDA {host.get('torch_cuda', '?')}), "
        f"Triton {host.get('triton', '?')}, Python {host.get('python', '?')}.",
        f"Total {result.get('total_s', 0):.0f} s of a {result.get('budget_s', 0):.0f} s budget.",
        "",
    ]
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    if result.get("notes"):
        lines.append("")
    lines += ["| step | status | seconds | figures / detail |", "|---|---|---|---|"]
    for s in result["steps"]:
        text = "; ".join(x for x in (_fmt_figures(s.get("figures", {})), s.get("detail", "")) if x)
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {text.replace('|', '/')} |")
    ops_step = next((s for s in result["steps"] if s["step"] == "ops-bench" and "ops" in s.get("figures", {})), None)
    if ops_step:
        data = ops_step["figures"]["ops"]
        sh = data.get("shapes", {})
        lines += ["", f"## Ops at N={sh.get('N')}, C={sh.get('C')}, {sh.get('H')}x{sh.get('W')}, D={sh.get('D')} "
                  f"(median of {data.get('iters')} CUDA-event timings, ms)", "",
                  "| op | dtype | backend | forward | forward+backward | vs reference | peak MiB | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in data.get("cells", []):
            diff = (f"{c['boxes_differing']} boxes differ" if "boxes_differing" in c
                    else f"{c['max_abs_diff']:.2e}" if "max_abs_diff" in c else "")
            fwd = c.get("forward", {}).get("median_ms", "")
            fb = c.get("forward_backward", {}).get("median_ms", "")
            status = c.get("status", "") + (f": {c['error']}" if c.get("error") else "")
            lines.append(f"| {c['op']} | {c['dtype']} | {c['backend']} | {fwd} | {fb} | {diff} | "
                         f"{c.get('peak_mib', '')} | {status.replace('|', '/')} |")
        if data.get("missing_backends"):
            lines.append(f"\nNot available on CUDA here: {', '.join(data['missing_backends'])}.")
    for s in result["steps"]:
        if s.get("markdown"):
            lines += ["", f"## {s['step']} (python3 -m fastmlr.bench)", "", s["markdown"].strip()]
    failed = [s for s in result["steps"] if s["status"] == "failed" and s.get("tail")]
    if failed:
        lines += ["", "## Failed steps: end of their logs"]
        for s in failed:
            lines += ["", f"### {s['step']}", "", "```", s["tail"].strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, result: dict) -> tuple[Path, Path]:
    """OUT/report.json and OUT/report.md, each written atomically."""
    sys.path.insert(0, str(ROOT))
    from fastmlr.files import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_json(str(json_path), result)
    md = render_markdown(result).encode()
    atomic_write_bytes(str(md_path), lambda fh: fh.write(md))
    return json_path, md_path


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def run_all(out: Path, budget: float, info: dict) -> dict:
    t_start = time.monotonic()
    runner = Runner(out, budget, build_env(info))
    result = {"started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": info,
              "budget_s": budget, "notes": [], "steps": runner.steps}
    info["cuda_home"] = runner.env.get("CUDA_HOME")
    info["torch_cuda_arch_list"] = runner.env["TORCH_CUDA_ARCH_LIST"]

    def save():
        result["total_s"] = round(time.monotonic() - t_start, 1)
        write_reports(out, result)

    runner.run("build", [PY, "setup.py", "build_ext", "--inplace"], figures=_build_figures)
    result["backends"] = _backends_probe(runner)
    save()
    runner.run("pytest-gpu", [PY, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider"],
               figures=_pytest_figures)
    save()
    env, note = mosaics_env(runner)
    if note:
        result["notes"].append(note)
    for model in ("srdl", "aamn"):
        d = out / f"train-{model}"
        shutil.rmtree(d, ignore_errors=True)
        runner.run(f"train-{model}", train_cmd(model, d), figures=_train_figures(d), env=env)
        save()
    ops_file = out / "ops-bench.json"
    runner.run("ops-bench", [PY, str(Path(__file__).resolve()), "--ops-bench", str(ops_file)],
               figures=_ops_figures(ops_file))
    save()
    try:
        help_text = subprocess.run([PY, "-m", "fastmlr.bench", "--help"], cwd=ROOT, env=runner.env,
                                   capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as e:
        help_text = ""
        result["notes"].append(f"python3 -m fastmlr.bench --help failed: {e}")
    cmds = bench_cmds(help_text, out)
    if not cmds:
        result["notes"].append("fastmlr.bench's --help lists no runtime flag or none of "
                               f"{_EAGER_RUNTIMES + _COMPILED_RUNTIMES}: bench steps not run")
    for name, cmd in cmds:
        runner.run(name, cmd, figures=_bench_figures(out / name))
        save()
    save()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu-check", help="folder for report.json, report.md, logs/")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all steps together")
    p.add_argument("--ops-bench", metavar="FILE", help=argparse.SUPPRESS)  # the step's own process
    args = p.parse_args(argv)
    if args.ops_bench:
        sys.path.insert(0, str(ROOT))
        ops_bench(Path(args.ops_bench))
        return 0
    info, why = probe_gpu()
    if info is None:
        print(f"gpu-check: no CUDA GPU here: {why}; nothing was built or written.")
        return 2
    out = Path(args.out)
    out = out if out.is_absolute() else Path.cwd() / out
    result = run_all(out, args.budget, info)
    failed = [s["step"] for s in result["steps"] if s["status"] != "ok"]
    print(f"gpu-check: {len(result['steps']) - len(failed)}/{len(result['steps'])} steps ok"
          + (f" (not ok: {', '.join(failed)})" if failed else "") + f"; report: {out / 'report.md'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
