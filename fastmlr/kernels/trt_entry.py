"""Entry points of the inference forward kernels in TensorRT's plugin calling convention.

A TensorRT ahead-of-time plugin launches its kernel with the arguments
``(input pointers..., scalar extra arguments..., output pointers...)``; the
launchers in :mod:`.car_attention`, :mod:`.car_pooling` and :mod:`.mlr_extra` put outputs before scalars. Each
entry below takes its arguments in TensorRT's order and calls the same kernel
body the PyTorch launchers run (inlined by Triton), so an engine computes
exactly what ``fastmlr.ops`` computes with the ``triton`` backend.

Only forward kernels are here: an engine has no backward. The two kernels whose
launchers need a second buffer do without it: the pooling stores no argmax
(``STORE_IDX=False``), and the covariance computes its row means in the program
that uses them instead of in a separate launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .car_attention import _car_sa_fwd_kernel
from .car_pooling import _car_pool_fwd_kernel
from .mlr_extra import _mpc_fwd_kernel, _sop_cov_tile, _sop_row_means


@triton.jit
def car_sa_trt_kernel(
    u_ptr, wc_ptr, s_ptr, b_ptr,
    C, P, D, stride_un, stride_up, stride_wc, stride_on, stride_oc,
    out_ptr,
    ACC: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """SRDL eq. 5, ``CarSpatialAttention``. Grid: (cdiv(P, BLOCK_P), cdiv(C, BLOCK_C), N)."""
    _car_sa_fwd_kernel(u_ptr, wc_ptr, s_ptr, b_ptr, out_ptr, C, P, D,
                       stride_un, stride_up, stride_wc, stride_on, stride_oc,
                       ACC, USE_LIBDEVICE, BLOCK_C, BLOCK_P, BLOCK_K)


@triton.jit
def car_pool_trt_kernel(
    f_ptr, sa_ptr, ca_ptr,
    C, D, P, stride_fn, stride_fk, stride_sn, stride_sc, stride_cn, stride_cc,
    out_ptr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """SRDL eq. 6 + GMP, ``CarPool``, without the argmax. Grid: (cdiv(D, BLOCK_K), cdiv(C, BLOCK_C), N)."""
    _car_pool_fwd_kernel(f_ptr, sa_ptr, ca_ptr, out_ptr, out_ptr, C, D, P,
                         stride_fn, stride_fk, stride_sn, stride_sc, stride_cn, stride_cc,
                         ACC, BLOCK_C, BLOCK_K, BLOCK_P, False)


@triton.jit
def sop_trt_kernel(
    x_ptr,
    D, P, stride_xn, stride_xd, stride_on, stride_oi,
    out_ptr,
    ACC: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``SecondOrderPool``: cov (N, D, D) of x (N, D, P). Grid: (cdiv(D, BLOCK_J), cdiv(D, BLOCK_I), N).

    Each program computes the means of its own BLOCK_I + BLOCK_J rows (one
    more pass over them) and then the tile, as the two-launch path does.
    """
    pid_j = tl.program_id(0)
    pid_i = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < D
    mask_j = offs_j < D
    x_base = x_ptr + n * stride_xn
    mi = _sop_row_means(x_base, offs_i, mask_i, P, stride_xd, ACC, BLOCK_I, BLOCK_R)
    mj = _sop_row_means(x_base, offs_j, mask_j, P, stride_xd, ACC, BLOCK_J, BLOCK_R)
    cov = _sop_cov_tile(x_base, mi, mj, offs_i, offs_j, mask_i, mask_j, P, stride_xd,
                        ACC, USE_DOT, BLOCK_I, BLOCK_J, BLOCK_R)
    tl.store(out_ptr + n * stride_on + offs_i[:, None] * stride_oi + offs_j[None, :],
             cov.to(out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])


@triton.jit
def mpc_trt_kernel(
    v_ptr, w_ptr,
    C, D, K, stride_vn, stride_vc, stride_wk, stride_on, stride_oi,
    out_ptr,
    EPS: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``MultiPerspectiveCosine``: S (N, C, C). Grid: (cdiv(C, BLOCK_J), cdiv(C, BLOCK_I), N).

    The norm clamp ``EPS`` is a compile-time constant: TensorRT passes only
    integer scalars to an ahead-of-time kernel.
    """
    _mpc_fwd_kernel(v_ptr, w_ptr, out_ptr, C, D, K, EPS, stride_vn, stride_vc, stride_wk, stride_on, stride_oi,
                    ACC, USE_DOT, BLOCK_I, BLOCK_J, BLOCK_R)


__all__ = ["car_pool_trt_kernel", "car_sa_trt_kernel", "mpc_trt_kernel", "sop_trt_kernel"]
