"""Object erasing (SRDL section 3.3, eq. 7-10): the rectangle to erase from
each chosen category's spatial attention map, and the erasing itself.

``oe_boxes`` has no gradient (the choice of rectangle is a constant mask,
docs/srdl.md "Object erasing"); ``oe_erase`` passes the gradient through
outside the rectangle, which is the same kernel applied to the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..constants import FLAT_EPS, MAX_OE_SIDE
from .utils import INTERPRET, device_context

# oe_erase: positions per program. The interpreter pays per program, a GPU
# wants several programs per map only when maps are large.
_ERASE_BLOCK_INTERPRET = 16384
_ERASE_BLOCK_GPU = 1024


@triton.jit
def _oe_axis_run(m, valid, alpha, flat_eps, BLOCK: tl.constexpr):
    """The OE rule on one marginal ``m`` (BLOCK lanes, ``valid`` ones real).

    Min-max normalise, keep positions >= alpha, and among the runs of
    consecutive kept positions choose the one containing the global maximum
    (exact equality to the maximum); the widest if several do, then the
    first. Returns (start, end, flat), bounds inclusive; flat when
    max - min <= flat_eps (nothing to erase).

    Runs are labelled without shifting lanes: ``key = cumsum(not kept)`` is
    constant inside a run and differs between runs, so run membership is a
    BLOCK x BLOCK equality test.
    """
    # tl.max/tl.min return fp32 for fp16/bf16 input; the extremes are values of
    # m, so casting back is exact and keeps rng and d rounded to m's dtype.
    hi = tl.max(tl.where(valid, m, float("-inf")), axis=0).to(m.dtype)
    lo = tl.min(tl.where(valid, m, float("inf")), axis=0).to(m.dtype)
    rng = hi - lo
    flat = rng <= flat_eps
    # The quotient as the reference computes it: IEEE-rounded (Triton's `/` on
    # fp32 is an approximate division), and for fp16/bf16 rounded back to the
    # map's dtype before it is compared with alpha. fp16/bf16 divide in fp32,
    # which rounds twice but still gives the correctly rounded result
    # (24 >= 2 * 11 + 2 bits); float64's `/` is already div.rn.f64.
    d = m - lo
    denom = tl.where(rng > 0, rng, 1.0)
    if m.dtype == tl.float64:
        v = d / denom
    else:
        v = tl.div_rn(d.to(tl.float32), denom.to(tl.float32)).to(m.dtype)
    on = (v >= alpha) & valid
    is_max = (m == hi) & on
    key = tl.cumsum(tl.where(on, 0, 1), axis=0)
    same = on[:, None] & on[None, :] & (key[:, None] == key[None, :])  # BLOCK x BLOCK
    length = tl.sum(tl.where(same, 1, 0), axis=1)
    has_max = tl.max(tl.where(same & is_max[None, :], 1, 0), axis=1)
    score = tl.where(on, length * has_max, -1)
    best = tl.max(score, axis=0)
    chosen = tl.min(tl.where(score == best, key, BLOCK + 1), axis=0)  # first run among the widest
    in_run = on & (key == chosen)
    pos = tl.arange(0, BLOCK)
    start = tl.min(tl.where(in_run, pos, BLOCK), axis=0)
    end = tl.max(tl.where(in_run, pos, -1), axis=0)
    return start, end, flat


@triton.jit
def _oe_boxes_kernel(
    sa_ptr, thr_ptr, out_ptr, H, W,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Box of one map (SRDL eq. 7-10, docs/srdl.md "Object erasing").

    mx[x] = max_y SA[y, x], my[y] = max_x SA[y, x]; each marginal goes
    through :func:`_oe_axis_run`; the box is (x0, x1, y0, y1), or -1 four
    times if either marginal is flat or the map holds a NaN or an infinity. The arithmetic stays in the map's dtype
    (alpha and the flatness threshold come as a tensor of that dtype) so the
    thresholds agree with the reference bit for bit.
    Grid: (N * K,), one program per map (contiguous H x W).
    """
    pid = tl.program_id(0).to(tl.int64)
    ys = tl.arange(0, BLOCK_H)
    xs = tl.arange(0, BLOCK_W)
    mask = (ys < H)[:, None] & (xs < W)[None, :]
    m = tl.load(sa_ptr + pid * H * W + ys[:, None] * W + xs[None, :], mask=mask, other=float("-inf"))
    alpha = tl.load(thr_ptr)
    flat_eps = tl.load(thr_ptr + 1)
    x0, x1, fx = _oe_axis_run(tl.max(m, axis=0).to(m.dtype), xs < W, alpha, flat_eps, BLOCK_W)
    y0, y1, fy = _oe_axis_run(tl.max(m, axis=1).to(m.dtype), ys < H, alpha, flat_eps, BLOCK_H)
    j = tl.arange(0, 4)
    box = tl.where(j == 0, x0, tl.where(j == 1, x1, tl.where(j == 2, y0, y1)))
    # A map holding a NaN or an infinity gets no box (the documented rule); masked lanes hold -inf.
    bad = tl.max(tl.where(mask & ((m != m) | (tl.abs(m) == float("inf"))), 1, 0))
    box = tl.where(fx | fy | (bad > 0), -1, box)
    tl.store(out_ptr + pid * 4 + j, box.to(tl.int64))


