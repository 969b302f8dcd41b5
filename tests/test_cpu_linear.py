"""fastmlr.models.cpu_linear: eager float32 CPU inference through oneDNN with the weight packed once.

Each result is bounded against a float64 product (the standard bound for a float32 dot product of
length K: K u sum|x w| plus the bias's rounding), so a wrong layout, a stale weight or a dropped bias
fails; where the packed path must not apply, the result must be exactly ``layer(x)`` and keep autograd.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from fastmlr.models import cpu_linear
from fastmlr.models.cpu_linear import _ATTR, applies, linear

pytestmark = pytest.mark.skipif(not cpu_linear.enabled(), reason="this torch build has no oneDNN (mkldnn)")

U32 = 2.0 ** -24


def _layer(din=96, dout=40, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(din, dout)


def _check_bound(y: torch.Tensor, layer: torch.nn.Linear, x: torch.Tensor):
    w, b = layer.weight.double(), layer.bias.double()
    x64 = x.double()
    want = x64 @ w.T + b
    scale = x64.abs() @ w.abs().T + b.abs()
    bound = (x.shape[-1] + 2) * U32 * scale
    err = (y.double() - want).abs()
    assert (err <= bound).all(), (err.max().item(), bound.min().item())


@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (2, 33, 96)])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_packed_path_is_the_linear_layer(shape, mode):
    layer = _layer()
    x = torch.randn(*shape)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        assert applies(layer, x)
        y = linear(layer, x)
    assert y.shape == (*shape[:-1], 40)
    assert _ATTR in layer.__dict__  # it ran the packed weight, not layer(x)
    _check_bound(y, layer, x)


def test_non_contiguous_input_as_srdl_passes_it():
    layer = _layer(64, 64)
    f = torch.randn(2, 64, 49)
    with torch.inference_mode():
        y = linear(layer, f.transpose(1, 2))
    _check_bound(y, layer, f.transpose(1, 2))


def test_without_bias():
    layer = torch.nn.Linear(50, 30, bias=False)
    x = torch.randn(5, 50)
    with torch.no_grad():
        y = linear(layer, x)
    want = x.double() @ layer.weight.double().T
    assert (y.double() - want).abs().max().item() <= 52 * U32 * (x.abs().double() @ layer.weight.abs().double().T).max().item()


def test_training_and_other_dtypes_are_layer_itself():
    layer = _layer()
    x = torch.randn(4, 96, requires_grad=True)
    assert not applies(layer, x)
    y = linear(layer, x)
    assert torch.equal(y, layer(x)) and y.requires_grad
    y.sum().backward()
    assert layer.weight.grad is not None and _ATTR not in layer.__dict__
    with torch.no_grad():
        x64 = x.detach().double()
        layer64 = copy.deepcopy(layer).double()
        assert not applies(layer64, x64)
        assert torch.equal(linear(layer64, x64), layer64(x64))


def test_cpu_autocast_keeps_its_own_linear():
    layer = _layer()
    x = torch.randn(4, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(layer, x)
        y = linear(layer, x)
        assert y.dtype == torch.bfloat16 and torch.equal(y, layer(x))


def test_a_changed_weight_is_packed_again():
    layer = _layer()
    x = torch.randn(6, 96)
    with torch.no_grad():
        first = linear(layer, x)
        layer.weight.mul_(-3.0)  # in place: the version counter moves
        _check_bound(linear(layer, x), layer, x)
        layer.weight.data.add_(0.5)  # through .data: the version counter does not move; the sample does
        _check_bound(linear(layer, x), layer, x)
        layer.load_state_dict(_layer(seed=1).state_dict())
        _check_bound(linear(layer, x), layer, x)
        layer.weight = torch.nn.Parameter(torch.randn(40, 96))  # replaced
        _check_bound(linear(layer, x), layer, x)
    assert not torch.allclose(first, linear(layer, x.clone()).detach())


def test_copies_and_pickles_leave_the_packed_weight_behind():
    layer = _layer()
    x = torch.randn(3, 96)
    with torch.no_grad():
        linear(layer, x)
    assert _ATTR in layer.__dict__
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.__dict__.get(_ATTR) is None
        with torch.no_grad():
            _check_bound(linear(clone, x), clone, x)
    buf = io.BytesIO()
    torch.save(layer, buf)
    cpu_linear.release(layer)
    assert _ATTR not in layer.__dict__


def test_switched_off_by_the_environment(monkeypatch):
    layer = _layer()
    monkeypatch.setenv("FASTMLR_PACKED_LINEAR", "0")
    with torch.no_grad():
        x = torch.randn(2, 96)
        assert not applies(layer, x)
        assert torch.equal(linear(layer, x), layer(x))


def test_traced_graphs_hold_aten_linear_not_onednn():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = _layer()

        def forward(self, x):
            return linear(self.lin, x)

    m = Head().eval()
    x = torch.randn(3, 96)
    with torch.no_grad():
        ep = torch.export.export(m, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("linear" in t for t in targets) and not any("mkldnn" in t for t in targets), targets
    with torch.no_grad():
        traced = torch.jit.trace(m, (x,))
    assert "mkldnn" not in str(traced.graph)  # (trace's own check then runs the module eagerly: packed there)
