"""second_order_pool (AAMN's channel covariance) on every backend, device and dtype.

Definitions: fastmlr/ops/__init__.py, fastmlr/ops/reference.py; implementation:
fastmlr/kernels/mlr_extra.py (triton; the C++ extension has none). Held to naive float64
loops (naive_ref.covariance) and to the float64 reference's autograd, within ops_common.TOL.
"""

import pytest
import torch

import naive_ref
from fastmlr import ops
from fastmlr.ops import reference
from ops_common import EXACT, LOW, cases, check_low_precision, close, grads_against_reference

# (N, D, P): D = 1 and P = 1 (covariance 0), blocks ragged against the interpreter's 16.
SHAPES = [(1, 1, 1), (2, 3, 7), (3, 5, 1), (1, 6, 13), (2, 19, 21), (1, 1, 33), (2, 33, 17), (1, 18, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", cases("second_order_pool"))
def test_matches_loops_and_reference_gradient(case, shape):
    g = torch.Generator().manual_seed(0)
    # An offset, so the means are far from 0 and centring matters.
    raw = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1
    out, (dx,), ref, (dxr,), (terms,) = grads_against_reference(case, "second_order_pool",
                                                                 reference.second_order_pool_ref, (raw,))
    close(out, naive_ref.covariance(raw.to(case.dtype)), case.dtype, "cov vs loops")
    close(out, ref, case.dtype, "cov")
    close(dx, dxr, case.dtype, "dx", terms=terms)  # the reference differentiates through the means too
    # sum_p dx[n,i,p] = 1/P sum_j H_ij sum_p xc_jp = 0: the means' gradient had nothing to add. The
    # sum cancels terms of the size of dx's own terms, so its rounding scales with their sum.
    close(dx.sum(2), torch.zeros(shape[:2], dtype=torch.float64), case.dtype, "sum_p dx", terms=terms.sum(2))


@pytest.mark.parametrize("case", cases("second_order_pool", dtypes=(torch.float32,)))
def test_hand_worked(case):
    # Channel 0: [1, 3] (mean 2, var 1); channel 1: [4, 0] (mean 2, var 4); covariance -2.
    x = torch.tensor([[[1.0, 3.0], [4.0, 0.0]]], device=case.device)
    torch.testing.assert_close(case.call("second_order_pool", x).cpu(), torch.tensor([[[1.0, -2.0], [-2.0, 4.0]]]))


@pytest.mark.parametrize("case", cases("second_order_pool", dtypes=(torch.float64,)))
def test_gradcheck_finite_differences(case):
    """The backward (hand-derived in the kernels: mean term dropped) against finite differences."""
    for seed, shape, offset in ((2, (2, 3, 5), 0.0), (3, (2, 3, 4), 1.0)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + offset
        x = x.to(case.device).requires_grad_()
        assert torch.autograd.gradcheck(lambda t: case.call("second_order_pool", t), (x,))


@pytest.mark.parametrize("case", cases("second_order_pool", dtypes=LOW)
                         + cases("second_order_pool", dtypes=EXACT, devices=("cuda",)))
def test_low_precision_within_torch_error(case):
    shapes = [(2, 19, 21)] if case.device == "cpu" else [(2, 512, 196), (3, 70, 49), (1, 1, 1)]
    for shape in shapes:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 1.0
        check_low_precision(case, "second_order_pool", reference.second_order_pool_ref, (x,))


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"x must be \(N, D, P\), got shape \(3, 4\)"):
        ops.second_order_pool(torch.zeros(3, 4))
    with pytest.raises(ops.BackendError, match="no such backend"):
        ops.second_order_pool(torch.zeros(1, 2, 3), backend="nonexistent")
