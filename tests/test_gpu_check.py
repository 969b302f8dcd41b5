"""`make gpu-check` (tools/gpu_check.py, fastmlr/gpucheck/) and the build decisions of setup.py, checked without a GPU.

* Without a usable GPU the check says so in one line, exits non-zero and builds or writes nothing.
* Its plan: the step limits add up to the budget with a margin; a step past its limit ends with its whole
  process group; the pytest selection names tests that exist; the bench steps' arguments are ones the
  bench's own parser accepts, with runtimes from its registry; training and tests see FASTMLR_FMNIST_DIR.
* Its report writer turns a result into report.json (the result itself) and report.md.
* The CUDA toolkit lookup is one function (fastmlr/toolkit.py) that setup.py and the Makefile use.
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
import time
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
    """The gpu-check parts, as one namespace."""
    from types import SimpleNamespace

    from fastmlr.gpucheck import cli, plan, report, runner, synthetic

    return SimpleNamespace(cli=cli, plan=plan, report=report, runner=runner, synthetic=synthetic)


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
         "forward": {"median_ms": 0.05, "min_ms": 0.04}, "elements_differing": 0, "peak_mib": 1.0},
        {"op": "second_order_pool", "dtype": "float32", "backend": "triton", "status": "failed",
         "error": "OutOfResources: out of resource: shared memory, Required: 107008, Hardware limit: 101376"},
    ]
    return {
        "started": "2026-12-01 21:00 UTC",
        "host": {"gpu": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "torch": "2.11.0",
                 "torch_cuda": "13.0", "triton": "3.6.0", "python": "3.12.3"},
        "budget_s": 540, "total_s": 301.7, "expected_s": {"build": 60},
        "notes": ["no Fashion-MNIST in /usr/share/datasets/fashion-mnist: training and tests use synthetic photos"],
        "steps": [
            {"step": "build", "status": "ok", "seconds": 88.2, "limit_s": 110,
             "figures": {"extension": "_C.cpython-312.so"}},
            {"step": "pytest-gpu", "status": "failed", "seconds": 41.0, "detail": "exit code 1: 1 failed, 30 passed",
             "figures": {"passed": 30, "failed": 1, "failures": ["tests/test_x.py::test_y - AssertionError"],
                         "skipped_reasons": ["[1] tests/test_export.py:99: needs TensorRT"]},
             "tail": "E   AssertionError: boom\nFAILED tests/test_x.py::test_y"},
            {"step": "ops", "status": "failed", "seconds": 55.5, "figures": {"ops": {
                "device": "cuda", "size": "paper", "iters": 20, "cells": cells,
                "shapes": {"car_pool": [[16, 2048, 196], [16, 80, 196], [16, 80, 2048]]}},
                "cells_ok": 2, "cells_failed": 1}},
            {"step": "bench-aoti", "status": "skipped", "seconds": 0.0, "limit_s": 60, "figures": {},
             "detail": "time budget spent (3 s left)"},
        ],
    }


def test_report_writer_writes_the_result_and_a_readable_summary(gpu_check, tmp_path):
    result = _fake_result()
    json_path, md_path = gpu_check.report.write_reports(tmp_path / "out", result)
    assert json.loads(json_path.read_text()) == result
    md = md_path.read_text()
    assert "NVIDIA H200 (sm_90, 139.8 GiB), torch 2.11.0 (CUDA 13.0), Triton 3.6.0" in md
    assert "Total 302 s of a 540 s budget." in md
    assert "| build | ok | 88.2 | 110 | 60 | extension _C.cpython-312.so |" in md
    assert "| pytest-gpu | failed | 41.0 |  |  | passed 30, failed 1, failures: 1; exit code 1: 1 failed, 30 passed |" in md
    assert "| bench-aoti | skipped | 0.0 | 60 |  | time budget spent (3 s left) |" in md
    assert "- pytest-gpu: [1] tests/test_export.py:99: needs TensorRT" in md
    assert "| car_spatial_attention | float32 | triton | 0.4321 | 1.25 | 3.50e-07 | 812.5 | ok |" in md
    assert "| oe_boxes | float16 | cpp | 0.05 |  | 0 elements differ | 1.0 | ok |" in md
    assert "| second_order_pool | float32 | triton |  |  |  |  | failed: OutOfResources" in md
    assert "car_pool: inputs 16x2048x196, 16x80x196, 16x80x2048" in md
    assert "synthetic photos" in md
    assert "### pytest-gpu" in md and "E   AssertionError: boom" in md
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_pytest_summary_figures(gpu_check):
    step = {"figures": {}}
    text = ("....F.s\nSKIPPED [1] tests/test_export.py:99: needs TensorRT\n"
            "FAILED tests/test_a.py::test_b - assert x == y\n1 failed, 5 passed, 1 skipped in 3.21s\n")
    gpu_check.plan.pytest_figures(step, text)
    assert step["figures"] == {"failed": 1, "passed": 5, "skipped": 1,
                               "failures": ["tests/test_a.py::test_b - assert x == y"],
                               "skipped_reasons": ["[1] tests/test_export.py:99: needs TensorRT"]}


def test_bench_steps_are_runs_the_bench_parser_accepts(gpu_check, tmp_path):
    from fastmlr.bench import RUNTIMES, build_parser

    for step, runtimes in gpu_check.plan.BENCH_STEPS.items():
        cmd = gpu_check.plan.bench_cmd(step, tmp_path, python="python3")
        assert cmd[:3] == ["python3", "-m", "fastmlr.bench"]
        args = build_parser().parse_args(cmd[3:])
        assert args.device == "cuda" and args.out == str(tmp_path / step)
        assert args.runtimes.split(",") == list(runtimes) and set(runtimes) <= set(RUNTIMES)
    # AOTInductor is among the GPU columns, and the bench runs it on CUDA.
    assert "aoti" in gpu_check.plan.BENCH_STEPS["bench-aoti"]
    assert "cuda" in RUNTIMES["aoti"].devices


def test_synthetic_fashion_mnist_reads_back_through_the_mosaics_loader(gpu_check, tmp_path):
    from fastmlr.data import mosaics

    gpu_check.synthetic.write_synthetic_fmnist(tmp_path, n_train=50, n_val=20)
    images, labels = mosaics.load_fashion_mnist(str(tmp_path), "train")
    assert images.shape == (50, 28, 28) and images.dtype.name == "uint8"
    assert labels.shape == (50,) and 0 <= labels.min() and labels.max() < len(mosaics.FASHION_CLASSES)
    images, _ = mosaics.load_fashion_mnist(str(tmp_path), "val")
    assert images.shape == (20, 28, 28)
    assert images.std() > 10  # patterns, not a blank page


def test_steps_see_fashion_mnist_real_or_synthetic(gpu_check, tmp_path, monkeypatch):
    """Training and the pytest step both read FASTMLR_FMNIST_DIR: it names the photos the host has, or the
    synthetic ones gpu-check writes into its output folder."""
    monkeypatch.setattr(gpu_check.plan, "REAL_FMNIST", str(tmp_path / "absent"))
    env = {}
    note = gpu_check.plan.fmnist_for_steps(env, tmp_path / "out")
    assert env["FASTMLR_FMNIST_DIR"] == str(tmp_path / "out" / "fmnist-synthetic") and "synthetic" in note
    assert (tmp_path / "out" / "fmnist-synthetic" / "train-images-idx3-ubyte.gz").exists()
    real = tmp_path / "real"
    gpu_check.synthetic.write_synthetic_fmnist(real, n_train=10, n_val=10)
    env = {"FASTMLR_FMNIST_DIR": str(real)}
    assert gpu_check.plan.fmnist_for_steps(env, tmp_path / "out2") is None
    assert env["FASTMLR_FMNIST_DIR"] == str(real) and not (tmp_path / "out2").exists()


def test_step_limits_add_up_to_the_budget_with_a_margin(gpu_check):
    r = gpu_check.runner
    assert sum(r.LIMITS.values()) + r.MARGIN_S == r.BUDGET_S and r.MARGIN_S >= 0.1 * sum(r.LIMITS.values())
    assert set(r.EXPECTED_S) == set(r.LIMITS) and all(r.EXPECTED_S[k] < r.LIMITS[k] for k in r.LIMITS)
    # Every step the plan runs has a limit (and nothing else does).
    planned = {"build", "pytest-gpu", "train-srdl", "train-aamn", "ops", *gpu_check.plan.BENCH_STEPS}
    assert planned == set(r.LIMITS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_timed_out_step_ends_with_its_whole_process_group(gpu_check, tmp_path):
    """The step's shell starts a grandchild that ignores SIGTERM (as a compiler might keep running): after the
    time-out neither the shell nor the grandchild is left."""
    pidfile = tmp_path / "pids"
    script = f"trap '' TERM; sleep 300 & echo $$ $! > {pidfile}; wait"
    runner = gpu_check.runner.Runner(tmp_path / "out", budget=100, env=dict(os.environ), cwd=tmp_path,
                                     limits={"build": 10})
    step = runner.run("build", ["bash", "-c", script])
    assert step["status"] == "failed" and "timed out after 10 s" in step["detail"]
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        assert not _alive(pid), f"process {pid} of the timed-out step is still running"
    assert (tmp_path / "out" / "logs" / "build.log").exists()


def test_a_step_without_time_left_is_skipped_with_the_reason(gpu_check, tmp_path):
    runner = gpu_check.runner.Runner(tmp_path / "out", budget=3, env=dict(os.environ), cwd=tmp_path)
    step = runner.run("ops", ["bash", "-c", "echo ran > ran.txt"])
    assert step["status"] == "skipped" and step["detail"].startswith("time budget spent")
    assert not (tmp_path / "ran.txt").exists()
    ok = gpu_check.runner.Runner(tmp_path / "out", budget=100, env=dict(os.environ), cwd=tmp_path)
    step = ok.run("ops", ["bash", "-c", "echo fine; exit 3"])
    assert step["status"] == "failed" and step["detail"] == "exit code 3: fine"


@pytest.mark.slow
def test_pytest_selection_names_gpu_tests_that_exist(gpu_check):
    """Each entry of the smoke selection is collected, as gpu tests: a renamed test cannot drop out silently."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "gpu", *gpu_check.plan.PYTEST_SELECTION], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    for entry in gpu_check.plan.PYTEST_SELECTION:
        assert any(ln == entry or ln.startswith(entry + "::") for ln in collected), (entry, collected)


