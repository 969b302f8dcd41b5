"""Fused AAMN / MMDSR ops: second-order pooling (channel covariance) and the
multi-perspective weighted cosine graph, forward and backward.

Written plainly in PyTorch (fastmlr/ops/reference.py) second-order pooling
stores the centred copy of x (N x D x P) and the cosine graph materialises
``N x K x C x D`` (w[k] * v[n, i] for every perspective) plus its normalised
copy. Here neither exists:

* second_order_pool computes the per-channel means first (N x D, a tiny
  reduction) and subtracts them on load inside the covariance tiles; the
  backward reuses those means.
* multi_perspective_cosine uses cos(w*v_i, w*v_j) = sum_d w_d^2 v_id v_jd /
  (||w*v_i|| ||w*v_j||): each program owns an (i-block, j-block) tile of one
  image and, for each perspective k, accumulates the weighted Gram tile and
  both sets of weighted norms over d. Its backward is a PyTorch
  recomputation, chunked over K (see :class:`MultiPerspectiveCosine`).

Layouts (all contiguous, innermost last): x (N, D, P), cov (N, D, D),
v (N, C, D), w (K, D), S (N, C, C).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..constants import COSINE_EPS
from .utils import INTERPRET, acc_dtype, check_contiguous, device_context, loop_bound, torch_acc_dtype

# Interpreter blocks: each program costs ~65 ms of Python overhead there, so
# one config, 16 wide: the tests' odd shapes (up to ~40 per axis) span several
# blocks and exercise every ragged mask, yet grids stay small.
_INTERPRET_BLOCKS = dict(BLOCK_I=16, BLOCK_J=16, BLOCK_R=16)
# GPU: fp16/bf16/fp32 inputs accumulate in fp32 with tl.dot (input_precision
# "ieee": TF32 would lose ~1e-3 relative, far more than the reference's own
# error). tl.dot needs every block >= 16; 64 x 64 x 32 is a common fp32 GEMM
# tile that holds two 64 x 32 operand tiles plus a 64 x 64 accumulator.
_GPU_DOT_BLOCKS = dict(BLOCK_I=64, BLOCK_J=64, BLOCK_R=32, num_warps=4)
# The second_order_pool backward loads G's tile, its transpose and an x tile
# per step: the same blocks with Triton's default 3 pipeline stages need
# 107,008 B of shared memory in fp32, over the 99 KB a block gets on sm_86/89,
# and 255 registers a thread. Two stages and 8 warps: 65,792 B and ~150
# registers, within every architecture the build targets
# (tests/test_triton_compile.py checks each config against each one's limits).
_GPU_SOP_BWD_BLOCKS = dict(BLOCK_I=64, BLOCK_J=64, BLOCK_R=32, num_warps=8, num_stages=2)
# float64 has no tensor-core path we rely on: the product is an elementwise
# 3-D broadcast (BLOCK_I x BLOCK_J x BLOCK_R values live at once), so it is
# kept at 16^3 = 4K elements of 8 bytes.
_GPU_F64_BLOCKS = dict(BLOCK_I=16, BLOCK_J=16, BLOCK_R=16, num_warps=4)
# Perspectives recomputed at once by the multi_perspective_cosine backward:
# one at a time keeps its temporaries at N x C x D (the size of v).
_MPC_BWD_K_CHUNK = 1


def _blocks(dtype: torch.dtype) -> dict:
    if INTERPRET:
        return dict(_INTERPRET_BLOCKS)
    return dict(_GPU_F64_BLOCKS) if dtype == torch.float64 else dict(_GPU_DOT_BLOCKS)


def _use_dot(dtype: torch.dtype) -> bool:
    # tl.dot for everything that accumulates in fp32; float64 sums elementwise.
    return dtype != torch.float64


@triton.jit
def _mm_nt(a, b, USE_DOT: tl.constexpr):
    """a (M, R) @ b (M2, R)^T -> (M, M2), in a's dtype (fp32 or fp64)."""
    if USE_DOT:
        out = tl.dot(a, tl.trans(b), input_precision="ieee")
    else:
        out = tl.sum(a[:, None, :] * b[None, :, :], axis=2)
    return out


@triton.jit
def _mm_nn(a, b, USE_DOT: tl.constexpr):
    """a (M, R) @ b (R, M2) -> (M, M2)."""
    if USE_DOT:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return out


# --------------------------------------------------------------------------
# Second-order pooling (AAMN's SRE module)
# --------------------------------------------------------------------------


