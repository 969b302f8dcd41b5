"""car_spatial_attention (SRDL eq. 5) and car_pool (eq. 6 + GMP) on every backend, device and dtype.

Definitions: fastmlr/ops/__init__.py (API), fastmlr/ops/reference.py; implementations:
csrc/ (cpp), fastmlr/kernels/car_attention.py and car_pooling.py (triton). Held to naive float64 loops (naive_ref) and
to the float64 reference's autograd, within ops_common.TOL.
"""

import pytest
import torch

import naive_ref
from fastmlr import ops
from fastmlr.ops import reference
from ops_common import (EXACT, LOW, cases, check_low_precision, close, grads_against_reference, pool_inputs,
                        sa_inputs)

# (N, C, P, D): sizes of 1, odd sizes, a D that is not a multiple of a SIMD width, blocks that are
# ragged against the Triton interpreter's 16 (several blocks per axis).
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 5, 13, 33), (3, 1, 13, 4), (1, 5, 1, 9), (2, 4, 6, 33),
          (3, 1, 17, 33), (2, 18, 20, 40), (1, 17, 33, 5), (2, 3, 1, 35)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", cases("car_spatial_attention"))
def test_spatial_attention_forward_and_gradients(case, shape):
    N, C, P, D = shape
    raw = sa_inputs(*shape)
    out, grads, ref, ref_grads, terms = grads_against_reference(case, "car_spatial_attention",
                                                                reference.car_spatial_attention_ref, raw)
    assert out.device.type == case.device and out.shape == (N, C, P)
    close(out, naive_ref.spatial_attention(*(t.to(case.dtype) for t in raw)), case.dtype, "SA vs loops")
    close(out, ref, case.dtype, "SA")
    for name, got, want, size in zip(("du", "dwc", "ds", "db"), grads, ref_grads, terms):
        close(got, want, case.dtype, name, terms=size)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", cases("car_pool"))
def test_car_pool_forward_and_gradients(case, shape):
    N, C, P, D = shape
    raw = pool_inputs(*shape)
    # Random data: no ties, so amax's gradient is the argmax's.
    out, grads, ref, ref_grads, terms = grads_against_reference(case, "car_pool", reference.car_pool_ref, raw)
    assert out.device.type == case.device and out.shape == (N, C, D)
    close(out, naive_ref.car_pool(*(t.to(case.dtype) for t in raw)), case.dtype, "feat vs loops")
    close(out, ref, case.dtype, "feat")
    for name, got, want, size in zip(("df", "dsa", "dca"), grads, ref_grads, terms):
        close(got, want, case.dtype, name, terms=size)


def _gradcheck_params():
    # The Triton interpreter runs every finite difference through every program: its CPU cases
    # take the shapes up to 40 elements (the larger ones cost minutes there).
    shapes = [(1, 1, 1, 1), (2, 3, 7, 5), (3, 1, 13, 4), (2, 3, 5, 4)]
    out = []
    for p in cases("car_pool", dtypes=(torch.float64,)):
        case = p.values[0]
        for shape in shapes:
            if case.backend == "triton" and case.device == "cpu" and shape[0] * shape[1] * shape[2] * shape[3] > 40:
                continue
            out.append(pytest.param(case, shape, id=f"{p.id}-{shape}", marks=p.marks))
    return out


@pytest.mark.parametrize("case,shape", _gradcheck_params())
def test_gradcheck_float64(case, shape):
    sa_in = [t.to(case.device).requires_grad_() for t in sa_inputs(*shape, seed=3)]
    assert torch.autograd.gradcheck(lambda *a: case.call("car_spatial_attention", *a), sa_in)
    pool_in = [t.to(case.device).requires_grad_() for t in pool_inputs(*shape, seed=3)]
    assert torch.autograd.gradcheck(lambda *a: case.call("car_pool", *a), pool_in)


