"""Real TensorRT-RTX (PyPI ``tensorrt-rtx``): every graph ``export --onnx`` writes parses and builds, no GPU needed.

Each registered model at a small size (ResNet-18, 64 px, 3 classes: one build is about a second), fp32
and fp16, standard op set; the fused op set's graph on TensorRT-RTX (which cannot host fastmlr's
plugins) falls back to the standard graph in one line. The runner's refusals use the real library:
without a GPU it is never asked to deserialize; asked anyway, TensorRT-RTX answers None after CUDA
error 35, which becomes one line. ResNet-101 448 px builds are the benchmark in benchmarks/README.md.
"""

import json
import os
import sys
import warnings

import pytest
import torch

from fastmlr.artifact import probe
from fastmlr.artifact.contract import make_sidecar
from fastmlr.deploy.onnx import export_onnx, export_onnx_fp16
from fastmlr.deploy.trt import RTX_DEFAULT_TARGETS, RTX_NO_PLUGINS, build_trt_engine
from fastmlr.models import create_model, list_models
from fastmlr.runtime import trt as rt

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (make setup installs tensorrt-rtx)")
pytestmark = pytest.mark.slow

SIZE, CLASSES = 64, 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, CLASSES, backbone="resnet18", weights="none").eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """name -> {"fp32": path, "fp16": path, "model"} for each registered model, as export --onnx --fp16 writes them."""
    root = tmp_path_factory.mktemp("rtx")
    out = {}
    for name in list_models():
        model, stem = _model(name), str(root / name)
        side = make_sidecar(model, SIZE, threshold=0.5)
        kw = dict(min_batch=1, opt_batch=2, max_batch=4, sidecar=side, onnx_ops="standard")
        export_onnx(model, stem + ".onnx", SIZE, fp16=False, **kw)
        export_onnx_fp16(model, stem + ".fp16.onnx", SIZE, **kw)
        out[name] = {"fp32": stem + ".onnx", "fp16": stem + ".fp16.onnx", "model": model}
    return out


def _head(path):
    """The engine's first bytes (its I/O cannot be read back without a GPU: deserializing needs one)."""
    with open(path, "rb") as fh:
        return fh.read(4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", list_models())
def test_every_graph_builds_with_tensorrt_rtx(graphs, tmp_path, name, precision, capsys):
    engine = str(tmp_path / f"{name}.plan")
    build_trt_engine(graphs[name][precision], engine, min_batch=1, opt_batch=2, max_batch=4, flavour="rtx")
    assert _head(engine) == rt.RTX_MAGIC
    side = json.load(open(engine + ".json"))
    assert side["tensorrt"]["flavour"] == "rtx" and side["tensorrt"]["targets"] == list(RTX_DEFAULT_TARGETS)
    assert side["tensorrt"]["version"] == trt.__version__ and side["tensorrt"]["timing_cache"] is None
    assert side["tensorrt"]["engine_bytes"] == os.path.getsize(engine) and side["onnx_ops"] == "standard"
    assert len(side["class_names"]) == CLASSES and side["image_size"] == SIZE
    assert f"({os.path.getsize(engine) / 1e6:.1f} MB) built in" in capsys.readouterr().err


def test_targets_change_what_is_compiled(graphs, tmp_path):
    one, two = str(tmp_path / "one.plan"), str(tmp_path / "two.plan")
    build_trt_engine(graphs["baseline"]["fp16"], one, min_batch=1, opt_batch=1, max_batch=2, flavour="rtx",
                     targets=("8.6",))
    build_trt_engine(graphs["baseline"]["fp16"], two, min_batch=1, opt_batch=1, max_batch=2, flavour="rtx",
                     targets=("8.6", "12.0"))
    assert json.load(open(one + ".json"))["tensorrt"]["targets"] == ["8.6"]
    assert json.load(open(two + ".json"))["tensorrt"]["targets"] == ["8.6", "12.0"]
    assert open(one, "rb").read() != open(two, "rb").read()


def test_a_fused_graph_falls_back_to_the_standard_one_in_one_line(graphs, tmp_path, capsys):
    model = graphs["srdl"]["model"]
    fused = str(tmp_path / "srdl.fused.onnx")  # export --onnx-ops fused writes it in fp32 (--fp16 is standard only)
    export_onnx(model, fused, SIZE, fp16=False, min_batch=1, opt_batch=1, max_batch=2, onnx_ops="fused",
                sidecar=make_sidecar(model, SIZE, threshold=0.5))
    with pytest.raises(probe.TRTUnavailable, match="has fastmlr's fused nodes.*TensorRT-RTX has no tensorrt.plugin or "
                                                   "ahead-of-time plugin interface"):
        build_trt_engine(fused, str(tmp_path / "no.plan"), min_batch=1, opt_batch=1, max_batch=2, flavour="rtx")
    assert not os.path.exists(tmp_path / "no.plan")
    engine = str(tmp_path / "s.plan")
    build_trt_engine(fused, engine, min_batch=1, opt_batch=1, max_batch=2, flavour="rtx",
                     fallback_onnx=graphs["srdl"]["fp32"])
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "fused plugins unavailable" in line] == [
        f"TensorRT-RTX: fused plugins unavailable ({RTX_NO_PLUGINS}); building from the standard graph "
        f"{graphs['srdl']['fp32']}"]
    assert json.load(open(engine + ".json"))["onnx_ops"] == "standard"


