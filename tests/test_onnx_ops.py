"""The two ONNX op sets (fastmlr/deploy/onnx_ops.py): the chunked standard graph and the fused fastmlr nodes.

References: naive float64 loops (naive_ref) for the chunked decomposition; onnx's own
shape inference for the graphs' intermediates; PyTorch eager on the original model for
ONNX Runtime's probabilities.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings

import onnx
import pytest
import torch

import naive_ref
from fastmlr import ops, runtime
from fastmlr.deploy import onnx as donnx
from fastmlr.deploy.onnx_ops import FUSED_DOMAIN
from fastmlr.models import create_model
from fastmlr.ops import decomposed
from ops_common import TOL, close, pool_inputs, sa_inputs

SIZE = 64
HAVE_EXT = importlib.util.find_spec("onnxruntime_extensions") is not None
HAVE_NODES = {r.name: r for r in ops.backend_status("cpu")}["nodes"]
needs_nodes = pytest.mark.skipif(not HAVE_NODES.runs, reason=f"'nodes' backend: {HAVE_NODES.reason}")
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="onnxruntime-extensions is not installed")


def _model(name, num_classes=10, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, num_classes, backbone="resnet18", weights="none").eval()


# -- the chunked decomposition ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("budget", [1, 50, 10**6])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 7, 5, 3), (2, 18, 20, 40), (1, 17, 33, 5)], ids=str)
def test_chunked_ops_match_the_naive_loops(monkeypatch, shape, budget, dtype):
    """Every chunking (one category a chunk, several, all in one) gives the loops' values within the dtype's TOL."""
    monkeypatch.setattr(decomposed, "CHUNK_ELEMENTS", budget)
    N, C, P, D = shape
    per = decomposed.categories_per_chunk(P * D)
    assert per == max(1, budget // (P * D))
    sa_raw = [t.to(dtype) for t in sa_inputs(*shape)]
    with ops.use_backend("decomposed"):
        sa = ops.car_spatial_attention(*sa_raw)
    close(sa, naive_ref.spatial_attention(*sa_raw), dtype, f"SA in chunks of {per}")
    pool_raw = [t.to(dtype) for t in pool_inputs(*shape)]
    with ops.use_backend("decomposed"):
        feat = ops.car_pool(*pool_raw)
    close(feat, naive_ref.car_pool(*pool_raw), dtype, f"feat in chunks of {per}")


def test_decomposed_is_never_chosen_unless_named():
    u, wc, s, b = (t.float() for t in sa_inputs(1, 3, 4, 5))
    rows = {r.name: r for r in ops.backend_status("cpu", "car_spatial_attention")}
    assert rows["decomposed"].runs
    sel = ops._dispatch.select("car_spatial_attention", (u, wc, s, b))
    assert sel.name not in ("decomposed", "nodes")
    assert ops._dispatch.select("car_spatial_attention", (u, wc, s, b), "decomposed").name == "decomposed"


# -- the standard graph: TensorRT's op set, intermediates bounded in C -----------------------------------
def _largest_intermediate(path) -> tuple[int, list]:
    """The largest image-dependent tensor (one with the symbolic batch dim, counted as 1) after onnx shape inference.

    Weights (and tensors computed from weights alone) have no batch dimension and are left out.
    """
    m = onnx.shape_inference.infer_shapes(onnx.load(path))
    best = (0, [])
    for vi in list(m.graph.value_info) + list(m.graph.output):
        shape = vi.type.tensor_type.shape.dim
        if not any(d.HasField("dim_param") for d in shape):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in shape]
        n = 1
        for d in dims:
            n *= d
        best = max(best, (n, dims))
    return best


def test_standard_graph_is_tensorrt_only_and_its_memory_does_not_grow_with_c(monkeypatch, tmp_path):
    # 4 categories a chunk at resnet18 / 64 px (P x D = 4 x 512), so C = 20 and 80 are several chunks.
    monkeypatch.setattr(decomposed, "CHUNK_ELEMENTS", 4 * 4 * 512)
    largest = {}
    for C in (20, 80):
        path = str(tmp_path / f"c{C}.onnx")
        donnx.export_onnx(_model("srdl", C), path, SIZE, max_batch=2, opt_batch=1)
        assert donnx.unsupported_by_tensorrt(path) == []
        assert json.load(open(path + ".json"))["onnx_ops"] == "standard"
        largest[C] = _largest_intermediate(path)
    assert largest[20][0] == largest[80][0], largest
    # The same graph traced through the reference (one N x C x P x D tensor) does grow: the check can fail.
    ref = str(tmp_path / "ref80.onnx")
    monkeypatch.setattr(donnx, "trace_backend", lambda op_set: "reference")
    donnx.export_onnx(_model("srdl", 80), ref, SIZE, max_batch=2, opt_batch=1)
    assert _largest_intermediate(ref)[0] >= 80 * 4 * 512 > largest[80][0]


# -- the fused graph ---------------------------------------------------------------------------------------
def _shapes(model_proto) -> dict:
    m = onnx.shape_inference.infer_shapes(model_proto)
    out = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.initializer):
        if isinstance(vi, onnx.TensorProto):
            out[vi.name] = list(vi.dims)
        else:
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                            for d in vi.type.tensor_type.shape.dim]
    return out


# model -> (expected fastmlr nodes, each with its input shapes; "N" the batch). resnet18 at 64 px: D 512, P 4.
FUSED_EXPECTED = {
    "srdl": {"CarSpatialAttention": [["N", 4, 512], [10, 512], [512], []],
             "CarPool": [["N", 512, 4], ["N", 10, 4], ["N", 10, 512]]},
    "aamn": {"SecondOrderPool": None},
    "mmdsr": {"MultiPerspectiveCosine": None},
}


@pytest.fixture(scope="module")
def fused_graphs(tmp_path_factory):
    if not HAVE_NODES.runs:
        pytest.skip(f"'nodes' backend: {HAVE_NODES.reason}")
    d = tmp_path_factory.mktemp("fused")
    out = {}
    for name in FUSED_EXPECTED:
        m = _model(name)
        path = str(d / f"{name}.onnx")
        donnx.export_onnx(m, path, SIZE, max_batch=2, opt_batch=1, onnx_ops="fused")
        out[name] = (m, path)
    return out


@needs_nodes
@pytest.mark.parametrize("name", list(FUSED_EXPECTED))
def test_fused_graph_holds_exactly_the_expected_nodes(fused_graphs, name):
    model, path = fused_graphs[name]
    g = onnx.load(path)
    nodes = [n for n in g.graph.node if n.domain == FUSED_DOMAIN]
    assert sorted(n.op_type for n in nodes) == sorted(FUSED_EXPECTED[name]), [n.op_type for n in nodes]
    assert (FUSED_DOMAIN, 1) in [(o.domain, o.version) for o in g.opset_import]
    assert json.load(open(path + ".json"))["onnx_ops"] == "fused"
    shapes = _shapes(g)
    batch = g.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for n in nodes:
        assert len(n.attribute) == 0 and len(n.output) == 1
        want = FUSED_EXPECTED[name][n.op_type]
        if want is None:
            continue
        got = [shapes[i] for i in n.input]
        got = [["N" if d == batch or isinstance(d, str) else d for d in s] for s in got]
        assert got == want, (n.op_type, got)
    # Everything else is in TensorRT's parser set; the fastmlr nodes are what the plugins implement.
    assert donnx.unsupported_by_tensorrt(path, plugins=True) == []
    assert set(donnx.unsupported_by_tensorrt(path)) == {f"{FUSED_DOMAIN}::{op}" for op in FUSED_EXPECTED[name]}


@needs_nodes
@needs_ext
@pytest.mark.parametrize("name", list(FUSED_EXPECTED))
def test_onnxruntime_runs_the_fused_graph_like_pytorch(fused_graphs, name, capsys):
    model, path = fused_graphs[name]
    r = runtime.load(path, device="cpu")
    assert "fused nodes" in capsys.readouterr().err and r.provider.endswith("+fastmlr-pyops")
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = torch.sigmoid(model(x))
    logits, probs = r.run(x)
    torch.testing.assert_close(probs, want, atol=TOL[torch.float32][0], rtol=TOL[torch.float32][1])


def _session_spins(runner) -> bool:
    """What ONNX Runtime's own session options say (an unset key is ONNX Runtime's default: spinning)."""
    from fastmlr.runtime.onnx import SPIN_KEY

    try:
        return runner.session.get_session_options().get_session_config_entry(SPIN_KEY) != "0"
    except RuntimeError:  # "SessionOptions does not have configuration with key"
        return True


@needs_nodes
@needs_ext
def test_a_fused_graphs_threads_do_not_spin_unless_asked_and_a_standard_graphs_do(fused_graphs, tmp_path, capsys):
    """The fused graph's PyOps run torch's threads beside ONNX Runtime's: its pool does not spin by default."""
    model, path = fused_graphs["srdl"]
    assert not _session_spins(runtime.load(path, device="cpu", threads=2))
    assert _session_spins(runtime.load(path, device="cpu", threads=2, spin=True))
    std = str(tmp_path / "std.onnx")
    donnx.export_onnx(model, std, SIZE, max_batch=2, opt_batch=1, onnx_ops="standard")
    assert _session_spins(runtime.load(std, device="cpu"))
    off = runtime.load(std, device="cpu", spin=False)
    assert not _session_spins(off)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(off.run(x)[1], torch.sigmoid(model(x)), atol=TOL[torch.float32][0],
                                   rtol=TOL[torch.float32][1])


