"""The "triton" backend's second_order_pool and multi_perspective_cosine (fastmlr/kernels/mlr_extra.py)
held to naive float64 loops (forward), the float64 reference's autograd and finite differences (gradients).

Where these run: as in tests/test_ops_triton.py, ``@interp`` cases need kernels
built by the Triton interpreter, so ``test_mlr_interpreter_cases`` reruns this
file in a subprocess with ``TRITON_INTERPRET=1`` set before fastmlr is
imported, and fails with that run's failures; ``@gpu`` cases run the compiled
kernels on CUDA (``-m gpu`` on a GPU machine).

Interpreter blocks are 16 wide: shapes are ragged against them (17-35 per
axis, two or three blocks) or degenerate (C = 1, D = 1, P = 1, K = 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

import fastmlr.ops as ops  # noqa: E402
from fastmlr.ops import reference  # noqa: E402
from fastmlr.ops._dispatch import _UNAVAILABLE  # noqa: E402
from test_ops_mlr import naive_covariance, naive_mp_cosine  # noqa: E402
from triton_interp import run_interpreter_subprocess  # noqa: E402
from test_ops_triton import INTERPRET, TRITON_LOADED, _check_against_same_dtype_torch, gpu, interp  # noqa: E402

# (atol, rtol) against float64 references, per dtype, in the interpreter.
# float32: sums of <= ~40 products of O(1) values (covariance) or cosines in
# [-1, 1] averaged over K, each rounded once: ~1e-7 observed, 1e-5 leaves
# room for other shapes. float64: ~1e-15 observed.
TOL = {
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-11, 1e-10),
}


def _close(got, want, dtype, what):
    atol, rtol = TOL[dtype]
    assert got.dtype == dtype and got.shape == want.shape, f"{what}: {got.dtype} {tuple(got.shape)}"
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _leaf(t, dtype):
    return t.to(dtype).detach().requires_grad_()


# ---------------------------------------------------------------------------
# second_order_pool
# ---------------------------------------------------------------------------

SOP_CASES = [  # (N, D, P), dtype
    ((2, 19, 21), torch.float32),  # two ragged blocks on D and P
    ((1, 1, 1), torch.float32),  # D = 1, P = 1: covariance 0
    ((3, 5, 1), torch.float32),  # P = 1
    ((1, 1, 33), torch.float32),  # D = 1, three blocks on P
    ((2, 33, 17), torch.float64),
    ((1, 18, 1), torch.float64),
]


@interp
@pytest.mark.parametrize("shape,dtype", SOP_CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in SOP_CASES])
def test_second_order_pool_matches_loops_and_reference_grad(shape, dtype):
    g = torch.Generator().manual_seed(0)
    # An offset, so the means are far from 0 and centring matters.
    raw = torch.randn(*shape, generator=g) + 3.0
    x = _leaf(raw, dtype)
    out = ops.second_order_pool(x, backend="triton")
    _close(out, naive_covariance(raw.to(dtype)), dtype, "cov")
    gout = torch.randn(out.shape, generator=g).to(dtype)
    (dx,) = torch.autograd.grad(out, x, gout)
    xr = _leaf(raw.to(dtype), torch.float64)
    (dxr,) = torch.autograd.grad(reference.second_order_pool_ref(xr), xr, gout.double())
    _close(dx, dxr, dtype, "dx")  # the reference differentiates through the means too
    # sum_p dx[n,i,p] = 1/P sum_j H_ij sum_p xc_jp = 0: the means' gradient had nothing to add.
    torch.testing.assert_close(dx.double().sum(2), torch.zeros(shape[:2], dtype=torch.float64),
                               atol=TOL[dtype][0] * shape[2], rtol=0)


@interp
def test_second_order_pool_gradcheck_finite_differences():
    """The hand-derived backward (mean term dropped) against finite differences of the op itself."""
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 1.0
    assert torch.autograd.gradcheck(lambda t: ops.second_order_pool(t, backend="triton"), (x.requires_grad_(),))


# ---------------------------------------------------------------------------
# multi_perspective_cosine
# ---------------------------------------------------------------------------

MPC_CASES = [  # (N, C, D, K), dtype
    ((2, 19, 21, 3), torch.float32),  # ragged blocks on C (i and j) and D
    ((1, 1, 1, 1), torch.float32),  # everything 1
    ((1, 1, 33, 2), torch.float32),  # C = 1
    ((2, 17, 1, 4), torch.float32),  # D = 1: every cosine is +-1
    ((2, 18, 35, 1), torch.float64),  # K = 1
    ((1, 5, 7, 2), torch.float64),
]


@interp
@pytest.mark.parametrize("shape,dtype", MPC_CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in MPC_CASES])
def test_multi_perspective_cosine_matches_loops_and_reference_grad(shape, dtype):
    N, C, D, K = shape
    g = torch.Generator().manual_seed(1)
    rv, rw = torch.randn(N, C, D, generator=g), torch.randn(K, D, generator=g)
    v, w = _leaf(rv, dtype), _leaf(rw, dtype)
    out = ops.multi_perspective_cosine(v, w, backend="triton")
    _close(out, naive_mp_cosine(rv.to(dtype), rw.to(dtype)), dtype, "S")
    gout = torch.randn(out.shape, generator=g).to(dtype)
    dv, dw = torch.autograd.grad(out, (v, w), gout)
    vr, wr = _leaf(rv.to(dtype), torch.float64), _leaf(rw.to(dtype), torch.float64)
    dvr, dwr = torch.autograd.grad(reference.multi_perspective_cosine_ref(vr, wr), (vr, wr), gout.double())
    _close(dv, dvr, dtype, "dv")
    _close(dw, dwr, dtype, "dw")


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_perspective_cosine_clamped_norms(dtype):
    """A zero category row and a zero perspective weight: norms clamp at eps, no NaN, gradients as the reference's."""
    g = torch.Generator().manual_seed(2)
    rv, rw = torch.randn(2, 4, 5, generator=g), torch.randn(3, 5, generator=g)
    rv[0, 1] = 0.0
    rw[1] = 0.0  # perspective 1 sees only zero vectors: contributes 0
    v, w = _leaf(rv, dtype), _leaf(rw, dtype)
    out = ops.multi_perspective_cosine(v, w, backend="triton")
    _close(out, naive_mp_cosine(rv, rw).to(dtype), dtype, "S")
    gout = torch.randn(out.shape, generator=g).to(dtype)
    dv, dw = torch.autograd.grad(out, (v, w), gout)
    vr, wr = _leaf(rv, torch.float64), _leaf(rw, torch.float64)
    dvr, dwr = torch.autograd.grad(reference.multi_perspective_cosine_ref(vr, wr), (vr, wr), gout.double())
    assert torch.isfinite(dv).all() and torch.isfinite(dw).all()
    _close(dv, dvr, dtype, "dv")
    _close(dw, dwr, dtype, "dw")


