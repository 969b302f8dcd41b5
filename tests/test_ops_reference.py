"""The reference ops against naive loops (tests/naive_ref.py), gradients, and the dispatch rules."""

import pytest
import torch

import fastmlr.ops as ops
from fastmlr.ops import reference

import naive_ref

SHAPES = [  # N, C, P, D
    (1, 1, 1, 1),
    (2, 3, 7, 5),
    (3, 1, 13, 4),
    (1, 5, 1, 9),
    (2, 4, 6, 33),
]


def _inputs(N, C, P, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, P, D, generator=g, dtype=dtype)
    wc = torch.randn(C, D, generator=g, dtype=dtype)
    s = torch.randn(D, generator=g, dtype=dtype) / D**0.5
    b = torch.randn((), generator=g, dtype=dtype)
    f = torch.randn(N, D, P, generator=g, dtype=dtype)
    sa = torch.rand(N, C, P, generator=g, dtype=dtype)
    ca = torch.rand(N, C, D, generator=g, dtype=dtype)
    return u, wc, s, b, f, sa, ca


@pytest.mark.parametrize("shape", SHAPES)
def test_spatial_attention_matches_loops(shape):
    u, wc, s, b, *_ = _inputs(*shape)
    got = ops.car_spatial_attention(u, wc, s, b, backend="reference")
    torch.testing.assert_close(got, naive_ref.spatial_attention(u, wc, s, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_car_pool_matches_loops(shape):
    *_, f, sa, ca = _inputs(*shape)
    got = ops.car_pool(f, sa, ca, backend="reference")
    torch.testing.assert_close(got, naive_ref.car_pool(f, sa, ca), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_gradcheck(shape):
    u, wc, s, b, f, sa, ca = (t.requires_grad_() for t in _inputs(*shape))
    assert torch.autograd.gradcheck(lambda *a: ops.car_spatial_attention(*a, backend="reference"), (u, wc, s, b))
    assert torch.autograd.gradcheck(lambda *a: ops.car_pool(*a, backend="reference"), (f, sa, ca))


@pytest.mark.parametrize("case", naive_ref.hand_maps(), ids=lambda c: c[0])
def test_oe_boxes_hand_made(case):
    name, m, alpha, expected = case
    # The naive reading and the vectorised reference both give the hand-worked answer.
    assert naive_ref.oe_box(m, alpha) == expected
    assert ops.oe_boxes(m[None, None], alpha, backend="reference")[0, 0].tolist() == expected


def test_oe_boxes_random_against_loops():
    g = torch.Generator().manual_seed(1)
    for H, W in [(1, 4), (3, 5), (7, 7), (14, 14)]:
        # Quantised values make ties and several maximal runs common.
        sa = (torch.rand(4, 3, H, W, generator=g) * 4).round() / 4
        for alpha in (0.3, 0.5, 0.9):
            torch.testing.assert_close(ops.oe_boxes(sa, alpha), naive_ref.oe_boxes(sa, alpha))


def test_oe_erase_and_gradient():
    g = torch.Generator().manual_seed(2)
    sa = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[[0, 2, 1, 3], [-1, -1, -1, -1], [5, 5, 4, 4]],
                          [[1, 1, 0, 0], [0, 5, 0, 4], [-1, -1, -1, -1]]])
    out = ops.oe_erase(sa, boxes)
    torch.testing.assert_close(out, naive_ref.oe_erase(sa.detach(), boxes))
    out.sum().backward()
    # Gradient 1 outside the boxes, 0 inside: the rectangle is a constant mask.
    torch.testing.assert_close(sa.grad, naive_ref.oe_erase(torch.ones_like(sa), boxes))
    assert torch.autograd.gradcheck(lambda x: ops.oe_erase(x, boxes), (sa,))


def test_shape_errors_name_the_shapes():
    u, wc, s, b, f, sa, ca = _inputs(2, 3, 7, 5)
    with pytest.raises(ValueError, match=r"wc must be \(C, 5\).*got \(3, 4\)"):
        ops.car_spatial_attention(u, wc[:, :4], s, b)
    with pytest.raises(ValueError, match=r"ca must be \(2, 3, 5\).*got \(2, 3, 4\)"):
        ops.car_pool(f, sa, ca[..., :4])
    with pytest.raises(ValueError, match="alpha must be in"):
        ops.oe_boxes(sa.reshape(2, 3, 7, 1), alpha=0.0)
    with pytest.raises(ValueError, match="int64"):
        ops.oe_erase(sa.reshape(2, 3, 7, 1), torch.zeros(2, 3, 4, dtype=torch.int32))


def test_dispatch_lists_every_backend_when_refusing(monkeypatch):
    u, wc, s, b, *_ = _inputs(1, 2, 3, 4)
    with pytest.raises(ops.BackendError) as e:
        ops.car_spatial_attention(u, wc, s, b, backend="no-such-backend")
    msg = str(e.value)
    assert "no-such-backend" in msg and "reference: accepts this call" in msg
    monkeypatch.setenv("FASTMLR_BACKEND", "no-such-backend")
    with pytest.raises(ops.BackendError):
        ops.car_pool(*_inputs(1, 2, 3, 4)[4:])
    monkeypatch.setenv("FASTMLR_BACKEND", "reference")
    torch.testing.assert_close(ops.car_spatial_attention(u, wc, s, b), reference.car_spatial_attention_ref(u, wc, s, b))
    assert "reference" in ops.available_backends("cpu")


def test_ops_report_lists_runs_and_refusals():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fastmlr.ops"], capture_output=True, text=True, check=True).stdout
    for op in ops.OPS:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(op + ":"))
        assert "reference" in line.split(";")[0], line
