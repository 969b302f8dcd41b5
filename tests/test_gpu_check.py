"""`make gpu-check` (tools/gpu_check.py) and the build decisions of setup.py, checked without a GPU.

* Without a usable GPU the check says so in one line, exits non-zero and builds or writes nothing.
* Its report writer turns a result into report.json (the result itself) and report.md.
* setup.py's choice between the CUDA and the CPU-only extension is a pure function of the
  environment, nvcc's version and torch's CUDA version; its arch list ends in +PTX, agrees with the
  Makefile and is accepted by torch (and by nvcc, where one is installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "tools" / "gpu_check.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def gpu_check():
    return _load(GPU_CHECK, "fastmlr_tools_gpu_check")


@pytest.fixture
def setup_py(monkeypatch, tmp_path):
    """setup.py's functions, without building: setuptools.setup is a no-op, and the working directory has
    no csrc/, so its module-level extension lookup finds no sources and probes nothing."""
    import setuptools

    calls = []
    monkeypatch.setattr(setuptools, "setup", lambda **kw: calls.append(kw))
    monkeypatch.chdir(tmp_path)
    mod = _load(ROOT / "setup.py", "fastmlr_setup_py")
    assert len(calls) == 1 and calls[0]["ext_modules"] == []
    return mod


# ---------------------------------------------------------------------------
# gpu-check without a GPU
# ---------------------------------------------------------------------------


def _tree_state():
    so = {p.name: p.stat().st_mtime_ns for p in (ROOT / "fastmlr").glob("_C*.so")}
    return so, (ROOT / "build").exists(), (ROOT / "tools" / "__pycache__").exists(), (ROOT / "runs" / "gpu-check").exists()


def test_gpu_check_without_gpu_says_so_in_one_line_and_touches_nothing(tmp_path):
    out = tmp_path / "gpu-check-out"
    before = _tree_state()
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the test means the same on a GPU host.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("gpu-check: no CUDA GPU here") and "nothing was built or written" in lines[0]
    assert not out.exists()
    assert _tree_state() == before


def test_makefile_gpu_check_target_runs_the_script_with_the_out_variable():
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^GPU_CHECK_OUT \?= runs/gpu-check$", text, re.M)
    m = re.search(r"^gpu-check:.*\n\t(.+)$", text, re.M)
    assert m and m.group(1).split() == ["python3", "tools/gpu_check.py", "--out", '"$(GPU_CHECK_OUT)"']
    if shutil.which("make"):
        dry = subprocess.run(["make", "-n", "gpu-check", "GPU_CHECK_OUT=/tmp/x y"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr
        assert 'python3 tools/gpu_check.py --out "/tmp/x y"' in dry.stdout


# ---------------------------------------------------------------------------
# The report writer and the helpers that read figures
# ---------------------------------------------------------------------------


def _fake_result():
    cells = [
        {"op": "car_spatial_attention", "dtype": "float32", "backend": "triton", "status": "ok",
         "forward": {"median_ms": 0.4321, "min_ms": 0.41}, "forward_backward": {"median_ms": 1.25, "min_ms": 1.2},
         "max_abs_diff": 3.5e-7, "peak_mib": 812.5},
        {"op": "oe_boxes", "dtype": "float16", "backend": "cpp", "status": "ok",
         "forward": {"median_ms": 0.05, "min_ms": 0.04}, "boxes_differing": 0, "peak_mib": 1.0},
        {"op": "second_order_pool", "dtype": "float32", "backend": "triton", "status": "failed",
         "error": "OutOfResources: out of resource: shared memory, Required: 107008, Hardware limit: 101376"},
    ]
    return {
        "started": "2026-12-01 21:00 UTC",
        "host": {"gpu": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "torch": "2.11.0",
                 "torch_cuda": "13.0", "triton": "3.6.0", "python": "3.12.3"},
        "budget_s": 480, "total_s": 301.7,
        "notes": ["no Fashion-MNIST in /usr/share/datasets/fashion-mnist: the mosaics use synthetic striped photos"],
        "steps": [
            {"step": "build", "status": "ok", "seconds": 88.2, "figures": {"extension": "_C.cpython-312.so"}},
            {"step": "pytest-gpu", "status": "failed", "seconds": 41.0, "detail": "exit code 1: 1 failed, 30 passed",
             "figures": {"passed": 30, "failed": 1, "failures": ["tests/test_x.py::test_y - AssertionError"]},
             "tail": "E   AssertionError: boom\nFAILED tests/test_x.py::test_y"},
            {"step": "ops-bench", "status": "failed", "seconds": 55.5, "figures": {"ops": {
                "shapes": {"N": 16, "C": 80, "H": 14, "W": 14, "D": 2048}, "iters": 20, "cells": cells,
                "missing_backends": ["cpp"]}, "cells_ok": 2, "cells_failed": 1}},
            {"step": "bench-compiled", "status": "skipped", "seconds": 0.0, "figures": {},
             "detail": "time budget spent (3 s left)"},
        ],
    }


def test_report_writer_writes_the_result_and_a_readable_summary(gpu_check, tmp_path):
    result = _fake_result()
    json_path, md_path = gpu_check.write_reports(tmp_path / "out", result)
    assert json.loads(json_path.read_text()) == result
    md = md_path.read_text()
    assert "NVIDIA H200 (sm_90, 139.8 GiB), torch 2.11.0 (CUDA 13.0), Triton 3.6.0" in md
    assert "Total 302 s of a 480 s budget." in md
    assert "| build | ok | 88.2 | extension _C.cpython-312.so |" in md
    assert "| pytest-gpu | failed | 41.0 | passed 30, failed 1, failures: 1; exit code 1: 1 failed, 30 passed |" in md
    assert "| bench-compiled | skipped | 0.0 | time budget spent (3 s left) |" in md
    assert "| car_spatial_attention | float32 | triton | 0.4321 | 1.25 | 3.50e-07 | 812.5 | ok |" in md
    assert "| oe_boxes | float16 | cpp | 0.05 |  | 0 boxes differ | 1.0 | ok |" in md
    assert "| second_order_pool | float32 | triton |  |  |  |  | failed: OutOfResources" in md
    assert "Not available on CUDA here: cpp." in md
    assert "synthetic striped photos" in md
    assert "### pytest-gpu" in md and "E   AssertionError: boom" in md
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_pytest_summary_figures(gpu_check):
    step = {"figures": {}}
    text = "....F.s\nFAILED tests/test_a.py::test_b - assert x == y\n1 failed, 5 passed, 1 skipped in 3.21s\n"
    gpu_check._pytest_figures(step, text)
    assert step["figures"] == {"failed": 1, "passed": 5, "skipped": 1,
                               "failures": ["tests/test_a.py::test_b - assert x == y"]}


def test_bench_commands_follow_the_flags_its_help_lists(gpu_check, tmp_path):
    help_text = """usage: python -m fastmlr.bench [-h] [--models MODELS] [--backends BACKENDS]
  --backends BACKENDS   comma-separated, from eager, compile, autocast-fp16, onnxrt-fp32, aoti, trt-fp16
  --device DEVICE       cpu | cuda
  --iters ITERS
  --out OUT
