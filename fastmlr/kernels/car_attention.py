"""SRDL's category-specific spatial attention (section 3.2, eq. 5) as Triton kernels, forward and backward.

Written plainly in PyTorch (the reference in fastmlr/ops/car.py) the op materialises an ``N x C x P x D``
tensor (2 GB in fp32 at N=16, C=80, P=196, D=2048) and autograd keeps several. Here nothing of that
size exists, forward or backward: the op saves only its output ``SA`` (N x C x P) and recomputes tanh
in the backward. The pooling that follows it is in :mod:`.car_pooling`.

Layouts (all contiguous, innermost last): u (N, P, D), wc (C, D), s (D,).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..constants import SA_GPU_CONFIGS
from .utils import (INTERPRET, USE_LIBDEVICE, acc_dtype, check_contiguous, device_context, loop_bound, tanh,
                    torch_acc_dtype)

# Interpreter blocks: each program costs ~65 ms of Python overhead there, so blocks are large enough
# for small grids, yet small enough (16) that the tests' odd shapes exercise every ragged mask.
_INTERPRET_SA = dict(BLOCK_C=16, BLOCK_P=16, BLOCK_K=16)

# GPU configs for the tanh reductions: fastmlr/constants.py says why these (TensorRT plugins read them too).
_SA_CONFIGS = [triton.Config(dict(blocks), num_warps=warps) for blocks, warps in SA_GPU_CONFIGS]
# dwc/ds carries two accumulators: larger tiles than these reach 170-240 registers (or spill) on sm_90.
_SA_DW_CONFIGS = [
    triton.Config(dict(BLOCK_C=16, BLOCK_P=16, BLOCK_K=16), num_warps=4),
    triton.Config(dict(BLOCK_C=16, BLOCK_P=32, BLOCK_K=8), num_warps=4),
]


def _maybe_autotune(kernel, configs, key):
    # Multi-config autotune does not run in the interpreter.
    return kernel if INTERPRET else triton.autotune(configs=configs, key=key)(kernel)


# -- spatial attention, SRDL eq. 5 ----------------------------------------


@triton.jit
def _car_sa_fwd_kernel(
    u_ptr, wc_ptr, s_ptr, b_ptr, out_ptr,
    C, P, D,
    stride_un, stride_up, stride_wc, stride_on, stride_oc,
    ACC: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """SA[n,c,p] = sigmoid(b + sum_k s[k] tanh(u[n,p,k] wc[c,k]))  (SRDL eq. 5, docs/srdl.md step 5).

    A GEMM-shaped reduction over k that is not a matmul (tanh sits between
    the product and the sum): each program owns a BLOCK_C x BLOCK_P tile of
    one image and walks k in BLOCK_K steps, loading u and wc along their
    contiguous D axis. Grid: (cdiv(P, BLOCK_P), cdiv(C, BLOCK_C), N).
    """
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_c = offs_c < C
    mask_p = offs_p < P
    u_base = u_ptr + n * stride_un
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
    for k0 in range(0, loop_bound(D), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < D
        u = tl.load(u_base + offs_p[:, None] * stride_up + offs_k[None, :],
                    mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
        w = tl.load(wc_ptr + offs_c[:, None] * stride_wc + offs_k[None, :],
                    mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(ACC)
        s = tl.load(s_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
        t = tanh(w[:, None, :] * u[None, :, :], USE_LIBDEVICE)  # BLOCK_C, BLOCK_P, BLOCK_K
        acc += tl.sum(t * s[None, None, :], axis=2)
    z = acc + tl.load(b_ptr).to(ACC)
    out = tl.sigmoid(z)
    tl.store(out_ptr + n * stride_on + offs_c[:, None] * stride_oc + offs_p[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask_c[:, None] & mask_p[None, :])


@triton.jit
def _car_sa_bwd_du_kernel(
    u_ptr, wc_ptr, s_ptr, dz_ptr, du_ptr,
    C, P, D,
    stride_un, stride_up, stride_wc, stride_zn, stride_zc,
    ACC: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """du[n,p,k] = s[k] sum_c dz[n,c,p] (1 - t^2) wc[c,k],  t = tanh(u[n,p,k] wc[c,k]).

    ``dz = grad * SA * (1 - SA)`` is the gradient at the sigmoid's input.
    Each program owns a BLOCK_P x BLOCK_K tile of du and loops over c, so du
    is written once, without atomics. Grid: (cdiv(P, BLOCK_P), cdiv(D, BLOCK_K), N).
    """
    pid_p = tl.program_id(0)
    pid_k = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_p = offs_p < P
    mask_k = offs_k < D
    mask_pk = mask_p[:, None] & mask_k[None, :]
    u_offs = n * stride_un + offs_p[:, None] * stride_up + offs_k[None, :]
    u = tl.load(u_ptr + u_offs, mask=mask_pk, other=0.0).to(ACC)
    s = tl.load(s_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=ACC)
    for c0 in range(0, loop_bound(C), BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w = tl.load(wc_ptr + offs_c[:, None] * stride_wc + offs_k[None, :],
                    mask=mask_c[:, None] & mask_k[None, :], other=0.0).to(ACC)
        dz = tl.load(dz_ptr + n * stride_zn + offs_c[:, None] * stride_zc + offs_p[None, :],
                     mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
        t = tanh(w[:, None, :] * u[None, :, :], USE_LIBDEVICE)  # BLOCK_C, BLOCK_P, BLOCK_K
        acc += tl.sum(dz[:, :, None] * (1.0 - t * t) * w[:, None, :], axis=0)
    tl.store(du_ptr + u_offs, (acc * s[None, :]).to(du_ptr.dtype.element_ty), mask=mask_pk)


@triton.jit
def _car_sa_bwd_dw_kernel(
    u_ptr, wc_ptr, s_ptr, dz_ptr, dwc_ptr, dsc_ptr,
    N, C, P, D,
    stride_un, stride_up, stride_wc, stride_zn, stride_zc,
    ACC: tl.constexpr, USE_LIBDEVICE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dwc[c,k] = s[k] sum_{n,p} dz (1 - t^2) u[n,p,k];  dsc[c,k] = sum_{n,p} dz t.

    ``ds[k] = sum_c dsc[c,k]`` is finished by the launcher: keeping the
    per-category partial (C x D, like dwc) makes the result independent of
    the block sizes autotune picks and deterministic, with no atomics.
    Grid: (cdiv(C, BLOCK_C), cdiv(D, BLOCK_K)); each program loops over n and p.
    """
    pid_c = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = offs_c < C
    mask_k = offs_k < D
    mask_ck = mask_c[:, None] & mask_k[None, :]
    w_offs = offs_c[:, None] * stride_wc + offs_k[None, :]
    w = tl.load(wc_ptr + w_offs, mask=mask_ck, other=0.0).to(ACC)
    s = tl.load(s_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
    acc_w = tl.zeros([BLOCK_C, BLOCK_K], dtype=ACC)
    acc_s = tl.zeros([BLOCK_C, BLOCK_K], dtype=ACC)
    # Per-image base pointers advance by pointer arithmetic (64-bit), not n * stride (32-bit).
    u_n = u_ptr
    dz_n = dz_ptr
    for _n in range(0, loop_bound(N)):
        for p0 in range(0, loop_bound(P), BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            u = tl.load(u_n + offs_p[:, None] * stride_up + offs_k[None, :],
                        mask=mask_p[:, None] & mask_k[None, :], other=0.0).to(ACC)
            dz = tl.load(dz_n + offs_c[:, None] * stride_zc + offs_p[None, :],
                         mask=mask_c[:, None] & mask_p[None, :], other=0.0).to(ACC)
            t = tanh(w[:, None, :] * u[None, :, :], USE_LIBDEVICE)  # BLOCK_C, BLOCK_P, BLOCK_K
            dzt = dz[:, :, None] * t
            acc_w += tl.sum((dz[:, :, None] - dzt * t) * u[None, :, :], axis=1)
            acc_s += tl.sum(dzt, axis=1)
        u_n += stride_un
        dz_n += stride_zn
    tl.store(dwc_ptr + w_offs, (acc_w * s[None, :]).to(dwc_ptr.dtype.element_ty), mask=mask_ck)
    tl.store(dsc_ptr + offs_c[:, None] * D + offs_k[None, :], acc_s, mask=mask_ck)


_sa_fwd = _maybe_autotune(_car_sa_fwd_kernel, _SA_CONFIGS, key=["C", "P", "D"])
_sa_bwd_du = _maybe_autotune(_car_sa_bwd_du_kernel, _SA_CONFIGS, key=["C", "P", "D"])
_sa_bwd_dw = _maybe_autotune(_car_sa_bwd_dw_kernel, _SA_DW_CONFIGS, key=["C", "P", "D"])


def _sa_blocks():
    return dict(_INTERPRET_SA) if INTERPRET else {}


def car_spatial_attention_forward(u: torch.Tensor, wc: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Launch eq. 5. u (N, P, D), wc (C, D), s (D,), b () -> SA (N, C, P) in u's dtype."""
    N, P, D = u.shape
    C = wc.shape[0]
    if wc.shape[1] != D or tuple(s.shape) != (D,) or b.numel() != 1:
        raise ValueError(f"car_spatial_attention: expected u (N, P, D), wc (C, D), s (D,), b (); "
                         f"got u {tuple(u.shape)}, wc {tuple(wc.shape)}, s {tuple(s.shape)}, b {tuple(b.shape)}")
    u, wc, s, b = u.contiguous(), wc.contiguous(), s.contiguous(), b.reshape(1).contiguous()
    check_contiguous("car_spatial_attention", u=u, wc=wc, s=s)
    out = torch.empty(N, C, P, dtype=u.dtype, device=u.device)
    if out.numel() == 0:
        return out

    def grid(meta):
        return (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), N)

    with device_context(u):
        _sa_fwd[grid](
            u, wc, s, b, out, C, P, D,
            u.stride(0), u.stride(1), wc.stride(0), out.stride(0), out.stride(1),
            ACC=acc_dtype(u.dtype), USE_LIBDEVICE=USE_LIBDEVICE, **_sa_blocks(),
        )
    return out


def car_spatial_attention_backward(grad, out, u, wc, s, need_u=True, need_w=True):
    """Gradients of eq. 5 w.r.t. (u, wc, s, b), recomputing tanh (nothing N x C x P x D kept)."""
    N, P, D = u.shape
    C = wc.shape[0]
    acc_t = torch_acc_dtype(u.dtype)
    # Gradient at the sigmoid's input, N x C x P in the accumulation dtype.
    o = out.to(acc_t)
    dz = (grad.to(acc_t) * o * (1.0 - o)).contiguous()
    db = dz.sum()
    du = dwc = ds = None
    if dz.numel() == 0 or D == 0:  # nothing to launch: every gradient but db is zero
        return (torch.zeros_like(u) if need_u else None, torch.zeros_like(wc) if need_w else None,
                torch.zeros_like(s) if need_w else None, db)
    with device_context(u):
        if need_u:
            du = torch.empty_like(u)

            def grid_u(meta):
                return (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(D, meta["BLOCK_K"]), N)

            _sa_bwd_du[grid_u](
                u, wc, s, dz, du, C, P, D,
                u.stride(0), u.stride(1), wc.stride(0), dz.stride(0), dz.stride(1),
                ACC=acc_dtype(u.dtype), USE_LIBDEVICE=USE_LIBDEVICE, **_sa_blocks(),
            )
        if need_w:
            dwc = torch.empty_like(wc)
            dsc = torch.empty(C, D, dtype=acc_t, device=u.device)

            def grid_w(meta):
                return (triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(D, meta["BLOCK_K"]))

            _sa_bwd_dw[grid_w](
                u, wc, s, dz, dwc, dsc, N, C, P, D,
                u.stride(0), u.stride(1), wc.stride(0), dz.stride(0), dz.stride(1),
                ACC=acc_dtype(u.dtype), USE_LIBDEVICE=USE_LIBDEVICE, **_sa_blocks(),
            )
            ds = dsc.sum(0).to(s.dtype)
    return du, dwc, ds, db


class CarSpatialAttention(torch.autograd.Function):
    """SRDL eq. 5 with a fused, recomputing backward. Saves only SA (N x C x P)."""

    @staticmethod
    def forward(ctx, u, wc, s, b):
        u, wc, s = u.contiguous(), wc.contiguous(), s.contiguous()
        out = car_spatial_attention_forward(u, wc, s, b)
        ctx.save_for_backward(u, wc, s, out)
        ctx.b_shape, ctx.b_dtype = b.shape, b.dtype
        return out

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable
    def backward(ctx, grad):
        u, wc, s, out = ctx.saved_tensors
        need_u, need_wc, need_s, need_b = ctx.needs_input_grad
        du, dwc, ds, db = car_spatial_attention_backward(
            grad.contiguous(), out, u, wc, s, need_u=need_u, need_w=need_wc or need_s)
        return (du if need_u else None, dwc if need_wc else None, ds if need_s else None,
                db.reshape(ctx.b_shape).to(ctx.b_dtype) if need_b else None)


def car_spatial_attention(u, wc, s, b):
    """SA (N, C, P) = sigmoid(b + sum_k s_k tanh(u[n,p,k] wc[c,k])), differentiable."""
    return CarSpatialAttention.apply(u, wc, s, b)
