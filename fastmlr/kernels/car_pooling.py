"""SRDL's attention-weighted max pooling (section 3.2, eq. 6 + GMP) as Triton kernels, forward and backward.

Written plainly in PyTorch (the reference in fastmlr/ops/car.py) the op materialises an ``N x C x D x P``
tensor; here nothing of that size exists: the forward keeps a running maximum and its position, and the
pooling saves its inputs and the argmax position (N x C x D, int32) for the backward.

Layouts (all contiguous, innermost last): f (N, D, P), sa (N, C, P), ca (N, C, D).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..constants import POOL_GPU
from .utils import INTERPRET, acc_dtype, check_contiguous, device_context, loop_bound, torch_acc_dtype

# Interpreter blocks: large enough for small grids, small enough (16) that odd shapes hit every ragged mask.
_INTERPRET_POOL = dict(BLOCK_C=16, BLOCK_K=16, BLOCK_P=16)
_INTERPRET_POOL_BWD = dict(BLOCK_C=16, BLOCK_K=32)
_POOL_GPU = POOL_GPU  # fastmlr/constants.py says why this tile
# The pooling backward scatters with atomics: it must not be autotuned (each benchmark run would add
# into the same buffers again).
_POOL_BWD_GPU = dict(BLOCK_C=16, BLOCK_K=64, num_warps=4)


# -- attention-weighted max pooling, SRDL eq. 6 + GMP ---------------------


@triton.jit
def _car_pool_fwd_kernel(
    f_ptr, sa_ptr, ca_ptr, out_ptr, idx_ptr,
    C, D, P,
    stride_fn, stride_fk, stride_sn, stride_sc, stride_cn, stride_cc,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, STORE_IDX: tl.constexpr,
):
    """feat[n,c,k] = max_p 0.5 f[n,k,p] (sa[n,c,p] + ca[n,c,k])  (SRDL eq. 6 then GMP, docs/srdl.md step 6).

    Each program keeps a running max and its position for a BLOCK_C x
    BLOCK_K tile of one image while walking p in BLOCK_P steps (f and sa are
    loaded along their contiguous P axis, ca along D). Ties go to the first
    p; a NaN term makes the result NaN (its first position is kept). The
    position is stored for the backward. Grid: (cdiv(D, BLOCK_K), cdiv(C, BLOCK_C), N).
    """
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < D
    mask_ck = mask_c[:, None] & mask_k[None, :]
    ca_offs = n * stride_cn + offs_c[:, None] * stride_cc + offs_k[None, :]
    ca = tl.load(ca_ptr + ca_offs, mask=mask_ck, other=0.0).to(ACC)
    best = tl.full([BLOCK_C, BLOCK_K], float("-inf"), dtype=ACC)
    best_p = tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.int32)
    for p0 in range(0, loop_bound(P), BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        f = tl.load(f_ptr + n * stride_fn + offs_k[:, None] * stride_fk + offs_p[None, :],
                    mask=mask_k[:, None] & mask_p[None, :], other=0.0).to(ACC)
        sa = tl.load(sa_ptr + n * stride_sn + offs_c[:, None] * stride_sc + offs_p[None, :],
                     mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
        v = 0.5 * f[None, :, :] * (sa[:, None, :] + ca[:, :, None])  # BLOCK_C, BLOCK_K, BLOCK_P
        v = tl.where(mask_p[None, None, :], v, float("-inf"))
        # NaN propagates (as torch.amax): a block's first NaN wins, then stays; tl.max sees NaN as -inf.
        nan = v != v
        nan_i = tl.min(tl.where(nan, tl.arange(0, BLOCK_P)[None, None, :], BLOCK_P), axis=2)
        m, i = tl.max(tl.where(nan, float("-inf"), v), axis=2, return_indices=True,
                      return_indices_tie_break_left=True)
        take_nan = (nan_i < BLOCK_P) & (best == best)
        better = (m > best) & (nan_i == BLOCK_P) & (best == best)  # strict: an earlier block keeps its tie
        best = tl.where(take_nan, float("nan"), tl.where(better, m, best))
        best_p = tl.where(take_nan, nan_i + p0, tl.where(better, i + p0, best_p))
    tl.store(out_ptr + ca_offs, best.to(out_ptr.dtype.element_ty), mask=mask_ck)
    if STORE_IDX:  # engines, which have no backward, pass no idx buffer
        tl.store(idx_ptr + ca_offs, best_p, mask=mask_ck)


@triton.jit
def _car_pool_bwd_kernel(
    g_ptr, idx_ptr, f_ptr, sa_ptr, ca_ptr, df_ptr, dsa_ptr, dca_ptr,
    C, D,
    stride_fn, stride_fk, stride_sn, stride_sc, stride_cn, stride_cc,
    NEED_F: tl.constexpr, NEED_SA: tl.constexpr, NEED_CA: tl.constexpr,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Route g[n,c,k] through the argmax p* = idx[n,c,k] of eq. 6's max:

        dca[n,c,k]   = 0.5 g f[n,k,p*]
        dsa[n,c,p*] += 0.5 g f[n,k,p*]            (scatter over k: atomics)
        df[n,k,p*]  += 0.5 g (sa[n,c,p*] + ca[n,c,k])   (scatter over c: atomics)

    df and dsa are zero-initialised buffers in the accumulation dtype.
    Grid: (cdiv(D, BLOCK_K), cdiv(C, BLOCK_C), N).
    """
    pid_k = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_c < C)[:, None] & (offs_k < D)[None, :]
    ca_offs = n * stride_cn + offs_c[:, None] * stride_cc + offs_k[None, :]
    g = 0.5 * tl.load(g_ptr + ca_offs, mask=mask, other=0.0).to(ACC)
    p = tl.load(idx_ptr + ca_offs, mask=mask, other=0)
    f_offs = n * stride_fn + offs_k[None, :] * stride_fk + p
    sa_offs = n * stride_sn + offs_c[:, None] * stride_sc + p
    if NEED_SA or NEED_CA:
        gf = g * tl.load(f_ptr + f_offs, mask=mask, other=0.0).to(ACC)
        if NEED_CA:
            tl.store(dca_ptr + ca_offs, gf.to(dca_ptr.dtype.element_ty), mask=mask)
        if NEED_SA:
            tl.atomic_add(dsa_ptr + sa_offs, gf, mask=mask)
    if NEED_F:
        sa = tl.load(sa_ptr + sa_offs, mask=mask, other=0.0).to(ACC)
        ca = tl.load(ca_ptr + ca_offs, mask=mask, other=0.0).to(ACC)
        tl.atomic_add(df_ptr + f_offs, g * (sa + ca), mask=mask)