def test_ops_step_iterates_the_declared_ops_on_the_cpu(gpu_check, tmp_path):
    """The ops step's logic, on the CPU at the small shapes: one cell per declared op x dtype x backend, each
    ok or refused by its backend, the output compared with the reference's."""
    import torch

    from fastmlr import ops

    if not hasattr(ops, "specs"):
        pytest.skip("fastmlr.ops.specs() (the op declarations) is not on this branch yet")
    from fastmlr.gpucheck import opsbench

    out = tmp_path / "ops.json"
    result = opsbench.ops_bench(str(out), device="cpu", size="small", iters=2, warmup=1, dtypes=(torch.float32,))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    names = [s.name for s in ops.specs()]
    assert result["ops"] == names
    assert len(result["cells"]) == len(names) * len(result["backends"])
    assert {c["status"] for c in result["cells"]} <= {"ok", "unsupported"}, [c for c in result["cells"]
                                                                              if c["status"] == "failed"]
    for c in result["cells"]:
        if c["status"] == "ok" and "max_abs_diff" in c:
            assert c["max_abs_diff"] <= 1e-4 * max(1.0, c["ref_max_abs"]), c
            assert c["forward"]["median_ms"] > 0


def test_cuda_home_is_looked_up_in_one_place(setup_py):
    from fastmlr import toolkit

    assert setup_py.nvcc_version.__code__.co_filename == toolkit.nvcc_version.__code__.co_filename
    assert "fastmlr/toolkit.py" in (ROOT / "Makefile").read_text()
    for path in (ROOT / "setup.py", ROOT / "tools" / "gpu_check.py", *sorted((ROOT / "fastmlr" / "gpucheck").glob("*.py"))):
        assert "_HERE_" not in path.read_text(), f"{path} reads nvcc's --dryrun itself"
    assert toolkit.find_cuda_home({"CUDA_HOME": "/opt/cuda-x", "PATH": ""}) == "/opt/cuda-x"
    assert toolkit.find_cuda_home({"PATH": ""}) is None