@needs_nodes
@needs_ext
def test_the_pyops_run_their_kernels_on_the_sleeping_pool_unless_told_not_to(fused_graphs, monkeypatch):
    """The kernels called from a PyOp run their loops on fastmlr's sleeping pool (fastmlr/ops/_threads.py):
    the switch is turned on around every fused node's call, put back after it, and left alone with
    onnx_fused.SLEEPING_POOL off; the probabilities are the model's either way."""
    from fastmlr.ops import _threads
    from fastmlr.runtime import onnx_fused

    real = _threads._switch()
    if real is None:
        pytest.skip("fastmlr._C is not built: no kernel reads the switch")
    calls = []

    def recording(on):
        calls.append(bool(on))
        return real(on)

    monkeypatch.setattr(_threads, "_switch", lambda: recording)
    model, path = fused_graphs["srdl"]
    r = runtime.load(path, device="cpu", threads=2)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = torch.sigmoid(model(x))
    for sleeping in (True, False):
        monkeypatch.setattr(onnx_fused, "SLEEPING_POOL", sleeping)
        calls.clear()
        probs = r.run(x)[1]
        # Two fused nodes (CarSpatialAttention, CarPool): switched to the setting, then back to off.
        assert calls == [sleeping, False] * 2, calls
        torch.testing.assert_close(probs, want, atol=TOL[torch.float32][0], rtol=TOL[torch.float32][1])