"""
    cmds = dict(gpu_check.bench_cmds(help_text, tmp_path))
    assert cmds["bench-eager"][3:] == ["--device", "cuda", "--models", "srdl", "--iters", "20",
                                       "--backends", "eager,autocast-fp16", "--out", str(tmp_path / "bench-eager")]
    assert cmds["bench-compiled"][-4:] == ["--backends", "compile,aoti", "--out", str(tmp_path / "bench-compiled")]
    # A bench whose CLI names its columns "runtimes" gets that flag; one without either flag gets no run.
    renamed = help_text.replace("--backends BACKENDS", "--runtimes RUNTIMES")
    assert dict(gpu_check.bench_cmds(renamed, tmp_path))["bench-eager"][-4:-2] == ["--runtimes", "eager,autocast-fp16"]
    assert gpu_check.bench_cmds("usage: bench [-h]", tmp_path) == []


def test_synthetic_fashion_mnist_reads_back_through_the_mosaics_loader(gpu_check, tmp_path):
    from fastmlr.data import mosaics

    gpu_check.write_synthetic_fmnist(tmp_path, n_train=50, n_val=20)
    images, labels = mosaics.load_fashion_mnist(str(tmp_path), "train")
    assert images.shape == (50, 28, 28) and images.dtype.name == "uint8"
    assert labels.shape == (50,) and 0 <= labels.min() and labels.max() < len(mosaics.FASHION_CLASSES)
    images, _ = mosaics.load_fashion_mnist(str(tmp_path), "val")
    assert images.shape == (20, 28, 28)
    assert images.std() > 10  # patterns, not a blank page


# ---------------------------------------------------------------------------
# setup.py: CUDA or CPU-only, and the arch list
# ---------------------------------------------------------------------------


def test_build_decision_matches_cuda_majors(setup_py):
    decide = setup_py.cuda_build_decision
    assert decide(None, "/cuda", "13.0", "13.0") == (True, None)
    assert decide(None, "/cuda", "13.2", "13.0") == (True, None)  # minor versions may differ (torch warns)
    assert decide(None, "/cuda", None, "13.0") == (True, None)  # unreadable version: torch checks it
    assert decide("0", "/cuda", "13.0", "13.0") == (False, None)
    use, why = decide(None, "/usr/local/cuda-12.4", "12.4", "13.0")
    assert use is False and "\n" not in why
    for part in ("CUDA 12.4", "CUDA 13.0", "/usr/local/cuda-12.4", "CPU-only", "CUDA_HOME", "FASTMLR_WITH_CUDA=1",
                 "FASTMLR_WITH_CUDA=0"):
        assert part in why, (part, why)
    assert decide("1", "/usr/local/cuda-12.4", "12.4", "13.0") == (True, None)  # the override


def test_build_decision_without_toolkit_or_cuda_torch(setup_py):
    decide = setup_py.cuda_build_decision
    use, why = decide(None, None, None, "13.0")
    assert use is False and "no CUDA toolkit" in why and "CUDA_HOME" in why and "\n" not in why
    use, why = decide(None, "/cuda", "13.0", None)
    assert use is False and "torch has no CUDA" in why and "FASTMLR_WITH_CUDA=1" in why
    with pytest.raises(SystemExit, match="FASTMLR_WITH_CUDA=1 but no CUDA toolkit"):
        decide("1", None, None, "13.0")


def test_nvcc_version_is_read_from_the_toolkit(setup_py, tmp_path):
    fake = tmp_path / "toolkit"
    (fake / "bin").mkdir(parents=True)
    nvcc = fake / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    "echo 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    assert setup_py.nvcc_version(str(fake)) == "12.4"
    assert setup_py.nvcc_version(str(tmp_path / "nowhere")) is None


def test_arch_list_ends_in_ptx_and_matches_the_makefile(setup_py):
    arch = setup_py.DEFAULT_CUDA_ARCH_LIST
    assert arch.endswith("+PTX") and arch.split(";")[-1].replace("+PTX", "") == max(
        arch.replace("+PTX", "").split(";"), key=float)
    m = re.search(r"^export TORCH_CUDA_ARCH_LIST \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m and m.group(1).strip() == arch


def test_torch_accepts_the_arch_list(setup_py, monkeypatch):
    cpp_extension = pytest.importorskip("torch.utils.cpp_extension")
    if not hasattr(cpp_extension, "_get_cuda_arch_flags"):
        pytest.skip("this torch has no _get_cuda_arch_flags")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", setup_py.DEFAULT_CUDA_ARCH_LIST)
    flags = cpp_extension._get_cuda_arch_flags()
    for cap in ("80", "86", "89", "90"):
        assert f"-gencode=arch=compute_{cap},code=sm_{cap}" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # the PTX newer GPUs compile at load


def test_nvcc_lists_every_arch(setup_py):
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("no nvcc on PATH")
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout.split()
    for item in setup_py.DEFAULT_CUDA_ARCH_LIST.split(";"):
        assert "compute_" + item.replace("+PTX", "").replace(".", "") in listed


def test_nvcc_flags_keep_ieee_accuracy(setup_py):
    flags = setup_py.NVCC_FLAGS
    assert not [f for f in flags if "fast_math" in f.replace("-", "_") or f.startswith("-ftz=true")]
    for f in ("-ftz=false", "-prec-div=true", "-prec-sqrt=true"):
        assert f in flags


def test_train_figures_come_from_the_last_epoch_of_log_jsonl(gpu_check, tmp_path):
    rec = {"epoch": 1, "train_loss": 0.71234, "train_images": 1280, "train_images_per_s": 512.345,
           "val": {"mAP": 0.4567}}
    (tmp_path / "log.jsonl").write_text(json.dumps(dict(rec, train_loss=9.0)) + "\n" + json.dumps(rec) + "\n")
    step = {"figures": {}}
    gpu_check._train_figures(tmp_path)(step, "")
    assert step["figures"] == {"train_loss": 0.7123, "train_images_per_s": 512.3, "train_images": 1280,
                               "val_mAP": 45.67}