@triton.jit
def _sop_mean_kernel(
    x_ptr, mean_ptr, D, P, stride_xn, stride_xd,
    ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """mean[n,i] = 1/P sum_p x[n,i,p], stored in the accumulation dtype.

    Grid: (cdiv(D, BLOCK_I), N); each program walks p in BLOCK_R steps.
    """
    pid_i = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    mask_i = offs_i < D
    mean = _sop_row_means(x_ptr + n * stride_xn, offs_i, mask_i, P, stride_xd, ACC, BLOCK_I, BLOCK_R)
    tl.store(mean_ptr + n * D + offs_i, mean, mask=mask_i)


@triton.jit
def _sop_row_means(x_base, offs_i, mask_i, P, stride_xd,
                   ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_R: tl.constexpr):
    """1/P sum_p x[i,p] for the rows ``offs_i`` of one image (``x_base``), in ``ACC``."""
    acc = tl.zeros([BLOCK_I], dtype=ACC)
    for p0 in range(0, loop_bound(P), BLOCK_R):
        offs_p = p0 + tl.arange(0, BLOCK_R)
        x = tl.load(x_base + offs_i[:, None] * stride_xd + offs_p[None, :],
                    mask=mask_i[:, None] & (offs_p < P)[None, :], other=0.0).to(ACC)
        acc += tl.sum(x, axis=1)
    return acc / P


@triton.jit
def _sop_fwd_kernel(
    x_ptr, mean_ptr, out_ptr, D, P, stride_xn, stride_xd, stride_on, stride_oi,
    ACC: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """cov[n,i,j] = 1/P sum_p (x[n,i,p] - mean[n,i]) (x[n,j,p] - mean[n,j]).

    Each program owns a BLOCK_I x BLOCK_J tile of one image and walks p in
    BLOCK_R steps, centring both operand tiles on load (padding lanes are
    forced to 0 after centring, so they add nothing). Grid:
    (cdiv(D, BLOCK_J), cdiv(D, BLOCK_I), N).
    """
    pid_j = tl.program_id(0)
    pid_i = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < D
    mask_j = offs_j < D
    mi = tl.load(mean_ptr + n * D + offs_i, mask=mask_i, other=0.0)
    mj = tl.load(mean_ptr + n * D + offs_j, mask=mask_j, other=0.0)
    cov = _sop_cov_tile(x_ptr + n * stride_xn, mi, mj, offs_i, offs_j, mask_i, mask_j, P, stride_xd,
                        ACC, USE_DOT, BLOCK_I, BLOCK_J, BLOCK_R)
    tl.store(out_ptr + n * stride_on + offs_i[:, None] * stride_oi + offs_j[None, :],
             cov.to(out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])


@triton.jit
def _sop_cov_tile(x_base, mi, mj, offs_i, offs_j, mask_i, mask_j, P, stride_xd,
                  ACC: tl.constexpr, USE_DOT: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr):
    """The BLOCK_I x BLOCK_J covariance tile of one image (``x_base``) about the row means mi, mj."""
    acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=ACC)
    for p0 in range(0, loop_bound(P), BLOCK_R):
        offs_p = p0 + tl.arange(0, BLOCK_R)
        mask_p = offs_p < P
        m_ip = mask_i[:, None] & mask_p[None, :]
        m_jp = mask_j[:, None] & mask_p[None, :]
        xi = tl.load(x_base + offs_i[:, None] * stride_xd + offs_p[None, :], mask=m_ip, other=0.0).to(ACC)
        xj = tl.load(x_base + offs_j[:, None] * stride_xd + offs_p[None, :], mask=m_jp, other=0.0).to(ACC)
        xi = tl.where(m_ip, xi - mi[:, None], 0.0)
        xj = tl.where(m_jp, xj - mj[:, None], 0.0)
        acc += _mm_nt(xi, xj, USE_DOT)
    return acc / P


@triton.jit
def _sop_bwd_kernel(
    g_ptr, x_ptr, mean_ptr, dx_ptr, D, P, stride_gn, stride_gi, stride_xn, stride_xd,
    ACC: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """dx[n,i,p] = 1/P sum_j (G + G^T)[n,i,j] (x[n,j,p] - mean[n,j]).

    (The means' own gradient vanishes; see :func:`second_order_pool_backward`.)
    Each program owns a BLOCK_I x BLOCK_R tile of dx and walks j in BLOCK_J
    steps, loading G's tile and its transpose. Grid: (cdiv(P, BLOCK_R), cdiv(D, BLOCK_I), N).
    """
    pid_p = tl.program_id(0)
    pid_i = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_p = pid_p * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_i = offs_i < D
    mask_p = offs_p < P
    g_base = g_ptr + n * stride_gn
    x_base = x_ptr + n * stride_xn
    acc = tl.zeros([BLOCK_I, BLOCK_R], dtype=ACC)
    for j0 in range(0, loop_bound(D), BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = offs_j < D
        m_ij = mask_i[:, None] & mask_j[None, :]
        g = tl.load(g_base + offs_i[:, None] * stride_gi + offs_j[None, :], mask=m_ij, other=0.0).to(ACC)
        gt = tl.load(g_base + offs_j[None, :] * stride_gi + offs_i[:, None], mask=m_ij, other=0.0).to(ACC)
        m_jp = mask_j[:, None] & mask_p[None, :]
        mj = tl.load(mean_ptr + n * D + offs_j, mask=mask_j, other=0.0)
        xj = tl.load(x_base + offs_j[:, None] * stride_xd + offs_p[None, :], mask=m_jp, other=0.0).to(ACC)
        xj = tl.where(m_jp, xj - mj[:, None], 0.0)
        acc += _mm_nn(g + gt, xj, USE_DOT)
    tl.store(dx_ptr + n * stride_xn + offs_i[:, None] * stride_xd + offs_p[None, :],
             (acc / P).to(dx_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_p[None, :])


def _sop_means(x: torch.Tensor, blocks: dict) -> torch.Tensor:
    N, D, P = x.shape
    mean = torch.empty(N, D, dtype=torch_acc_dtype(x.dtype), device=x.device)
    if mean.numel():
        with device_context(x):
            _sop_mean_kernel[(triton.cdiv(D, blocks["BLOCK_I"]), N)](
                x, mean, D, P, x.stride(0), x.stride(1),
                ACC=acc_dtype(x.dtype), BLOCK_I=blocks["BLOCK_I"], BLOCK_R=blocks["BLOCK_R"],
            )
    return mean


def second_order_pool_forward(x: torch.Tensor):
    """Launch the covariance. x (N, D, P), P >= 1 -> (cov (N, D, D) in x's dtype, means (N, D) in the acc dtype)."""
    if x.dim() != 3 or x.shape[2] < 1:
        raise ValueError(f"second_order_pool: expected x (N, D, P) with P >= 1, got {tuple(x.shape)}")
    x = x.contiguous()
    check_contiguous("second_order_pool", x=x)
    N, D, P = x.shape
    blocks = _blocks(x.dtype)
    mean = _sop_means(x, blocks)
    out = torch.empty(N, D, D, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out, mean
    grid = (triton.cdiv(D, blocks["BLOCK_J"]), triton.cdiv(D, blocks["BLOCK_I"]), N)
    with device_context(x):
        _sop_fwd_kernel[grid](
            x, mean, out, D, P, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            ACC=acc_dtype(x.dtype), USE_DOT=_use_dot(x.dtype), **blocks,
        )
    return out, mean


def second_order_pool_backward(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """dx = 1/P (G + G^T) Xc with Xc = x - mean (per image; G = dL/dcov).

    Derivation: cov = 1/P Xc Xc^T and Xc = X (I - 1 1^T / P). Then
    dL/dXc = 1/P (G + G^T) Xc =: H Xc / P and
    dL/dX = dL/dXc (I - 1 1^T / P) = H Xc / P - (H Xc 1) 1^T / P^2.
    Xc 1 = 0 (each centred row sums to zero over p), so the second term --
    the gradient through the means -- vanishes and dx = H Xc / P.
    """
    grad, x = grad.contiguous(), x.contiguous()
    check_contiguous("second_order_pool", grad=grad, x=x)
    N, D, P = x.shape
    dx = torch.empty_like(x)
    if dx.numel() == 0:
        return dx
    blocks = _blocks(x.dtype)
    if _use_dot(x.dtype) and not INTERPRET:
        blocks = dict(_GPU_SOP_BWD_BLOCKS)
    grid = (triton.cdiv(P, blocks["BLOCK_R"]), triton.cdiv(D, blocks["BLOCK_I"]), N)
    with device_context(x):
        _sop_bwd_kernel[grid](
            grad, x, mean, dx, D, P, grad.stride(0), grad.stride(1), x.stride(0), x.stride(1),
            ACC=acc_dtype(x.dtype), USE_DOT=_use_dot(x.dtype), **blocks,
        )
    return dx


class SecondOrderPool(torch.autograd.Function):
    """Channel covariance with a fused backward. Saves x and its means (N x D); never the centred copy."""

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        out, mean = second_order_pool_forward(x)
        ctx.save_for_backward(x, mean)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mean = ctx.saved_tensors
        return second_order_pool_backward(grad, x, mean)


def second_order_pool(x):
    """cov (N, D, D) = 1/P sum_p (x_ip - mean_i)(x_jp - mean_j), differentiable."""
    return SecondOrderPool.apply(x)


# --------------------------------------------------------------------------
# Multi-perspective weighted cosine (MMDSR's DSR module)
# --------------------------------------------------------------------------


@triton.jit
def _mpc_fwd_kernel(
    v_ptr, w_ptr, out_ptr, C, D, K, eps, stride_vn, stride_vc, stride_wk, stride_on, stride_oi,
    ACC: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """S[n,i,j] = 1/K sum_k a_k[i,j] / (r_k[i] r_k[j]), where, with w2 = w[k]^2,

        a_k[i,j] = sum_d w2_d v[n,i,d] v[n,j,d],   r_k[i] = max(sqrt(sum_d w2_d v[n,i,d]^2), eps).

    Each program owns a BLOCK_I x BLOCK_J tile of one image; for each k it
    walks d in BLOCK_R steps accumulating a_k's tile (v_i scaled by w2 times
    v_j^T) and the squared norms of both row blocks, then adds the cosine
    tile. Grid: (cdiv(C, BLOCK_J), cdiv(C, BLOCK_I), N).
    """
    pid_j = tl.program_id(0)
    pid_i = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < C
    mask_j = offs_j < C
    v_base = v_ptr + n * stride_vn
    acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=ACC)
    for k in range(0, loop_bound(K)):
        a = tl.zeros([BLOCK_I, BLOCK_J], dtype=ACC)
        qi = tl.zeros([BLOCK_I], dtype=ACC)
        qj = tl.zeros([BLOCK_J], dtype=ACC)
        for d0 in range(0, loop_bound(D), BLOCK_R):
            offs_d = d0 + tl.arange(0, BLOCK_R)
            mask_d = offs_d < D
            w = tl.load(w_ptr + k * stride_wk + offs_d, mask=mask_d, other=0.0).to(ACC)
            w2 = w * w
            vi = tl.load(v_base + offs_i[:, None] * stride_vc + offs_d[None, :],
                         mask=mask_i[:, None] & mask_d[None, :], other=0.0).to(ACC)
            vj = tl.load(v_base + offs_j[:, None] * stride_vc + offs_d[None, :],
                         mask=mask_j[:, None] & mask_d[None, :], other=0.0).to(ACC)
            vi_w = vi * w2[None, :]
            a += _mm_nt(vi_w, vj, USE_DOT)
            qi += tl.sum(vi_w * vi, axis=1)
            qj += tl.sum(vj * vj * w2[None, :], axis=1)
        ri = tl.maximum(tl.sqrt(qi), eps)
        rj = tl.maximum(tl.sqrt(qj), eps)
        acc += a / (ri[:, None] * rj[None, :])
    tl.store(out_ptr + n * stride_on + offs_i[:, None] * stride_oi + offs_j[None, :],
             (acc / K).to(out_ptr.dtype.element_ty), mask=mask_i[:, None] & mask_j[None, :])


def multi_perspective_cosine_forward(v: torch.Tensor, w: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Launch the cosine graph. v (N, C, D), w (K, D), K >= 1 -> S (N, C, C) in v's dtype."""
    if v.dim() != 3 or w.dim() != 2 or w.shape[1] != v.shape[2] or w.shape[0] < 1:
        raise ValueError(f"multi_perspective_cosine: expected v (N, C, D) and w (K, D) with K >= 1; "
                         f"got v {tuple(v.shape)}, w {tuple(w.shape)}")
    v, w = v.contiguous(), w.contiguous()
    check_contiguous("multi_perspective_cosine", v=v, w=w)
    N, C, D = v.shape
    K = w.shape[0]
    out = torch.empty(N, C, C, dtype=v.dtype, device=v.device)
    if out.numel() == 0:
        return out
    blocks = _blocks(v.dtype)
    grid = (triton.cdiv(C, blocks["BLOCK_J"]), triton.cdiv(C, blocks["BLOCK_I"]), N)
    with device_context(v):
        _mpc_fwd_kernel[grid](
            v, w, out, C, D, K, float(eps), v.stride(0), v.stride(1), w.stride(0), out.stride(0), out.stride(1),
            ACC=acc_dtype(v.dtype), USE_DOT=_use_dot(v.dtype), **blocks,
        )
    return out


def multi_perspective_cosine_backward(grad, v, w, eps=COSINE_EPS, need_v=True, need_w=True):
    """Gradients (dv, dw) of S, recomputed in PyTorch one chunk of perspectives at a time.

    Per image, with G = dL/dS, Gs = G + G^T, w2 = w[k]^2, r_k and a_k as in
    the forward, S_k = a_k / (r_k r_k^T) and c_k[i] = 1 if the norm
    sqrt(q_k[i]) > eps (0 where the clamp holds it, which has no gradient):

        U_k[i,d] = sum_j Gs[i,j] v[j,d] / r_k[j]
        B_k[i]   = sum_j Gs[i,j] S_k[i,j]
        T_k[i,d] = (U_k[i,d] - c_k[i] v[i,d] B_k[i] / r_k[i]) / r_k[i]

        dv[n,i,d] = 1/K sum_k w2[k,d] T_k[n,i,d]
        dw[k,d]   = w[k,d]/K sum_{n,i} v[n,i,d] T_k[n,i,d]

    (dL/dv from a_k gives w2 U / r; through r_k[i], dr/dv[i,d] = c w2 v / r
    and dL/dr_k[i] = -B_k[i] / r_k[i]. For w, dL/dw2 collects the same
    terms contracted with v, halved because a_k and r_k are quadratic in v
    but linear in w2; dw = 2 w dL/dw2.)

    The chunk over K is ``_MPC_BWD_K_CHUNK`` perspectives, so the largest
    temporaries are chunk x N x C x D (the size of v when it is 1), never
    N x K x C x D. A fused Triton backward is left for later.
    """
    acc_t = torch_acc_dtype(v.dtype)
    G = grad.to(acc_t)
    Gs = G + G.transpose(1, 2)
    vv = v.to(acc_t)
    ww = w.to(acc_t)
    K = w.shape[0]
    dv = torch.zeros_like(vv) if need_v else None
    dw = torch.empty_like(ww) if need_w else None
    for k0 in range(0, K, _MPC_BWD_K_CHUNK):
        w2 = (ww[k0:k0 + _MPC_BWD_K_CHUNK] ** 2)[:, None, None, :]  # k, 1, 1, D
        vw2 = vv[None] * w2  # k, N, C, D
        q = (vw2 * vv[None]).sum(-1)  # k, N, C
        norm = q.sqrt()
        r = norm.clamp_min(eps)
        c = (norm > eps).to(acc_t)
        s_k = torch.matmul(vw2, vv.transpose(1, 2)[None]) / (r[..., :, None] * r[..., None, :])  # k, N, C, C
        b = (Gs[None] * s_k).sum(-1)  # k, N, C
        u = torch.matmul(Gs[None], vv[None] / r[..., None])  # k, N, C, D
        t = (u - (c * b / r)[..., None] * vv[None]) / r[..., None]
        if need_v:
            dv += (w2 * t).sum(0)
        if need_w:
            dw[k0:k0 + _MPC_BWD_K_CHUNK] = ww[k0:k0 + _MPC_BWD_K_CHUNK] * (vv[None] * t).sum((1, 2))
    return (dv / K).to(v.dtype) if need_v else None, (dw / K).to(w.dtype) if need_w else None


class MultiPerspectiveCosine(torch.autograd.Function):
    """Cosine graph: fused Triton forward; backward by chunked PyTorch recomputation (formula in
    :func:`multi_perspective_cosine_backward`). Saves only v and w."""

    @staticmethod
    def forward(ctx, v, w, eps):
        v, w = v.contiguous(), w.contiguous()
        out = multi_perspective_cosine_forward(v, w, eps)
        ctx.save_for_backward(v, w)
        ctx.eps = eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        v, w = ctx.saved_tensors
        need_v, need_w, _ = ctx.needs_input_grad
        dv, dw = multi_perspective_cosine_backward(grad.contiguous(), v, w, ctx.eps, need_v, need_w)
        return dv, dw, None


def multi_perspective_cosine(v, w, eps: float = COSINE_EPS):
    """S (N, C, C) = 1/K sum_k cos(w[k] * v[n,i], w[k] * v[n,j]), norms clamped at eps; differentiable."""
    return MultiPerspectiveCosine.apply(v, w, eps)