@needs_nodes
def test_a_fused_graph_without_the_extension_is_refused_with_the_documented_message(fused_graphs, monkeypatch):
    _, path = fused_graphs["srdl"]
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # import now raises ImportError
    with pytest.raises(ValueError) as e:
        runtime.load(path, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and path in msg
    assert "pip install onnxruntime-extensions" in msg and "--onnx-ops standard" in msg


@needs_nodes
def test_fp16_with_the_fused_op_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="standard op set only"):
        donnx.export_onnx_fp16(_model("srdl"), str(tmp_path / "x.fp16.onnx"), SIZE, images=None, onnx_ops="fused")


def test_unknown_op_set_is_refused_in_one_line(tmp_path):
    from fastmlr import export as ex

    with pytest.raises(SystemExit):
        ex.build_parser().parse_args(["--onnx-ops", "tiny"])
    with pytest.raises(ValueError, match="--onnx-ops must be one of standard, fused"):
        donnx.export_onnx(_model("srdl"), str(tmp_path / "x.onnx"), SIZE, onnx_ops="tiny")


@needs_ext
def test_fused_outputs_go_back_as_arrays_and_other_pyops_keep_the_library_callback(monkeypatch, capsys):
    """fastmlr's PyOps hand ONNX Runtime float32 arrays (onnxruntime_fused._install_array_outputs); a PyOp of
    anyone else in the same process still goes through onnxruntime-extensions' own callback, and runs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime_extensions import PyCustomOpDef, _ocos, get_library_path, onnx_op
    from onnxruntime_extensions._ocos import default_opset_domain

    from fastmlr.runtime import onnx_fused

    calls = []
    stock = _ocos._on_pyop_invocation

    def counting_stock(k_id, feed, attributes):
        calls.append(k_id)
        return stock(k_id, feed, attributes)

    monkeypatch.setattr(_ocos, "_on_pyop_invocation", counting_stock)

    @onnx_op(op_type="FastmlrTestTwice", inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
    def twice(x):
        return x * 2

    @onnx_op(op_type="FastmlrTestHalf", inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
    def half(x):
        return (x * 0.5).astype(np.float64)  # not float32: the array path must convert, as the lists did

    try:
        assert onnx_fused._install_array_outputs({half._id})
        dom = default_opset_domain()
        nodes = [helper.make_node("FastmlrTestTwice", ["x"], ["y"], domain=dom),
                 helper.make_node("FastmlrTestHalf", ["y"], ["z"], domain=dom)]
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 5]) for n in ("x", "z")]
        m = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:]),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(dom, 1)])
        opts = ort.SessionOptions()
        opts.register_custom_ops_library(get_library_path())
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = np.arange(15, dtype=np.float32).reshape(3, 5) - 7.25
        (z,) = sess.run(None, {"x": x})
        assert z.dtype == np.float32 and np.array_equal(z, x)  # (2 x) / 2, exact
        assert calls == [twice._id]  # only the other PyOp went through the library's callback
    finally:
        # Back to what the process had: fastmlr's callback for its own PyOps if they are registered.
        monkeypatch.undo()
        from fastmlr.deploy.onnx_ops import fused_node_types

        ours = {d._id for d in _ocos.Opdef._odlist.values() if d.op_type in fused_node_types()}
        if ours:
            onnx_fused._install_array_outputs(ours)
        else:
            PyCustomOpDef.install_hooker(_ocos._on_pyop_invocation)
    # Without the library internals it replaces: one line, nothing installed, and the lists stay.
    monkeypatch.delattr(_ocos, "_on_pyop_invocation")
    assert not onnx_fused._install_array_outputs(set())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Python lists" in err[0]
