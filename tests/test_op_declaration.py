"""Adding an op is one declaration (README "Extending fastmlr"): done here once, for a throwaway op.

The op is declared through the public API only (``fastmlr.ops.declare``), with one
implementation, its reference, plus the decomposition and the ONNX node it declares.
No other module is edited, yet the dispatcher runs it and reports on it, autocast
applies its rule, and both ONNX op sets export it: the standard set through its
decomposition, the fused set as one node of the fastmlr domain. Also checked against the
built-in ops: every declaration's example inputs give the declared output shape.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fastmlr import ops

NAME = "toy_weighted_sum"


def toy_weighted_sum_ref(x, w):
    """out[n, i] = sum_k w[k] * x[n, i, k]: a tiny op with a parameter and a reduction."""
    return torch.matmul(x, w)


def toy_weighted_sum_dec(x, w):
    return (x * w).sum(dim=-1)  # Mul and ReduceSum: standard ONNX


def toy_weighted_sum(x, w, *, backend=None):
    if x.dim() != 3 or w.shape != (x.shape[2],):
        raise ValueError(f"{NAME}: x must be (N, C, K) and w (K,), got {tuple(x.shape)} and {tuple(w.shape)}")
    return ops.dispatch(NAME, (x, w), backend, same_dtype=("x", "w"))


def _examples(size, gen):
    n, c, k = (2, 3, 5) if size == "small" else (16, 80, 512)
    return torch.randn(n, c, k, generator=gen), torch.randn(k, generator=gen)


@pytest.fixture
def toy():
    spec = ops.declare(ops.OpSpec(
        name=NAME,
        schema=f"{NAME}(Tensor x, Tensor w) -> Tensor",
        reference=toy_weighted_sum_ref,
        autocast="fp32",
        output_shape=lambda shapes: (shapes[0][0], shapes[0][1]),
        function=toy_weighted_sum,
        make_examples=_examples,
        decomposition=toy_weighted_sum_dec,
        onnx=ops.OnnxNode("ToyWeightedSum", ("x", "w"), "y"),
    ))
    yield spec
    ops.withdraw(NAME)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 5))

    def forward(self, x):
        return torch.sigmoid(toy_weighted_sum(x, self.w))


def test_the_dispatcher_runs_and_reports_a_declared_op(toy):
    assert ops.spec(NAME) is toy and toy in ops.specs()
    x, w = toy.example_inputs()
    expected = torch.einsum("nck,k->nc", x.double(), w.double())  # independent of the reference's matmul
    torch.testing.assert_close(toy_weighted_sum(x, w).double(), expected, rtol=1e-5, atol=1e-5)
    assert ops.select(NAME, (x, w)).name == "reference"  # the only implementation that runs it automatically
    rows = {r.name: r for r in ops.backend_status("cpu", NAME)}
    assert rows["reference"].runs and rows["decomposed"].runs
    assert not rows["cpp"].runs and "does not implement toy_weighted_sum" in rows["cpp"].reason
    with pytest.raises(ops.BackendError, match="backend 'cpp' cannot run toy_weighted_sum"):
        toy_weighted_sum(x, w, backend="cpp")
    torch.testing.assert_close(toy_weighted_sum(x, w, backend="decomposed").double(), expected, rtol=1e-5, atol=1e-5)
    assert tuple(toy_weighted_sum(x, w).shape) == toy.output_shape([x.shape, w.shape])
    with pytest.raises(ValueError, match="toy_weighted_sum: x must be"):
        toy_weighted_sum(x[0], w)


def test_autocast_applies_the_declared_rule(toy):
    seen = []

    def spy(x, w):
        seen.append((x.dtype, w.dtype, torch.is_autocast_enabled("cpu")))
        return toy_weighted_sum_ref(x, w)

    backend = ops.Backend("toy_spy", impls={NAME: spy}, priority={"cpu": 10_000})
    from fastmlr.ops import _dispatch

    _dispatch._BACKENDS["toy_spy"] = backend
    try:
        x, w = toy.example_inputs()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = toy_weighted_sum(x.bfloat16(), w, backend="toy_spy")
    finally:
        del _dispatch._BACKENDS["toy_spy"]
    # "fp32": bfloat16 activations and a float32 parameter both reach the op as float32, autocast off inside.
    assert seen == [(torch.float32, torch.float32, False)] and out.dtype == torch.float32
    assert ops.AUTOCAST_RULES[NAME] == "fp32"


@pytest.mark.slow
def test_both_onnx_op_sets_export_a_declared_op(toy, tmp_path):
    pytest.importorskip("onnxscript")
    from fastmlr.deploy import onnx_ops

    model = _Model().eval()
    x = toy.example_inputs()[0]
    with torch.no_grad():
        expected = model(x).numpy()
    for op_set in ("standard", "fused"):
        backend = onnx_ops.trace_backend(op_set)
        table = onnx_ops.translation_table() if op_set == "fused" else None
        with ops.use_backend(backend), torch.no_grad():
            proto = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, input_names=["x"],
                                      custom_translation_table=table, verbose=False).model_proto
        nodes = [(n.domain, n.op_type) for n in proto.graph.node]
        if op_set == "standard":
            assert all(d in ("", "ai.onnx") for d, _ in nodes) and ("", "ReduceSum") in nodes, nodes
            got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.numpy()})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        else:
            assert ("fastmlr", "ToyWeightedSum") in nodes, nodes
            onnx_ops.check_fused_nodes(proto)
            toy_node = next(n for n in proto.graph.node if n.op_type == "ToyWeightedSum")
            assert len(toy_node.input) == 2 and len(toy_node.output) == 1


@pytest.mark.parametrize("size", ["small", "paper"])
def test_every_declaration_gives_its_output_shape(size):
    for spec in ops.specs():
        args = spec.example_inputs("meta" if size == "paper" else "cpu", torch.float32, size)
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        if size == "small":
            out = spec.function(*args, backend="reference")
            assert tuple(out.shape) == tuple(spec.output_shape(shapes)), spec.name
            continue
        # Paper size: the declared shapes, on meta tensors through the reference (nothing is allocated).
        out = spec.reference(*args)
        assert tuple(out.shape) == tuple(spec.output_shape(shapes)), spec.name
    car = ops.spec("car_spatial_attention").example_inputs("meta", size="paper")
    assert [tuple(t.shape) for t in car] == [(16, 196, 2048), (80, 2048), (2048,), ()]
