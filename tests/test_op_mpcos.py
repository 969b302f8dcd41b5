"""multi_perspective_cosine (MMDSR's dynamic graph) on every backend, device and dtype.

Definitions: fastmlr/ops/__init__.py, fastmlr/ops/reference.py; implementation:
fastmlr/kernels/mlr_extra.py (triton; the C++ extension has none). Held to naive float64
loops (naive_ref.mp_cosine, mp_cosine_grad) and to the float64 reference's autograd, within ops_common.TOL,
widened for gradients to the size of the terms they cancel (ops_common.close).
"""

import pytest
import torch

import naive_ref
from fastmlr import ops
from fastmlr.ops import reference
from ops_common import EXACT, LOW, cases, check_low_precision, close, grads_against_reference

# (N, C, D, K): everything 1, C = 1, D = 1 (every cosine is +-1), K = 1, ragged blocks on C and D.
SHAPES = [(1, 1, 1, 1), (2, 4, 5, 3), (1, 6, 9, 1), (3, 2, 17, 4), (2, 19, 21, 3), (1, 1, 33, 2), (2, 17, 1, 4),
          (2, 18, 35, 1), (1, 5, 7, 2)]


def _inputs(N, C, D, K, seed=1, generator=None):
    # Drawn in float32 (exactly representable in every tested dtype but float16), returned in float64.
    g = generator or torch.Generator().manual_seed(seed)
    return torch.randn(N, C, D, generator=g).double(), torch.randn(K, D, generator=g).double()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", cases("multi_perspective_cosine"))
def test_matches_loops_and_reference_gradient(case, shape):
    g = torch.Generator().manual_seed(1)
    raw = _inputs(*shape, generator=g)
    out, (dv, dw), ref, (dvr, dwr), (dv_terms, dw_terms, dv_loops, dw_loops) = grads_against_reference(
        case, "multi_perspective_cosine", reference.multi_perspective_cosine_ref, raw, generator=g, terms=_terms)
    close(out, naive_ref.mp_cosine(*(t.to(case.dtype) for t in raw)), case.dtype, "S vs loops")
    close(out, ref, case.dtype, "S")
    # D = 1 makes every cosine +-1 whatever v: the gradients are exactly 0, sums of terms up to ~1e3.
    close(dv, dvr, case.dtype, "dv", terms=dv_terms)
    close(dw, dwr, case.dtype, "dw", terms=dw_terms)
    close(dv, dv_loops, case.dtype, "dv vs loops", terms=dv_terms)
    close(dw, dw_loops, case.dtype, "dw vs loops", terms=dw_terms)


def _terms(ref_op, ins, g):
    """Sizes of the terms of dv and dw (naive_ref.mp_cosine_grad), then the loops' own dv, dw."""
    dv, dw, dv_terms, dw_terms = naive_ref.mp_cosine_grad(*ins, g)
    return dv_terms, dw_terms, dv, dw


@pytest.mark.parametrize("case", cases("multi_perspective_cosine"))
def test_clamped_norms(case):
    """A zero category row and a zero perspective weight: norms clamp at eps, no NaN, gradients as the reference's."""
    rv, rw = _inputs(2, 4, 5, 3, seed=2)
    rv[0, 1] = 0.0
    rw[1] = 0.0  # perspective 1 sees only zero vectors: contributes 0
    out, (dv, dw), ref, (dvr, dwr), (dv_terms, dw_terms, _, _) = grads_against_reference(
        case, "multi_perspective_cosine", reference.multi_perspective_cosine_ref, (rv, rw), terms=_terms)
    close(out, naive_ref.mp_cosine(rv, rw).to(case.dtype), case.dtype, "S")
    assert torch.isfinite(dv).all() and torch.isfinite(dw).all()
    close(dv, dvr, case.dtype, "dv", terms=dv_terms)
    close(dw, dwr, case.dtype, "dw", terms=dw_terms)


@pytest.mark.parametrize("case", cases("multi_perspective_cosine", dtypes=(torch.float64,)))
def test_hand_worked(case):
    def mpc(v, w):
        return case.call("multi_perspective_cosine", v.to(case.device), w.to(case.device)).cpu()

    # Two categories, orthogonal features: cos 0 under any weighting; a category with itself: 1.
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0], [3.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(mpc(v, w), torch.eye(2, dtype=torch.float64)[None])
    # Parallel features, one perspective zeroing dimension 1: cos stays 1 on the other.
    v = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(mpc(v, w), torch.ones(1, 2, 2, dtype=torch.float64))
    # A zero feature: its norm is clamped, its similarities are 0 (no NaN).
    v = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    out = mpc(v, torch.ones(1, 2, dtype=torch.float64))
    assert torch.isfinite(out).all() and out[0, 0, 1] == 0 and out[0, 1, 1] == 1


@pytest.mark.parametrize("case", cases("multi_perspective_cosine", dtypes=(torch.float64,)))
def test_gradcheck_finite_differences(case):
    """(dv, dw), hand-derived in the kernels, against finite differences of the op itself."""
    for (N, C, D, K), seed in (((2, 3, 4, 2), 2), ((1, 3, 4, 2), 4)):
        v, w = (t.to(case.device).requires_grad_() for t in _inputs(N, C, D, K, seed=seed))
        assert torch.autograd.gradcheck(lambda a, b: case.call("multi_perspective_cosine", a, b), (v, w))


@pytest.mark.parametrize("case", cases("multi_perspective_cosine", dtypes=LOW)
                         + cases("multi_perspective_cosine", dtypes=EXACT, devices=("cuda",)))
def test_low_precision_within_torch_error(case):
    shapes = [(2, 19, 21, 3)] if case.device == "cpu" else [(2, 80, 512, 4), (3, 21, 300, 3), (1, 1, 1, 1)]
    for shape in shapes:
        check_low_precision(case, "multi_perspective_cosine", reference.multi_perspective_cosine_ref,
                            _inputs(*shape, seed=0))


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"w must be \(K, 5\) to match v \(2, 3, 5\), got \(2, 4\)"):
        ops.multi_perspective_cosine(torch.zeros(2, 3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dtype"):
        ops.multi_perspective_cosine(torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.float64))