@interp
def test_multi_perspective_cosine_gradcheck_finite_differences():
    """The hand-derived (dv, dw) against finite differences of the op itself."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(1, 3, 4, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.multi_perspective_cosine(a, b, backend="triton"), (v, w))


# ---------------------------------------------------------------------------
# Parent process: run the @interp cases under TRITON_INTERPRET=1
# ---------------------------------------------------------------------------

_PARENT_ONLY = {"test_mlr_interpreter_cases"}
_MIN_INTERPRETER_CASES = len(SOP_CASES) + len(MPC_CASES) + 4


@pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend unavailable: {_UNAVAILABLE.get('triton')}")
@pytest.mark.skipif(INTERPRET, reason="this process runs the interpreter cases itself")
def test_mlr_interpreter_cases(tmp_path):
    print(run_interpreter_subprocess(Path(__file__).resolve(), tmp_path, _MIN_INTERPRETER_CASES, _PARENT_ONLY))


# ---------------------------------------------------------------------------
# Real GPU: compiled kernels (tl.dot with ieee fp32, elementwise fp64)
# ---------------------------------------------------------------------------

GPU_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _sop_inputs(N, D, P):
    return (torch.randn(N, D, P, generator=torch.Generator().manual_seed(0)) + 1.0,)


def _mpc_inputs(N, C, D, K):
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, D, generator=g), torch.randn(K, D, generator=g)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("sop_shape,mpc_shape", [((2, 512, 196), (2, 80, 512, 4)), ((3, 70, 49), (3, 21, 300, 3)),
                                                 ((1, 1, 1), (1, 1, 1, 1))])
def test_gpu_mlr_ops_match_reference(sop_shape, mpc_shape, dtype):
    _check_against_same_dtype_torch(ops.second_order_pool, reference.second_order_pool_ref, _sop_inputs(*sop_shape),
                                    dtype, "cuda", floor=GPU_FLOOR[dtype])
    _check_against_same_dtype_torch(ops.multi_perspective_cosine, reference.multi_perspective_cosine_ref,
                                    _mpc_inputs(*mpc_shape), dtype, "cuda", floor=GPU_FLOOR[dtype])
