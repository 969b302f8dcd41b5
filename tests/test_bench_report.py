"""fastmlr.bench end to end on a fake runtime and a fake clock (a group timed interleaved through a load burst,
overheads with their intervals, the warning, the chart's panels), and the command's flags (device cpu)."""

from __future__ import annotations

import os

import pytest
import torch

from fastmlr import bench
from fastmlr.bench import cells as cells_mod
from fastmlr.bench import cli
from fastmlr.measure import CallTimer
from fastmlr.bench.report import PAPER_MS, chart_panels, uncertain_overheads
from fastmlr.bench.runtimes import Runtime

from test_bench_measure import FakeMachine


class FakeRuntime(Runtime):
    name, label, timed = "fake", "fake runtime", "a fake call advancing a fake clock"

    def __init__(self, machine: FakeMachine, costs: dict[str, float]):
        self.machine, self.costs = machine, costs

    def prepare(self, model, ctx):
        return self.machine.model(ctx["model_name"], self.costs[ctx["model_name"]])


def _group(monkeypatch, tmp_path, machine, costs, **timing):
    monkeypatch.setitem(bench.RUNTIMES, "fake", FakeRuntime(machine, costs))
    monkeypatch.setattr(cells_mod, "build_model", lambda *a: torch.nn.Identity())
    cfg = {k: v for k, v in cli.QUICK.items() if k not in ("models", "runtimes")}
    cfg.update(models=list(costs), runtimes=["fake"], device="cpu", threads=None, ops_backend=None, isolate=False,
               iters=None, quick=True, **timing)
    spec = {k: cfg[k] for k in cli._GROUP_KEYS}
    spec.update(runtime="fake", workdir=str(tmp_path), memory=True)
    group = cells_mod.run_group(spec, timer=CallTimer("cpu", clock=machine.clock))
    machine_info = {"cpu": "fake cpu", "cpu_count": 2, "cpus_usable": 2, "torch_threads": 1, "torch": torch.__version__,
                    "python": "3", "gpu": None, "onnxruntime": None, "load_average_start": [9.0, 9.0, 9.0]}
    result = {"date": "now", "command": "test", "config": cfg, "machine": machine_info, "cells": group}
    bench.add_overheads(result)
    return result


def test_quick_timing_gets_the_signs_right_through_a_load_burst(monkeypatch, tmp_path):
    # SRDL 10% and ML-GCN 3% over the baseline; a 3x burst over the first 3 s, while the group warms up and starts.
    m = FakeMachine(bursts=[(0.0, 3.0, 3.0)], noise=0.05, seed=11)
    costs = {"baseline": 0.100, "srdl": 0.110, "mlgcn": 0.103}
    res = _group(monkeypatch, tmp_path, m, costs)
    by = {c["model"]: c for c in res["cells"]}
    assert all(c["status"] == "ok" for c in by.values()), res["cells"]
    st = {k: c["batches"]["1"] for k, c in by.items()}
    assert 15 <= st["srdl"]["rounds"] <= 300 and st["srdl"]["timing"] == "interleaved"
    assert st["srdl"]["stop"] in ("converged", "time cap")
    assert len(st["srdl"]["samples_ms"]) == len(st["baseline"]["samples_ms"]) == st["srdl"]["rounds"]
    assert 0.06 < st["srdl"]["overhead_vs_baseline"] < 0.14
    assert 0.0 < st["mlgcn"]["overhead_vs_baseline"] < 0.06
    for name in ("srdl", "mlgcn"):
        lo, hi = st[name]["overhead_interval"]
        assert lo <= st[name]["overhead_vs_baseline"] <= hi
        assert st[name]["overhead_uncertain"] is False and lo > 0
        assert st[name]["overhead_vs_baseline"] == pytest.approx(
            (st[name]["median_ms"] - st["baseline"]["median_ms"]) / st["baseline"]["median_ms"])
        assert st[name]["p25_ms"] <= st[name]["median_ms"] <= st[name]["p75_ms"]
    assert st["baseline"]["peak_mem_mb"] > 0
    md = bench.format_markdown(res)
    row = next(ln for ln in md.splitlines() if ln.startswith("| srdl |"))
    assert f"{st['srdl']['median_ms']:.2f} [{st['srdl']['p25_ms']:.2f}-{st['srdl']['p75_ms']:.2f}]" in row
    assert f"({100 * st['srdl']['overhead_vs_baseline']:+.1f}% [" in row
    assert "Warning" not in md and "Timed interleaved" in md


def test_a_spread_larger_than_the_overhead_is_warned_about(monkeypatch, tmp_path):
    m = FakeMachine(noise=0.6, seed=2)
    res = _group(monkeypatch, tmp_path, m, {"baseline": 0.100, "srdl": 0.1005}, max_time=2.0)
    srdl = next(c for c in res["cells"] if c["model"] == "srdl")["batches"]["1"]
    assert srdl["overhead_uncertain"] is True
    assert srdl["stop"] == "time cap"
    assert [(mo, rt) for mo, rt, _, _ in uncertain_overheads(res)] == [("srdl", "fake")]
    md = bench.format_markdown(res)
    assert "**Warning**: srdl on fake, batch 1" in md and "spread > overhead" in md