def test_the_cli_builds_an_rtx_engine_without_a_gpu(tmp_path, capsys):
    """The issue's "Done when" command at a small size (and one target): exit 0, an RTX engine, its sidecar."""
    from fastmlr import export as ex

    plan = tmp_path / "s.plan"
    rc = ex.main(["--model", "srdl", "--num-classes", "3", "--backbone", "resnet18", "--image-size", "32",
                  "--onnx", str(tmp_path / "s.onnx"), "--fp16", "--trt", str(plan), "--trt-flavour", "rtx",
                  "--trt-targets", "8.6,89", "--max-batch", "2", "--opt-batch", "1", "--no-verify"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    side = json.load(open(str(plan) + ".json"))
    assert side["tensorrt"]["flavour"] == "rtx" and side["tensorrt"]["targets"] == ["8.6", "8.9"]
    assert side["artifact"]["onnx"] == "s.fp16.onnx" and plan.read_bytes()[:4] == rt.RTX_MAGIC
    assert "wrote TensorRT-RTX engine" in out and "for compute capability 8.6, 8.9" in err
    assert not os.path.exists(tmp_path / "fastmlr.timing.cache")  # TensorRT-RTX has no timing cache


def test_targets_for_enterprise_tensorrt_or_unknown_ones_are_refused_before_work(tmp_path, capsys):
    from fastmlr import export as ex

    base = ["--model", "srdl", "--num-classes", "3", "--backbone", "resnet18", "--image-size", "32",
            "--trt", str(tmp_path / "s.plan")]
    assert ex.main([*base, "--trt-targets", "9.0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: --trt-targets: '9.0' is not a compute capability TensorRT-RTX builds "
                                        "for; expected a comma-separated list of 7.5, 8.0, 8.6, 8.9, 12.0, 12.1"]
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_a_gpu_the_runner_refuses_in_one_line(tmp_path, graphs):
    engine = str(tmp_path / "m.plan")
    build_trt_engine(graphs["baseline"]["fp16"], engine, min_batch=1, opt_batch=1, max_batch=2, flavour="rtx")
    from fastmlr import runtime

    with pytest.raises(RuntimeError) as e:
        runtime.load(engine)
    assert str(e.value).startswith(f"cannot run TensorRT-RTX engine {engine}: no NVIDIA GPU") and "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks TensorRT-RTX's own answer without a GPU")
def test_tensorrt_rtx_itself_refuses_to_deserialize_without_a_gpu(tmp_path, graphs):
    """What the GPU probe saves us from, asked of the real library in a subprocess (it logs CUDA error 35)."""
    import subprocess

    engine = str(tmp_path / "m.plan")
    build_trt_engine(graphs["baseline"]["fp16"], engine, min_batch=1, opt_batch=1, max_batch=2, flavour="rtx")
    code = ("import sys, tensorrt_rtx as trt\n"
            "from fastmlr.runtime.trt import RecordingLogger, deserialize\n"
            "log = RecordingLogger(trt)\n"
            "try:\n"
            f"    deserialize(trt, trt.Runtime(log), log, {engine!r}, open({engine!r}, 'rb').read(), 'rtx')\n"
            "except RuntimeError as e:\n"
            "    print(e); sys.exit(7)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 7, run.stdout + run.stderr
    line = run.stdout.strip()
    assert line.startswith(f"TensorRT-RTX {trt.__version__} could not deserialize {engine}: ") and "cudaError 35" in line
    assert "\n" not in line


@pytest.mark.gpu
def test_rtx_engine_matches_pytorch_and_keeps_its_runtime_cache_on_an_rtx_gpu(graphs, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; none is present on this machine")
    from fastmlr import runtime
    from fastmlr.deploy.trt import RTX_TARGETS

    cc = "{}.{}".format(*torch.cuda.get_device_capability())
    if cc not in RTX_TARGETS:
        pytest.skip(f"TensorRT-RTX does not run on compute capability {cc} (its targets: {', '.join(RTX_TARGETS)})")
    engine = str(tmp_path / "m.plan")
    build_trt_engine(graphs["srdl"]["fp16"], engine, min_batch=1, opt_batch=2, max_batch=4, flavour="rtx",
                     targets=(cc,))
    from fastmlr.deploy.verify import torch_probs

    x = torch.randn(3, 3, SIZE, SIZE)
    want = torch_probs(graphs["srdl"]["model"], x)
    r = runtime.load(engine)
    assert r.provider.startswith("tensorrt-rtx:")
    assert (r.predict(x).cpu() - want).abs().max() <= 1e-2  # the fp16 graph's budget (export's check)
    assert os.path.getsize(rt.runtime_cache_path(engine)) > 0  # the JIT compile, kept for the next process