def car_pool_forward(f: torch.Tensor, sa: torch.Tensor, ca: torch.Tensor):
    """Launch eq. 6 + GMP. f (N, D, P), sa (N, C, P), ca (N, C, D) -> (feat (N, C, D), argmax p int32)."""
    N, D, P = f.shape
    C = sa.shape[1]
    if tuple(sa.shape) != (N, C, P) or tuple(ca.shape) != (N, C, D) or P < 1:
        raise ValueError(f"car_pool: expected f (N, D, P) with P >= 1, sa (N, C, P), ca (N, C, D); "
                         f"got f {tuple(f.shape)}, sa {tuple(sa.shape)}, ca {tuple(ca.shape)}")
    f, sa, ca = f.contiguous(), sa.contiguous(), ca.contiguous()
    check_contiguous("car_pool", f=f, sa=sa, ca=ca)
    out = torch.empty(N, C, D, dtype=f.dtype, device=f.device)
    idx = torch.empty(N, C, D, dtype=torch.int32, device=f.device)
    if out.numel() == 0:
        return out, idx
    blocks = dict(_INTERPRET_POOL) if INTERPRET else dict(_POOL_GPU)
    grid = (triton.cdiv(D, blocks["BLOCK_K"]), triton.cdiv(C, blocks["BLOCK_C"]), N)
    with device_context(f):
        _car_pool_fwd_kernel[grid](
            f, sa, ca, out, idx, C, D, P,
            f.stride(0), f.stride(1), sa.stride(0), sa.stride(1), ca.stride(0), ca.stride(1),
            ACC=acc_dtype(f.dtype), STORE_IDX=True, **blocks,
        )
    return out, idx


def car_pool_backward(grad, idx, f, sa, ca, need_f=True, need_sa=True, need_ca=True):
    """Gradients of eq. 6 + GMP through the stored argmax; returns (df, dsa, dca)."""
    N, D, P = f.shape
    C = sa.shape[1]
    acc_t = torch_acc_dtype(f.dtype)
    grad = grad.contiguous()
    df = torch.zeros(N, D, P, dtype=acc_t, device=f.device) if need_f else None
    dsa = torch.zeros(N, C, P, dtype=acc_t, device=f.device) if need_sa else None
    dca = torch.empty_like(ca) if need_ca else None
    if grad.numel() and (need_f or need_sa or need_ca):
        blocks = dict(_INTERPRET_POOL_BWD) if INTERPRET else dict(_POOL_BWD_GPU)
        grid = (triton.cdiv(D, blocks["BLOCK_K"]), triton.cdiv(C, blocks["BLOCK_C"]), N)
        dummy = grad  # never dereferenced when its NEED_* flag is off
        with device_context(f):
            _car_pool_bwd_kernel[grid](
                grad, idx, f, sa, ca,
                df if need_f else dummy, dsa if need_sa else dummy, dca if need_ca else dummy,
                C, D,
                f.stride(0), f.stride(1), sa.stride(0), sa.stride(1), ca.stride(0), ca.stride(1),
                NEED_F=need_f, NEED_SA=need_sa, NEED_CA=need_ca, ACC=acc_dtype(f.dtype), **blocks,
            )
    return (df.to(f.dtype) if need_f else None, dsa.to(sa.dtype) if need_sa else None, dca)


class CarPool(torch.autograd.Function):
    """SRDL eq. 6 + GMP. Saves its inputs and the argmax position (N x C x D int32) only."""

    @staticmethod
    def forward(ctx, f, sa, ca):
        f, sa, ca = f.contiguous(), sa.contiguous(), ca.contiguous()
        out, idx = car_pool_forward(f, sa, ca)
        ctx.save_for_backward(f, sa, ca, idx)
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_idx):
        f, sa, ca, idx = ctx.saved_tensors
        need_f, need_sa, need_ca = ctx.needs_input_grad
        return car_pool_backward(grad, idx, f, sa, ca, need_f, need_sa, need_ca)


def car_pool(f, sa, ca):
    """feat (N, C, D) = max_p 0.5 f[n,k,p] (sa[n,c,p] + ca[n,c,k]), differentiable (ties: first p)."""
    return CarPool.apply(f, sa, ca)[0]