@triton.jit
def _oe_erase_kernel(src_ptr, box_ptr, dst_ptr, HW, W, BLOCK: tl.constexpr):
    """dst = src with the inclusive box (x0, x1, y0, y1) of its map set to 0.

    A row of -1 matches no position (x >= -1 and x <= -1 never holds for
    x >= 0), so it erases nothing. Used for the forward (src = SA) and the
    backward (src = grad): the gradient of a constant mask is the mask.
    Grid: (N * K, cdiv(H * W, BLOCK)).
    """
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    y = offs // W
    x = offs % W
    x0 = tl.load(box_ptr + pid * 4)
    x1 = tl.load(box_ptr + pid * 4 + 1)
    y0 = tl.load(box_ptr + pid * 4 + 2)
    y1 = tl.load(box_ptr + pid * 4 + 3)
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    v = tl.load(src_ptr + pid * HW + offs, mask=mask, other=0.0)
    tl.store(dst_ptr + pid * HW + offs, tl.where(inside, tl.zeros_like(v), v), mask=mask)


def oe_boxes(sa: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """sa (N, K, H, W) -> int64 boxes (N, K, 4) of inclusive (x0, x1, y0, y1), -1 rows where flat."""
    if sa.dim() != 4:
        raise ValueError(f"oe_boxes: sa must be (N, K, H, W), got shape {tuple(sa.shape)}")
    N, K, H, W = sa.shape
    if max(H, W) > MAX_OE_SIDE:
        raise ValueError(f"oe_boxes: maps up to {MAX_OE_SIDE} x {MAX_OE_SIDE} fit one Triton program, "
                         f"got H x W = {H} x {W}")
    sa = sa.detach().contiguous()
    out = torch.empty(N, K, 4, dtype=torch.int64, device=sa.device)
    if N * K == 0:
        return out
    if H * W == 0:
        raise ValueError(f"oe_boxes: maps must have at least one position, got H x W = {H} x {W}")
    thr = torch.tensor([alpha, FLAT_EPS], dtype=sa.dtype, device=sa.device)
    block_h, block_w = triton.next_power_of_2(H), triton.next_power_of_2(W)
    with device_context(sa):
        _oe_boxes_kernel[(N * K,)](sa, thr, out, H, W, BLOCK_H=block_h, BLOCK_W=block_w,
                                   **({} if INTERPRET else dict(num_warps=4 if block_h * block_w <= 4096 else 8)))
    return out


def _erase(src: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    N, K, H, W = src.shape
    src = src.contiguous()
    dst = torch.empty_like(src)
    if dst.numel() == 0:
        return dst
    cap = _ERASE_BLOCK_INTERPRET if INTERPRET else _ERASE_BLOCK_GPU
    block = min(triton.next_power_of_2(H * W), cap)
    with device_context(src):
        _oe_erase_kernel[(N * K, triton.cdiv(H * W, block))](src, boxes, dst, H * W, W, BLOCK=block)
    return dst


class OEErase(torch.autograd.Function):
    """SA' = SA outside each box, 0 inside; the gradient is masked the same way."""

    @staticmethod
    def forward(ctx, sa, boxes):
        if sa.dim() != 4 or tuple(boxes.shape) != (*sa.shape[:2], 4) or boxes.dtype != torch.int64:
            raise ValueError(f"oe_erase: expected sa (N, K, H, W) and int64 boxes (N, K, 4); "
                             f"got sa {tuple(sa.shape)}, boxes {tuple(boxes.shape)} {boxes.dtype}")
        boxes = boxes.contiguous()
        ctx.save_for_backward(boxes)
        return _erase(sa, boxes)

    @staticmethod
    def backward(ctx, grad):
        (boxes,) = ctx.saved_tensors
        return _erase(grad, boxes), None


def oe_erase(sa: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """sa (N, K, H, W), int64 boxes (N, K, 4) -> erased maps (N, K, H, W), differentiable in sa."""
    return OEErase.apply(sa, boxes)
