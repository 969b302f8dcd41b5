"""fastmlr.bench: a tiny end-to-end run (JSON, markdown, PNG, every cell numbers or a reason, overheads from the
JSON's own medians, the paper column), the statistics against numpy, and flag errors.

Every run names its device (cpu): the same test means the same on a GPU host."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from fastmlr import bench


def test_percentile_matches_numpy():
    rng = random.Random(0)
    for n in (1, 2, 3, 7, 10, 31):
        xs = [rng.uniform(0, 5) for _ in range(n)]
        for q in (0, 10, 50, 90, 100):
            assert bench.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-15)


def test_summarize_fixed_samples():
    secs = [0.010, 0.012, 0.011, 0.030, 0.013]
    st = bench.summarize(secs, batch=2)
    assert st["median_ms"] == pytest.approx(1e3 * np.median(secs))
    assert st["p90_ms"] == pytest.approx(1e3 * np.percentile(secs, 90))
    assert st["mean_ms"] == pytest.approx(1e3 * np.mean(secs))
    assert st["ms_per_image"] == pytest.approx(1e3 * np.median(secs) / 2)
    assert st["images_per_s"] == pytest.approx(2 / np.median(secs))
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_unknown_flags_name_what_was_expected(tmp_path, capsys):
    # The commands' convention (fastmlr.engine.run_command): one line "error: ...", exit status 2.
    for argv, words in ((["--backends", "warp-drive"], "--backends: unknown"),
                        (["--runtimes", "warp-drive"], "--runtimes: unknown"),
                        (["--models", "nope"], "--models: unknown"), (["--batch-sizes", "1,x"], "--batch-sizes")):
        assert bench.main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]  # (and --backends' notice)
        assert len(err) == 1 and words in err[0], err
    with pytest.raises(SystemExit, match="--runtimes: unknown"):
        bench.main(["--runtimes", "warp-drive", "--device", "cpu", "--out", str(tmp_path), "--debug"])
    assert not os.listdir(tmp_path)


def test_gpu_only_runtimes_say_why_on_cpu():
    import torch

    for name in ("autocast-fp16", "trt-fp16", "trt-rtx"):
        reason = bench.RUNTIMES[name].why_not(torch.device("cpu"))
        assert reason and "GPU" in reason


def test_the_rtx_column_says_which_gpus_tensorrt_rtx_runs_on(monkeypatch):
    """On a GPU with TensorRT-RTX installed, an H100 (9.0) is refused with the targets; an RTX 3070 (8.6) is not."""
    import torch

    from fastmlr.bench import runtimes

    monkeypatch.setattr(runtimes.TensorRTFP16, "why_not", lambda self, device: None)
    rtx = bench.RUNTIMES["trt-rtx"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert rtx.why_not(torch.device("cuda")) == ("TensorRT-RTX builds for compute capability 7.5, 8.0, 8.6, 8.9, "
                                                 "12.0, 12.1; this GPU is 9.0")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert rtx.why_not(torch.device("cuda")) is None and rtx.targets(torch.device("cuda")) == ("8.6",)


@pytest.mark.slow
def test_quick_end_to_end(tmp_path):
    out = str(tmp_path / "b")
    res = bench.main([
        "--quick", "--device", "cpu", "--models", "srdl", "--runtimes", "eager,onnxrt-fp32,autocast-fp16,trt-fp16",
        "--image-size", "32", "--iters", "3", "--warmup", "1", "--threads", "1", "--train",
        "--out", out, "--no-progress",
    ])
    assert res == 0
    for f in ("bench.json", "bench.md", "bench.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    with open(os.path.join(out, "bench.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    r = json.load(open(os.path.join(out, "bench.json")))
    assert r["config"]["models"] == ["baseline", "srdl"]  # baseline joins for the overhead
    assert len(r["cells"]) == 2 * 4
    cells = {(c["model"], c["runtime"]): c for c in r["cells"]}
    for c in r["cells"]:
        if c["status"] == "ok":
            st = c["batches"]["1"]
            assert st["iters"] == 3
            assert 0 < st["median_ms"] <= st["p90_ms"] + 1e-9
            assert st["peak_mem_mb"] > 0
        else:
            assert c["status"] in ("skipped", "failed") and c["reason"], c
    # On the CPU (asked for above, so also on a GPU host) the GPU-only runtimes skip.
    assert cells[("srdl", "trt-fp16")]["status"] == "skipped"
    assert cells[("srdl", "autocast-fp16")]["status"] == "skipped"
    assert cells[("srdl", "eager")]["status"] == "ok"
    assert cells[("srdl", "onnxrt-fp32")]["status"] == "ok", cells[("srdl", "onnxrt-fp32")].get("reason")
    for rt in ("eager", "onnxrt-fp32"):
        m, b = cells[("srdl", rt)]["batches"]["1"], cells[("baseline", rt)]["batches"]["1"]
        assert m["overhead_vs_baseline"] == pytest.approx((m["median_ms"] - b["median_ms"]) / b["median_ms"])
        assert b["overhead_vs_baseline"] == pytest.approx(0.0)
    md = open(os.path.join(out, "bench.md")).read()
    assert "paper: RTX 3070" in md and "31.54" in md and "32.58" in md
    assert "no GPU" in md or "GPU" in md
    srdl_row = next(ln for ln in md.splitlines() if ln.startswith("| srdl |"))
    assert f"{cells[('srdl', 'eager')]['batches']['1']['median_ms']:.2f}" in srdl_row
    assert "skipped [" in srdl_row  # a skipped cell points at its reason
    tr = r["train"]
    assert {(t["model"], t["ops_backend"]) for t in tr["cells"]} >= {("srdl", "reference")}
    for t in tr["cells"]:
        assert t["status"] == "ok", t
        assert t["images_per_s"] > 0 and t["peak_mem_mb"] > 0


@pytest.mark.slow
def test_isolated_cell_reports_its_own_process(tmp_path):
    spec = dict(backbone="resnet18", image_size=32, num_classes=3, iters=2, warmup=1, batch_sizes=[1, 2],
                device="cpu", threads=1, model="baseline", runtime="eager", workdir=str(tmp_path))
    cell = bench.run_cell_isolated(spec)
    assert cell["status"] == "ok", cell
    assert set(cell["batches"]) == {"1", "2"}
    assert all(st["peak_mem_mb"] > 0 for st in cell["batches"].values())