def test_cuda_home_behind_a_wrapper_is_the_real_toolkit(tmp_path):
    """An nvcc on PATH that is a wrapper script: the root is where the real nvcc says it lives (_HERE_)."""
    from fastmlr import toolkit

    real = tmp_path / "cuda-13.0" / "bin"
    real.mkdir(parents=True)
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    (wrap / "nvcc").write_text(f"#!/bin/sh\necho '#$ _HERE_={real}' >&2\n")
    (wrap / "nvcc").chmod(0o755)
    assert toolkit.find_cuda_home({"PATH": str(wrap)}) == str(tmp_path / "cuda-13.0")
    assert toolkit.usable_cuda_home({"PATH": str(wrap)}) is None  # no bin/nvcc there
    (real / "nvcc").write_text("#!/bin/sh\n")
    assert toolkit.usable_cuda_home({"PATH": str(wrap)}) == str(tmp_path / "cuda-13.0")


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
    gpu_check.plan.train_figures(tmp_path)(step, "")
    assert step["figures"] == {"train_loss": 0.7123, "train_images_per_s": 512.3, "train_images": 1280,
                               "val_mAP": 45.67}


def test_run_all_runs_every_step_in_order_and_reports_each(gpu_check, tmp_path, monkeypatch):
    """The whole run on the CPU with each step's command replaced by a short stand-in: every step of the plan
    is run in order under its limit, a failing one does not stop the rest, and the reports say so."""
    plan = gpu_check.plan
    py = sys.executable

    def say(name, rc=0):
        return [py, "-c", f"import sys; print('{name} here'); sys.exit({rc})"]

    monkeypatch.setattr(plan, "REAL_FMNIST", str(tmp_path / "absent"))
    monkeypatch.setattr(plan, "build_cmd", lambda python: say("build"))
    monkeypatch.setattr(plan, "pytest_cmd", lambda python: say("pytest", rc=1))
    monkeypatch.setattr(plan, "train_cmd", lambda model, d, python: say(f"train {model}"))
    monkeypatch.setattr(plan, "ops_cmd", lambda f, python: say("ops"))
    monkeypatch.setattr(plan, "bench_cmd", lambda step, out, python: say(step))
    info = {"gpu": "test", "capability": "9.0"}
    out = tmp_path / "out"
    result = gpu_check.cli.run_all(out, budget=600, info=info, python=py)
    order = ["build", "pytest-gpu", "train-srdl", "train-aamn", "ops", "bench-eager", "bench-compile", "bench-aoti"]
    assert [s["step"] for s in result["steps"]] == order
    status = {s["step"]: s["status"] for s in result["steps"]}
    assert status.pop("pytest-gpu") == "failed" and set(status.values()) == {"ok"}
    assert all(s["limit_s"] == gpu_check.runner.LIMITS[s["step"]] for s in result["steps"])
    assert "train srdl here" in (out / "logs" / "train-srdl.log").read_text()
    saved = json.loads((out / "report.json").read_text())
    assert [s["step"] for s in saved["steps"]] == order and "synthetic" in saved["notes"][0]
    md = (out / "report.md").read_text()
    assert "| pytest-gpu | failed |" in md and "| bench-aoti | ok |" in md
    assert info["torch_cuda_arch_list"] == "9.0"
