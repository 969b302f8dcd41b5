"""The artefact contract (fastmlr.artifact.contract) between the builders and the runners, on a tiny hand-built graph.

The graph is written here with onnx.helper (mean over the pixels, a matrix,
a sigmoid), so the reference is NumPy on the same weights, independent of
the exporters; the export path itself is tested in test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastmlr import runtime
from fastmlr.artifact import contract
from fastmlr.files import atomic_write_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S, C = 4, 3
W = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 1.0, 1.0]], dtype=np.float32)  # [3 channels, C classes]


class _Meta(nn.Module):
    """What make_sidecar reads from a model: num_classes, model_name, config."""

    num_classes, model_name, config = C, "tiny", {"backbone": "none"}


def _tiny_onnx(path: str) -> str:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", [contract.INPUT_NAME, "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], [contract.OUTPUT_NAMES[0]]),
        helper.make_node("Sigmoid", [contract.OUTPUT_NAMES[0]], [contract.OUTPUT_NAMES[1]]),
    ]
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(contract.INPUT_NAME, TensorProto.FLOAT, ["batch", 3, S, S])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", C]) for n in contract.OUTPUT_NAMES],
        initializer=[numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
                     numpy_helper.from_array(W, "W")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    data = m.SerializeToString()
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return path


def _numpy_reference(x: np.ndarray):
    logits = x.astype(np.float64).mean(axis=(2, 3)) @ W.astype(np.float64)
    return logits, 1.0 / (1.0 + np.exp(-logits))


@pytest.fixture
def tiny(tmp_path):
    def make(**sidecar_kw):
        path = _tiny_onnx(str(tmp_path / "tiny.onnx"))
        side = contract.make_sidecar(_Meta(), S, class_names=["a", "b", "c"], **sidecar_kw)
        contract.write_sidecar(path, side, artifact={"format": "onnx"}, precision="fp32",
                               batch={"min": 1, "opt": 2, "max": 4})
        return path

    return make


def test_runner_run_is_the_graph_on_one_prepared_batch(tiny):
    r = runtime.load(tiny())
    x = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(0))
    logits, probs = r.run(x)
    ref_logits, ref_probs = _numpy_reference(x.numpy())
    assert np.abs(logits.numpy() - ref_logits).max() < 1e-5 and np.abs(probs.numpy() - ref_probs).max() < 1e-6
    # predict splits at the sidecar's max batch (4) and agrees with run on each piece.
    big = torch.randn(9, 3, S, S, generator=torch.Generator().manual_seed(1))
    assert np.abs(r.predict(big).numpy() - _numpy_reference(big.numpy())[1]).max() < 1e-6


def test_per_class_thresholds_decide_the_labels(tiny):
    x = torch.full((1, 3, S, S), 0.2)
    p = _numpy_reference(x.numpy())[1][0]  # sigmoid([0.6, 0.4, 0.1]) = 0.646, 0.599, 0.525
    single = runtime.load(tiny(threshold=0.55))
    assert single.thresholds == [0.55] * C
    assert [n for n, _ in single.labels(x)[0]] == ["a", "b"]
    per = runtime.load(tiny(threshold=0.55, thresholds=[0.9, 0.5, 0.5]))
    assert per.threshold == 0.55 and per.thresholds == [0.9, 0.5, 0.5]
    got = per.labels(x)[0]
    assert [n for n, _ in got] == ["b", "c"] and abs(got[0][1] - p[1]) < 1e-6
    with pytest.raises(ValueError, match="2 per-class thresholds for 3 classes"):
        contract.make_sidecar(_Meta(), S, thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        contract.make_sidecar(_Meta(), S, thresholds=[0.5, 1.5, 0.5])


def test_read_sidecar_refuses_foreign_and_broken_sidecars(tiny):
    path = tiny(thresholds=[0.5, 0.5, 0.5])
    side_path = contract.sidecar_path(path)
    side = json.load(open(side_path))
    assert side["format"] == contract.SIDECAR_FORMAT and side["artifact"]["file"] == "tiny.onnx"
    assert side["artifact"]["bytes"] == os.path.getsize(path)
    for broken, message in [
        ({**side, "format": "other-v0"}, "is not a fastmlr sidecar"),
        ({k: v for k, v in side.items() if k != "mean"}, "lacks 'mean'"),
        ({**side, "thresholds": [0.5]}, "1 per-class thresholds for 3 classes"),
    ]:
        with open(side_path, "w") as fh:
            json.dump(broken, fh)
        with pytest.raises(contract.SidecarMismatch, match=message):
            runtime.load(path)
    with open(side_path, "w") as fh:
        fh.write("{not json")
    with pytest.raises(contract.SidecarMismatch, match="cannot be read"):
        contract.read_sidecar(path)
    # The runtime's names are the contract's, not copies of it.
    assert runtime.SidecarMismatch is contract.SidecarMismatch and runtime.EXTENSIONS is contract.EXTENSIONS


def test_the_runtime_never_imports_the_builders(tiny):
    path = tiny()
    code = (
        "import sys, torch, fastmlr.runtime as rt\n"
        f"rt.load({path!r}).predict(torch.zeros(2, 3, {S}, {S}))\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('fastmlr'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"fastmlr.runtime.onnx", "fastmlr.artifact.contract", "fastmlr.artifact.probe"} <= loaded
    builders = {"fastmlr.deploy.onnx", "fastmlr.deploy.aoti", "fastmlr.deploy.trt", "fastmlr.deploy.graph",
                "fastmlr.deploy.triton_repo", "fastmlr.export", "fastmlr.ops", "fastmlr.models"}
    assert not loaded & builders, sorted(loaded & builders)