def test_chart_compares_like_with_like(monkeypatch, tmp_path):
    m = FakeMachine(noise=0.02, seed=4)
    res = _group(monkeypatch, tmp_path, m, {"baseline": 0.100, "srdl": 0.110, "mlgcn": 0.105}, max_time=5.0)
    measured, ratio, paper = chart_panels(res)
    assert measured["source"] == "measured" and paper["source"] == "paper" and ratio["source"] == "ratio"
    # Measured milliseconds only in the first panel: the fake figures, never the paper's.
    (label, ms, _err), = measured["series"]
    assert label == "fake" and ms == pytest.approx([c["batches"]["1"]["ms_per_image"] for c in res["cells"]])
    assert not set(ms) & set(PAPER_MS.values())
    assert paper["series"][0][1] == [PAPER_MS["baseline"], PAPER_MS["srdl"], PAPER_MS["mlgcn"]]
    # Overheads: each source against its own baseline, in percent.
    here, theirs = ratio["series"]
    assert here[1][1] == pytest.approx(100 * res["cells"][1]["batches"]["1"]["overhead_vs_baseline"])
    assert theirs[1] == pytest.approx([0.0, 100 * (32.58 / 31.54 - 1), 100 * (32.40 / 31.54 - 1)])
    path = str(tmp_path / "bench.png")
    bench.plot(res, path)
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _cfg(*argv):
    return cli.resolve_config(cli.build_parser().parse_args(["--device", "cpu", *argv]))


def test_backends_is_a_deprecated_alias_that_warns_once(capsys):
    cfg = _cfg("--backends", "eager,onnxrt-fp32")
    assert cfg["runtimes"] == ["eager", "onnxrt-fp32"]
    assert capsys.readouterr().err.splitlines() == [
        "bench: --backends is deprecated, use --runtimes (a backend is a fastmlr.ops implementation; the columns "
        "are runtimes)"]
    _cfg("--runtimes", "eager")
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit, match="--runtimes only"):
        _cfg("--backends", "eager", "--runtimes", "eager")


def test_timing_flags():
    q = _cfg("--quick")
    assert (q["min_iters"], q["max_iters"], q["max_time"], q["iters"]) == (15, 300, 10.0, None)
    assert q["runtimes"] == ["eager", "onnxrt-fp32"] and q["device"] == "cpu" and q["isolate"] is False
    assert q["clock"] == "cpu" and _cfg()["clock"] == "wall" and _cfg("--quick", "--clock", "wall")["clock"] == "wall"
    assert q["threads"] == 1 and _cfg("--quick", "--threads", "2")["threads"] == 2 and _cfg()["threads"] is None
    fixed = _cfg("--quick", "--iters", "7")
    assert fixed["min_iters"] == fixed["max_iters"] == 7
    with pytest.raises(SystemExit, match="--max-iters: expected at least --min-iters"):
        _cfg("--min-iters", "5", "--max-iters", "3")
    with pytest.raises(SystemExit, match="--max-time"):
        _cfg("--max-time", "0")
    with pytest.raises(SystemExit, match="--target-spread"):
        _cfg("--target-spread", "2")
    with pytest.raises(SystemExit, match="--ops-backend: 'warp' does not run on cpu"):
        _cfg("--ops-backend", "warp")
    assert _cfg("--ops-backend", "reference")["ops_backend"] == "reference"


def test_device_that_is_absent_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    with pytest.raises(SystemExit, match="--device cuda: no CUDA device"):
        cli.resolve_config(cli.build_parser().parse_args(["--device", "cuda"]))


def test_deploy_imports_resolve_or_say_why():
    from fastmlr.bench.runtimes import SkipCell, _deploy

    assert callable(_deploy("onnx", "export_onnx")) and callable(_deploy("aoti", "export_aoti"))
    assert callable(_deploy("trt", "build_trt_engine"))
    with pytest.raises(SkipCell, match="fastmlr.deploy.onnx.no_such_function not available"):
        _deploy("onnx", "no_such_function")


def test_module_sizes():
    folder = os.path.dirname(bench.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as fh:
                assert sum(1 for _ in fh) <= 450, name


@pytest.mark.slow
def test_isolated_run_takes_memory_per_cell_and_timing_from_one_interleaved_process(tmp_path):
    import json

    out = str(tmp_path / "iso")
    assert bench.main(["--device", "cpu", "--models", "srdl", "--runtimes", "eager", "--backbone", "resnet18",
                       "--image-size", "32", "--num-classes", "3", "--iters", "4", "--warmup", "1", "--threads", "1",
                       "--isolate", "on", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "bench.json")) as fh:
        r = json.load(fh)
    assert r["config"]["isolate"] is True and r["config"]["clock"] == "wall"
    st = {c["model"]: c["batches"]["1"] for c in r["cells"] if c["status"] == "ok"}
    assert set(st) == {"baseline", "srdl"}
    for s in st.values():
        assert s["timing"] == "interleaved" and s["rounds"] == 4 and s["interleaved_with"] == ["baseline", "srdl"]
        assert s["peak_mem_mb"] > 0 and "resident set" in s["mem_kind"]
    assert st["srdl"]["overhead_vs_baseline"] == pytest.approx(
        st["srdl"]["median_ms"] / st["baseline"]["median_ms"] - 1)
    assert len(st["srdl"]["overhead_interval"]) == 2
