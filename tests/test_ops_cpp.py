"""The C++/CUDA extension fastmlr._C ("cpp" backend) against the reference.

Forward and every gradient are compared with fastmlr.ops.reference evaluated
in float64; OE boxes also with a naive loop implementation of the rule written
here from docs/srdl.md. CUDA kernels cannot run on these machines: their tests
are marked ``gpu``; here only their registration and fake shapes are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:
    import fastmlr._C as _C
except ImportError as e:  # pragma: no cover - depends on the build
    pytest.skip(f"fastmlr._C is not built ({e})", allow_module_level=True)

from fastmlr import ops
from fastmlr.ops import _cpp, reference

OPS = torch.ops.fastmlr

# (atol, rtol) against the float64 reference. float32: eq. 5 sums D terms of
# s * tanh in float with a vectorised tanh (abs. error ~3e-8 each).
TOL = {torch.float32: (2e-5, 2e-4), torch.float64: (1e-10, 1e-8)}
DTYPES = list(TOL)

# (N, C, P, D): odd sizes, sizes of 1, a D that is not a multiple of the SIMD width.
CAR_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 5, 13, 33), (1, 5, 7, 33), (3, 1, 13, 1), (2, 3, 1, 5)]
MAP_SHAPES = [(1, 1, 1, 1), (2, 3, 3, 5), (3, 1, 7, 7), (1, 2, 5, 3)]

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and _cpp.has_cuda_kernels()),
    reason="needs an NVIDIA GPU and fastmlr._C built with CUDA",
)


def _car_inputs(N, C, P, D, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    u, wc, s, b = r(N, P, D), r(C, D), r(D, scale=0.5), r(scale=0.3)
    f, ca = r(N, D, P), torch.rand(N, C, D, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return u, wc, s, b, f, ca


def _close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


# ---------------------------------------------------------------- CAR: forward and gradients


def _check_car(shape, dtype, device):
    N, C, P, D = shape
    u, wc, s, b, f, ca = _car_inputs(N, C, P, D, dtype, device)
    x = _leaves(u, wc, s, b, f, ca)
    xr = _leaves(*(t.double().cpu() for t in (u, wc, s, b, f, ca)))

    sa = ops.car_spatial_attention(*x[:4], backend="cpp")
    sa_ref = reference.car_spatial_attention_ref(*xr[:4])
    _close(sa, sa_ref, dtype, "car_spatial_attention")
    # Pool the reference's own SA so that the pooling is compared on equal inputs.
    sa_in = sa_ref.detach().to(dtype=dtype, device=device).requires_grad_(True)
    sa_in_ref = sa_ref.detach().clone().requires_grad_(True)
    feat = ops.car_pool(x[4], sa_in, x[5], backend="cpp")
    feat_ref = reference.car_pool_ref(xr[4], sa_in_ref, xr[5])
    _close(feat, feat_ref, dtype, "car_pool")

    g = torch.Generator().manual_seed(1)
    g_sa = torch.randn(N, C, P, generator=g, dtype=torch.float64)
    g_feat = torch.randn(N, C, D, generator=g, dtype=torch.float64)
    (sa * g_sa.to(device=device, dtype=dtype)).sum().backward()
    (sa_ref * g_sa).sum().backward()
    (feat * g_feat.to(device=device, dtype=dtype)).sum().backward()
    (feat_ref * g_feat).sum().backward()
    for name, a, e in zip(("du", "dwc", "ds", "db"), x[:4], xr[:4]):
        _close(a.grad, e.grad, dtype, f"car_spatial_attention {name}")
    _close(x[4].grad, xr[4].grad, dtype, "car_pool df")
    _close(sa_in.grad, sa_in_ref.grad, dtype, "car_pool dsa")
    _close(x[5].grad, xr[5].grad, dtype, "car_pool dca")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CAR_SHAPES, ids=str)
def test_car_forward_backward_cpu(shape, dtype):
    _check_car(shape, dtype, "cpu")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CAR_SHAPES, ids=str)
def test_car_forward_backward_cuda(shape, dtype):
    _check_car(shape, dtype, "cuda")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_car_low_precision_cuda(dtype):
    # Bounded by the reference's own error in the same dtype (flash-attention style).
    u, wc, s, b, f, ca = _car_inputs(2, 5, 13, 64, dtype, "cuda")
    exact = reference.car_spatial_attention_ref(u.double(), wc.double(), s.double(), b.double())
    same = reference.car_spatial_attention_ref(u, wc, s, b).double()
    ours = ops.car_spatial_attention(u, wc, s, b, backend="cpp").double()
    assert (ours - exact).abs().max() <= 2 * (same - exact).abs().max() + 1e-3
    feat = ops.car_pool(f, same.to(dtype), ca, backend="cpp")
    torch.testing.assert_close(feat, reference.car_pool_ref(f, same.to(dtype), ca), atol=0, rtol=0)


def test_car_pool_exact_values_and_first_argmax():
    # feat is computed with the reference's rounding: equal, not just close.
    u, wc, s, b, f, ca = _car_inputs(2, 3, 13, 33, torch.float32)
    sa = torch.rand(2, 3, 13)
    feat, idx = OPS.car_pool(f, sa, ca)
    torch.testing.assert_close(feat, reference.car_pool_ref(f, sa, ca), atol=0, rtol=0)
    # Exact ties: every p gives the same value, so the first p (0) is kept and
    # the whole gradient goes there (torch.amax would split it evenly).
    f1 = torch.ones(1, 4, 5)
    sa1 = torch.full((1, 2, 5), 0.25)
    ca1 = torch.rand(1, 2, 4)
    feat1, idx1 = OPS.car_pool(f1, sa1, ca1)
    assert torch.equal(idx1, torch.zeros_like(idx1))
    sa1.requires_grad_(True)
    OPS.car_pool(f1, sa1, ca1)[0].sum().backward()
    assert torch.all(sa1.grad[..., 0] == 2.0) and torch.all(sa1.grad[..., 1:] == 0)


def test_car_non_contiguous_inputs():
    u, wc, s, b, f, ca = _car_inputs(2, 3, 7, 5, torch.float64)
    u_nc = u.transpose(1, 2).contiguous().transpose(1, 2)
    f_nc = f.transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_nc.is_contiguous() and not f_nc.is_contiguous()
    _close(OPS.car_spatial_attention(u_nc, wc, s, b), reference.car_spatial_attention_ref(u, wc, s, b),
           torch.float64, "non-contiguous u")
    sa = torch.rand(2, 3, 7, dtype=torch.float64)
    _close(OPS.car_pool(f_nc, sa, ca)[0], reference.car_pool_ref(f, sa, ca), torch.float64, "non-contiguous f")


def test_gradcheck_float64():
    u, wc, s, b, f, ca = _car_inputs(2, 3, 5, 4, torch.float64, seed=3)
    assert torch.autograd.gradcheck(OPS.car_spatial_attention, _leaves(u, wc, s, b))
    sa = torch.rand(2, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: OPS.car_pool(*a)[0], _leaves(f, sa, ca))
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    boxes = OPS.oe_boxes(maps, 0.5)
    assert torch.autograd.gradcheck(lambda m: OPS.oe_erase(m, boxes), _leaves(maps))


# ---------------------------------------------------------------- OE: a naive rule and the op


def _naive_run(m: np.ndarray, alpha: float):
    """The OE rule on one marginal, written as plainly as docs/srdl.md states it.

    Arithmetic in m's dtype (numpy scalars), as the reference does it in the
    tensor's dtype. Returns (start, end) inclusive, or None when flat.
    """
    t = m.dtype.type
    lo, hi = min(m), max(m)
    rng = t(hi - lo)
    if rng <= t(reference.FLAT_EPS):
        return None
    on = [t(t(v - lo) / rng) >= t(alpha) for v in m]
    runs, i = [], 0
    while i < len(m):
        if on[i]:
            j = i
            while j + 1 < len(m) and on[j + 1]:
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    with_max = [(a, e) for a, e in runs if any(m[k] == hi for k in range(a, e + 1))]
    widest = max(e - a + 1 for a, e in with_max)
    return next((a, e) for a, e in with_max if e - a + 1 == widest)


def _naive_boxes(sa: torch.Tensor, alpha: float) -> torch.Tensor:
    N, K, H, W = sa.shape
    out = torch.empty(N, K, 4, dtype=torch.int64)
    a = sa.numpy()
    for n in range(N):
        for k in range(K):
            x = _naive_run(a[n, k].max(axis=0), alpha)  # over y: one value per x (along W)
            y = _naive_run(a[n, k].max(axis=1), alpha)
            out[n, k] = torch.tensor([-1] * 4 if x is None or y is None else [*x, *y])
    return out


def _oe_cases(dtype):
    """Maps named by what they exercise."""
    cases = {}
    # Two maximal runs of equal height: the wider (second) one wins.
    m = torch.zeros(1, 1, 3, 9)
    m[0, 0, 1, [1, 5, 6, 7]] = 1.0
    cases["widest max run wins"] = m
    # Two maximal runs of equal width: the first wins.
    m = torch.zeros(1, 1, 4, 8)
    m[0, 0, 2, [1, 2, 5, 6]] = 1.0
    cases["first of equal runs"] = m
    # A wide run above alpha without the maximum loses to a narrow one with it.
    m = torch.zeros(1, 1, 2, 10)
    m[0, 0, 0, 0:5] = 0.8
    m[0, 0, 0, 8] = 1.0
    cases["run must contain the max"] = m
    # Runs touching both edges, maximum at the last index.
    m = torch.zeros(1, 1, 5, 6)
    m[0, 0, 0, 0:2] = 0.9
    m[0, 0, 4, 4:6] = 1.0
    m[0, 0, 0:5, 5] = 1.0
    cases["runs at the edges"] = m
    # Flat: constant map; and flat along one axis only (a full row of maxima).
    cases["flat map"] = torch.full((1, 2, 4, 4), 0.3)
    m = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(2)) * 0.5
    m[0, 0, 2, :] = 1.0
    cases["flat along x"] = m
    cases["tiny range is flat"] = torch.full((1, 1, 3, 3), 0.5) + torch.eye(3)[None, None] * 5e-7
    cases["1x1 map"] = torch.rand(2, 2, 1, 1)
    # Several runs that all hold the maximum, of widths 1, 3, 2.
    m = torch.zeros(1, 1, 1, 12)
    m[0, 0, 0, [0, 3, 4, 5, 8, 9]] = 1.0
    cases["several max runs"] = m
    g = torch.Generator().manual_seed(7)
    cases["random 3x5"] = torch.rand(3, 4, 3, 5, generator=g)
    cases["random 7x7"] = torch.rand(2, 3, 7, 7, generator=g)
    cases["random 14x14 quantised"] = (torch.rand(2, 3, 14, 14, generator=g) * 4).round() / 4  # many exact ties
    return {k: v.to(dtype) for k, v in cases.items()}


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_oe_boxes_rule(dtype, alpha):
    for name, sa in _oe_cases(dtype).items():
        got = ops.oe_boxes(sa, alpha, backend="cpp")
        assert got.dtype == torch.int64 and got.shape == (*sa.shape[:2], 4)
        naive = _naive_boxes(sa, alpha)
        assert torch.equal(got, naive), f"{name} (alpha={alpha}): cpp {got.tolist()} naive {naive.tolist()}"
        assert torch.equal(got, reference.oe_boxes_ref(sa, alpha)), f"{name}: cpp differs from reference"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_oe_boxes_low_precision_matches_reference(dtype):
    # The normalisation is rounded to the map's dtype at each step, as the reference's ops round it.
    g = torch.Generator().manual_seed(11)
    for sa in [*_oe_cases(dtype).values(), torch.rand(4, 3, 14, 14, generator=g).to(dtype)]:
        for alpha in (0.5, 0.3, 0.7):
            assert torch.equal(ops.oe_boxes(sa, alpha, backend="cpp"), reference.oe_boxes_ref(sa, alpha))


def test_oe_boxes_expected_rectangles():
    # Hand-derived from the rule, independent of any implementation.
    cases = _oe_cases(torch.float32)
    assert ops.oe_boxes(cases["widest max run wins"], backend="cpp").tolist() == [[[5, 7, 1, 1]]]
    assert ops.oe_boxes(cases["first of equal runs"], backend="cpp").tolist() == [[[1, 2, 2, 2]]]
    assert ops.oe_boxes(cases["run must contain the max"], backend="cpp").tolist() == [[[8, 8, 0, 0]]]
    assert ops.oe_boxes(cases["flat map"], backend="cpp").tolist() == [[[-1] * 4] * 2]
    assert ops.oe_boxes(cases["flat along x"], backend="cpp").tolist() == [[[-1] * 4]]
    assert ops.oe_boxes(cases["several max runs"], backend="cpp").tolist() == [[[-1] * 4]]  # H = 1: y is flat


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", MAP_SHAPES, ids=str)
def test_oe_erase_and_gradient(shape, dtype):
    N, K, H, W = shape
    g = torch.Generator().manual_seed(5)
    sa = torch.rand(shape, generator=g).to(dtype)
    boxes = torch.randint(-1, max(H, W), (N, K, 4), generator=g)
    boxes[0, 0] = -1  # a row that erases nothing
    x = sa.clone().requires_grad_(True)
    out = ops.oe_erase(x, boxes, backend="cpp")
    # Explicit loops: an element is kept unless it lies in its inclusive box.
    expected = sa.clone()
    for n in range(N):
        for k in range(K):
            x0, x1, y0, y1 = boxes[n, k].tolist()
            for yy in range(H):
                for xx in range(W):
                    if x0 <= xx <= x1 and y0 <= yy <= y1:
                        expected[n, k, yy, xx] = 0
    assert torch.equal(out.detach(), expected)
    assert torch.equal(out.detach(), reference.oe_erase_ref(sa, boxes))
    gout = torch.rand(shape, generator=g).to(dtype)
    out.backward(gout)
    assert torch.equal(x.grad, reference.oe_erase_ref(gout, boxes))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16, torch.bfloat16], ids=str)
def test_oe_cuda_matches_cpu(dtype):
    for name, sa in _oe_cases(dtype).items():
        got = ops.oe_boxes(sa.cuda(), 0.5, backend="cpp").cpu()
        assert torch.equal(got, reference.oe_boxes_ref(sa, 0.5)), name
        assert torch.equal(ops.oe_erase(sa.cuda(), got.cuda(), backend="cpp").cpu(), reference.oe_erase_ref(sa, got))


# ---------------------------------------------------------------- the library machinery


def _opcheck_samples(requires_grad: bool):
    u, wc, s, b, f, ca = _car_inputs(2, 3, 5, 4, torch.float64)
    sa = torch.rand(2, 3, 5, dtype=torch.float64)
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    boxes = OPS.oe_boxes(maps, 0.5)

    def rg(*ts):
        return [t.clone().requires_grad_(requires_grad) for t in ts]

    out = OPS.car_spatial_attention(u, wc, s, b)
    _, idx = OPS.car_pool(f, sa, ca)
    yield OPS.car_spatial_attention.default, (*rg(u, wc, s, b),)
    yield OPS.car_pool.default, (*rg(f, sa, ca),)
    yield OPS.oe_boxes.default, (maps, 0.5)
    yield OPS.oe_erase.default, (*rg(maps), boxes)
    if not requires_grad:  # the backward ops have no derivative of their own
        yield OPS.car_spatial_attention_backward.default, (torch.rand_like(out), u, wc, s, b, out)
        yield OPS.car_pool_backward.default, (torch.rand(2, 3, 4, dtype=torch.float64), f, sa, ca, idx)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for op, args in _opcheck_samples(requires_grad):
        torch.library.opcheck(op, args)


def test_fake_tensors_on_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        u = torch.empty(2, 7, 5, device="cuda", dtype=torch.float16)
        wc = torch.empty(3, 5, device="cuda", dtype=torch.float16)
        s = torch.empty(5, device="cuda", dtype=torch.float16)
        b = torch.empty((), device="cuda", dtype=torch.float16)
        f = torch.empty(2, 5, 7, device="cuda", dtype=torch.float16)
        ca = torch.empty(2, 3, 5, device="cuda", dtype=torch.float16)
        sa = OPS.car_spatial_attention(u, wc, s, b)
        feat, idx = OPS.car_pool(f, sa, ca)
        maps = sa.reshape(2, 3, 7, 1)
        boxes = OPS.oe_boxes(maps, 0.5)
        erased = OPS.oe_erase(maps, boxes)
        grads = OPS.car_spatial_attention_backward(sa, u, wc, s, b, sa)
        pgrads = OPS.car_pool_backward(feat, f, sa, ca, idx)
    assert sa.shape == (2, 3, 7) and sa.device.type == "cuda" and sa.dtype == torch.float16
    assert feat.shape == (2, 3, 5) and idx.dtype == torch.int64 and idx.device.type == "cuda"
    assert boxes.shape == (2, 3, 4) and boxes.dtype == torch.int64
    assert erased.shape == maps.shape
    assert [g.shape for g in grads] == [u.shape, wc.shape, s.shape, b.shape]
    assert [g.shape for g in pgrads] == [f.shape, sa.shape, ca.shape]


def test_cuda_kernels_registered_when_built_with_cuda():
    names = ["car_spatial_attention", "car_spatial_attention_backward", "car_pool", "car_pool_backward",
             "oe_boxes", "oe_erase"]
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmlr::{name}", "CPU"), name
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmlr::{name}", "CUDA")
        assert has == bool(_C.with_cuda), f"{name}: CUDA kernel {has}, built with CUDA {bool(_C.with_cuda)}"
    if not _C.with_cuda:
        reason = _cpp._why_not("car_pool", "cuda", (torch.empty(1, device="meta"),))
        assert reason and "without CUDA" in reason


def test_torch_compile_matches_eager():
    def head(u, wc, s, b, f, ca):
        sa = ops.car_spatial_attention(u, wc, s, b, backend="cpp")
        N, C, P = sa.shape
        maps = sa.reshape(N, C, 3, P // 3)
        boxes = ops.oe_boxes(maps, 0.5, backend="cpp")
        erased = ops.oe_erase(maps, boxes, backend="cpp").reshape(N, C, P)
        return ops.car_pool(f, sa, ca, backend="cpp") + ops.car_pool(f, erased, ca, backend="cpp")

    u, wc, s, b, f, ca = _car_inputs(2, 3, 9, 5, torch.float32)
    eager_in, comp_in = _leaves(u, wc, s, b, f, ca), _leaves(u, wc, s, b, f, ca)
    eager = head(*eager_in)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")(*comp_in)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    eager.sum().backward()
    compiled.sum().backward()
    for a, e in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, e.grad, atol=0, rtol=0)


# ---------------------------------------------------------------- errors a user can cause


def test_torch_check_messages():
    f = torch.rand(2, 7, 4)
    sa = torch.rand(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"car_pool: ca must have shape \[N, C, D\] = \[2, 3, 7\], got \[2, 3, 5\]"):
        OPS.car_pool(f, sa, torch.rand(2, 3, 5))
    with pytest.raises(RuntimeError, match=r"car_pool: sa has dtype Double but f has Float"):
        OPS.car_pool(f, sa.double(), torch.rand(2, 3, 7))
    with pytest.raises(RuntimeError, match=r"car_spatial_attention: s must have shape \[D\] = \[5\], got \[4\]"):
        OPS.car_spatial_attention(torch.rand(2, 7, 5), torch.rand(3, 5), torch.rand(4), torch.rand(()))
    msg = r"car_spatial_attention: u must have shape \[N, P, D\] \(3 dims\), got \[7, 5\]"
    with pytest.raises(RuntimeError, match=msg):
        OPS.car_spatial_attention(torch.rand(7, 5), torch.rand(3, 5), torch.rand(5), torch.rand(()))
    with pytest.raises(RuntimeError, match=r"oe_erase: boxes must be int64, got Int"):
        OPS.oe_erase(torch.rand(1, 2, 3, 3), torch.zeros(1, 2, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"oe_boxes: alpha must be in \(0, 1\], got 1.5"):
        OPS.oe_boxes(torch.rand(1, 2, 3, 3), 1.5)


def test_dispatch_error_lists_backends():
    u, wc, s, b, f, ca = _car_inputs(1, 2, 3, 4, torch.float16)
    with pytest.raises(ops.BackendError) as err:
        ops.car_spatial_attention(u, wc, s, b, backend="cpp")
    msg = str(err.value)
    assert "car_spatial_attention on cpu supports float32, float64, got float16" in msg
    assert "  cpp:" in msg and "  reference:" in msg
    assert "cpp" in ops.available_backends("cpu")