@pytest.mark.parametrize("case", cases("car_pool", dtypes=LOW) + cases("car_pool", dtypes=EXACT, devices=("cuda",)))
def test_within_torch_error(case):
    """float16 / bfloat16 (accumulated in fp32 by the fused kernels), and the paper's sizes on a GPU:
    no worse than twice PyTorch's own error in the same dtype plus a floor (ops_common)."""
    shapes = [(2, 18, 20, 40)] if case.device == "cpu" else [(2, 20, 196, 512), (3, 7, 49, 300), (1, 1, 1, 1)]
    for shape in shapes:
        check_low_precision(case, "car_spatial_attention", reference.car_spatial_attention_ref, sa_inputs(*shape))
        check_low_precision(case, "car_pool", reference.car_pool_ref, pool_inputs(*shape))


def test_shape_errors_name_the_shapes():
    u, wc, s, b = sa_inputs(2, 3, 7, 5)
    f, sa, ca = pool_inputs(2, 3, 7, 5)
    with pytest.raises(ValueError, match=r"wc must be \(C, 5\).*got \(3, 4\)"):
        ops.car_spatial_attention(u, wc[:, :4], s, b)
    with pytest.raises(ValueError, match=r"ca must be \(2, 3, 5\).*got \(2, 3, 4\)"):
        ops.car_pool(f, sa, ca[..., :4])


def test_dispatch_lists_every_backend_when_refusing(monkeypatch):
    u, wc, s, b = sa_inputs(1, 2, 3, 4)
    with pytest.raises(ops.BackendError) as e:
        ops.car_spatial_attention(u, wc, s, b, backend="no-such-backend")
    msg = str(e.value)
    assert "no-such-backend" in msg and "reference: accepts this call" in msg
    monkeypatch.setenv("FASTMLR_BACKEND", "no-such-backend")
    with pytest.raises(ops.BackendError):
        ops.car_pool(*pool_inputs(1, 2, 3, 4))
    monkeypatch.setenv("FASTMLR_BACKEND", "reference")
    torch.testing.assert_close(ops.car_spatial_attention(u, wc, s, b), reference.car_spatial_attention_ref(u, wc, s, b))
    assert "reference" in ops.available_backends("cpu")


NAN, INF = float("nan"), float("inf")


def _nan_pool_inputs(dtype):
    """f, sa, ca with NaN at chosen places (first, middle, last position, every position, in sa) and infinities."""
    f, sa, ca = pool_inputs(2, 3, 37, 5, seed=7)  # P = 37: more than one Triton block of positions
    f[0, 0, 0] = NAN  # first position: every c of (n=0, k=0)
    f[0, 1, 18] = NAN  # middle
    f[1, 2, 36] = NAN  # last
    f[1, 3, :] = NAN  # every position
    sa[1, 1, 5] = NAN  # in the spatial attention: every k of (n=1, c=1)
    f[0, 4, 3], f[1, 4, 9] = INF, -INF  # infinities are values: +inf wins, -inf loses
    return [t.to(dtype) for t in (f, sa, ca)]


@pytest.mark.parametrize("case", cases("car_pool"))
def test_car_pool_nan_propagates_on_every_backend(case):
    """The documented rule (fastmlr.ops.car_pool): NaN where any term is NaN, as torch.amax; infinities as values."""
    f, sa, ca = _nan_pool_inputs(case.dtype)
    want = naive_ref.car_pool(f, sa, ca)  # float64 loops with the same rule
    got = case.call("car_pool", *(t.to(case.device) for t in (f, sa, ca))).cpu()
    nan = torch.isnan(want)
    assert nan[0, :, 0].all() and nan[0, :, 1].all() and nan[1, :, 2].all() and nan[1, :, 3].all() and nan[1, 1].all()
    assert torch.equal(torch.isnan(got), nan), f"{case}: NaN at {torch.isnan(got).nonzero().tolist()}"
    assert got[0, :, 4].isinf().all() and (got[0, :, 4] > 0).all()
    close(torch.where(nan, 0.0, got.double()).to(case.dtype), torch.where(nan, 0.0, want), case.dtype, str(case))
