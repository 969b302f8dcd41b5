"""What gpu-check runs, in order: each step's command and environment, and how its figures are read.

1. ``build``: fastmlr._C in place against the host's torch, for this GPU's capability only;
2. ``pytest-gpu``: a chosen GPU smoke selection (PYTEST_SELECTION: training, one AMP training per model
   family, the C++ CUDA kernels in half precision, export: the TensorRT engine and an AOTInductor package
   compiled for CUDA), not every gpu test;
3. ``train-srdl``, ``train-aamn``: 40 AMP steps each on the built-in mosaics;
4. ``ops``: every declared op x fp32/fp16 x CUDA backend at the paper's shapes (fastmlr.gpucheck.opsbench);
5. ``bench-eager``, ``bench-compile``, ``bench-aoti``: the bench's model columns on CUDA (eager fp32 and
   autocast fp16; torch.compile; AOTInductor compiled for CUDA), runtimes named from its registry.

Every step that trains or tests sees FASTMLR_FMNIST_DIR: the real Fashion-MNIST where the host has it,
else the synthetic photos written into OUT (fastmlr.gpucheck.synthetic).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from ..toolkit import usable_cuda_home
from .synthetic import write_synthetic_fmnist

ROOT = Path(__file__).resolve().parents[2]
REAL_FMNIST = "/usr/share/datasets/fashion-mnist"

PYTEST_SELECTION = (
    "tests/test_train.py",
    "tests/test_autocast.py::test_every_model_trains_under_amp[srdl-cuda]",
    "tests/test_autocast.py::test_every_model_trains_under_amp[aamn-cuda]",
    "tests/test_autocast.py::test_every_model_trains_under_amp[mmdsr-cuda]",
    "tests/test_autocast.py::test_every_model_trains_under_amp[mlgcn-cuda]",
    "tests/test_ops_cpp.py",
    "tests/test_export.py::test_trt_engine_on_gpu",
    "tests/test_aoti_device.py::test_cuda_package_matches_pytorch_on_the_gpu",
)

# The bench steps: step -> the bench's runtimes (names in fastmlr.bench.runtimes.RUNTIMES).
BENCH_STEPS = {"bench-eager": ("eager", "autocast-fp16"), "bench-compile": ("compile",), "bench-aoti": ("aoti",)}
BENCH_ARGS = ("--device", "cuda", "--models", "srdl", "--backbone", "resnet101", "--image-size", "448",
              "--batch-sizes", "1,16", "--iters", "20", "--warmup", "3", "--isolate", "off", "--no-progress")


def build_env(capability: str, python: str = sys.executable) -> dict:
    """The steps' environment: the toolkit, this GPU's arch only, the host's cores, the tree on PYTHONPATH."""
    env = dict(os.environ)
    env.pop("FASTMLR_BACKEND", None)
    cuda_home = usable_cuda_home(env)
    if cuda_home:
        env["CUDA_HOME"] = cuda_home
    env["TORCH_CUDA_ARCH_LIST"] = capability
    env["MAX_JOBS"] = str(min(16, os.cpu_count() or 1))
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "4")
    return env


def fmnist_for_steps(env: dict, out: Path) -> str | None:
    """Points ``env``'s FASTMLR_FMNIST_DIR at Fashion-MNIST: the real one if present, else synthetic photos
    written into ``out``; returns a note when it had to write them."""
    folder = env.get("FASTMLR_FMNIST_DIR") or REAL_FMNIST
    if any((Path(folder) / f"train-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
        env["FASTMLR_FMNIST_DIR"] = folder
        return None
    synth = out / "fmnist-synthetic"
    write_synthetic_fmnist(synth)
    env["FASTMLR_FMNIST_DIR"] = str(synth)
    return f"no Fashion-MNIST in {folder}: training and tests use synthetic striped photos ({synth})"


def build_cmd(python: str = sys.executable) -> list[str]:
    return [python, "setup.py", "build_ext", "--inplace"]


def pytest_cmd(python: str = sys.executable) -> list[str]:
    return [python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", *PYTEST_SELECTION]


def train_cmd(model: str, out_dir: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastmlr.train", "--model", model, "--backbone", "resnet18", "--weights", "none",
            "--data", "mosaics", "--image-size", "128", "--train-size", "1280", "--val-size", "256",
            "--batch-size", "32", "--epochs", "1", "--max-steps", "40", "--amp", "on", "--device", "cuda",
            "--workers", "4", "--out", str(out_dir), "--no-progress"]


def ops_cmd(out_file: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastmlr.gpucheck.opsbench", str(out_file), "--device", "cuda", "--size", "paper"]


def bench_cmd(step: str, out: Path, python: str = sys.executable) -> list[str]:
    return [python, "-m", "fastmlr.bench", *BENCH_ARGS, "--runtimes", ",".join(BENCH_STEPS[step]),
            "--out", str(out / step)]


# -- figures: what each step's output says --------------------------------------------------------------


def build_figures(step: dict, text: str) -> None:
    so = sorted(p.name for p in (ROOT / "fastmlr").glob("_C*.so"))
    step["figures"]["extension"] = so[0] if so else None
    m = re.search(r"^fastmlr: .*$", text, re.M)  # setup.py's one line when it builds CPU-only
    if m:
        step["figures"]["setup_says"] = m.group(0)


_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def pytest_figures(step: dict, text: str) -> None:
    summary = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if summary:
        for n, what in _PYTEST_COUNT.findall(summary[-1]):
            step["figures"][what.rstrip("s") if what.startswith("error") else what] = int(n)
    step["figures"]["failures"] = [ln[7:] for ln in text.splitlines() if ln.startswith("FAILED ")][:20]
    # -rs: "SKIPPED [2] tests/test_x.py:12: needs TensorRT"
    step["figures"]["skipped_reasons"] = [m.group(1) for m in re.finditer(r"^SKIPPED (.+)$", text, re.M)][:20]


def train_figures(out_dir: Path):
    def read(step: dict, text: str) -> None:
        log = out_dir / "log.jsonl"
        if log.exists():
            rec = json.loads(log.read_text().strip().splitlines()[-1])
            step["figures"].update(train_loss=round(rec["train_loss"], 4),
                                   train_images_per_s=round(rec["train_images_per_s"], 1),
                                   train_images=rec["train_images"], val_mAP=round(100 * rec["val"]["mAP"], 2))
    return read


def ops_figures(path: Path):
    def read(step: dict, text: str) -> None:
        if path.exists():
            data = json.loads(path.read_text())
            step["figures"]["ops"] = data
            cells = data.get("cells", [])
            for status in ("ok", "unsupported", "failed"):
                step["figures"][f"cells_{status}"] = sum(c.get("status") == status for c in cells)
            if step["status"] == "ok" and step["figures"]["cells_failed"]:
                step.update(status="failed", detail=f"{step['figures']['cells_failed']} op cells failed")
    return read


def bench_figures(out_dir: Path):
    def read(step: dict, text: str) -> None:
        if (out_dir / "bench.json").exists():
            step["figures"]["bench_json"] = json.loads((out_dir / "bench.json").read_text())
        if (out_dir / "bench.md").exists():
            step["markdown"] = (out_dir / "bench.md").read_text()
    return read


__all__ = ["PYTEST_SELECTION", "BENCH_STEPS", "build_env", "fmnist_for_steps", "build_cmd", "pytest_cmd",
           "train_cmd", "ops_cmd", "bench_cmd", "build_figures", "pytest_figures", "train_figures", "ops_figures",
           "bench_figures"]
