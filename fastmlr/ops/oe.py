"""SRDL's object-erasing ops, declared once: ``oe_boxes`` and ``oe_erase`` (docs/srdl.md, "Object erasing").

Training-only: neither is in the fused ONNX op set nor a TensorRT plugin, and
neither has a decomposition (no exported graph erases). See fastmlr/ops/opspec.py
for what a declaration holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..constants import FLAT_EPS, MAX_OE_SIDE
from . import _dispatch
from ._checks import check
from .opspec import Impl, OpSpec, declare

# -- definitions -------------------------------------------------------------------------------------------


def _axis_runs(m: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pick, per row of ``m`` (B, L), the run of the OE rule.

    Returns (start, end, flat): inclusive bounds of the run above ``alpha``
    (after min-max normalisation) that contains the global maximum, the widest
    such run on ties, then the first; ``flat`` marks rows with no object.
    """
    B, L = m.shape
    lo = m.amin(dim=1, keepdim=True)
    hi = m.amax(dim=1, keepdim=True)
    rng = hi - lo
    flat = rng.squeeze(1) <= FLAT_EPS
    v = (m - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))
    on = v >= alpha
    is_max = (m == hi) & on
    prev_on = torch.cat([torch.zeros_like(on[:, :1]), on[:, :-1]], dim=1)
    start_flag = on & ~prev_on
    run_id = torch.cumsum(start_flag.long(), dim=1) * on.long()  # 0 = off, runs numbered 1..
    ones = torch.ones_like(run_id)
    run_len = torch.zeros(B, L + 1, dtype=torch.long, device=m.device).scatter_add_(1, run_id, ones)
    has_max = torch.zeros(B, L + 1, dtype=torch.long, device=m.device).scatter_reduce_(
        1, run_id, is_max.long(), reduce="amax"
    )
    score = run_len * has_max
    score[:, 0] = -1  # run 0 is "off", never chosen
    chosen = torch.argmax(score, dim=1, keepdim=True)  # first maximum on ties
    pos = torch.arange(L, device=m.device).expand(B, L)
    in_run = run_id == chosen
    big = torch.full_like(pos, L)
    start = torch.where(in_run, pos, big).amin(dim=1)
    end = torch.where(in_run, pos, -torch.ones_like(pos)).amax(dim=1)
    return start, end, flat


def oe_boxes_ref(sa: Tensor, alpha: float = 0.5) -> Tensor:
    """Object-erasing rectangles (SRDL eq. 7-10, docs/srdl.md "Object erasing").

    Args:
        sa (Tensor[N, K, H, W]): spatial attention maps of the chosen categories.
        alpha: threshold on the min-max normalised marginals, in (0, 1].
    Returns:
        int64 Tensor[N, K, 4] of inclusive ``(x0, x1, y0, y1)``, x along W;
        a row of -1 where either marginal is flat, or where the map holds a
        NaN or an infinity (nothing erased).
    """
    N, K, H, W = sa.shape
    maps = sa.detach().reshape(N * K, H, W)
    non_finite = ~torch.isfinite(maps).flatten(1).all(dim=1)
    mx = maps.amax(dim=1)  # (NK, W): max over y
    my = maps.amax(dim=2)  # (NK, H): max over x
    x0, x1, fx = _axis_runs(mx, alpha)
    y0, y1, fy = _axis_runs(my, alpha)
    boxes = torch.stack([x0, x1, y0, y1], dim=1)
    flat = (fx | fy | non_finite)[:, None]
    boxes = torch.where(flat, torch.full_like(boxes, -1), boxes)
    return boxes.reshape(N, K, 4)


def oe_erase_ref(sa: Tensor, boxes: Tensor) -> Tensor:
    """Zero each box of ``boxes`` in its map of ``sa``; rows of -1 leave the map as is.

    Args:
        sa (Tensor[N, K, H, W]).
        boxes (int64 Tensor[N, K, 4]): inclusive ``(x0, x1, y0, y1)``.
    Returns:
        Tensor[N, K, H, W]; the gradient flows to ``sa`` outside the boxes.
    """
    N, K, H, W = sa.shape
    xs = torch.arange(W, device=sa.device)
    ys = torch.arange(H, device=sa.device)
    b = boxes.to(sa.device)
    in_x = (xs >= b[..., 0:1]) & (xs <= b[..., 1:2])  # N, K, W
    in_y = (ys >= b[..., 2:3]) & (ys <= b[..., 3:4])  # N, K, H
    mask = in_y[..., :, None] & in_x[..., None, :]
    return sa.masked_fill(mask, 0.0)


# -- the public functions -------------------------------------------------------------------------------------


def oe_boxes(sa: Tensor, alpha: float = 0.5, *, backend: str | None = None) -> Tensor:
    """Object-erasing rectangles, SRDL eq. 7-10 (docs/srdl.md, "Object erasing").

    Args:
        sa (Tensor[N, K, H, W]): spatial attention of the chosen categories.
        alpha: threshold in (0, 1] on the min-max normalised marginals.
    Returns:
        int64 Tensor[N, K, 4] of inclusive ``(x0, x1, y0, y1)``, x along W, or
        a row of -1 where the map is flat. A map holding a NaN or an infinity
        anywhere gets the row of -1 too (nothing erased), on every backend.
        No gradient.
    Under autocast ("promote"): sa keeps its dtype.
    """
    check(sa.dim() == 4, f"oe_boxes: sa must be (N, K, H, W), got shape {tuple(sa.shape)}")
    check(sa.is_floating_point(), f"oe_boxes: sa must be floating point, got {sa.dtype}")
    check(sa.shape[2] >= 1 and sa.shape[3] >= 1,
          f"oe_boxes: sa must have H, W >= 1 (a map with positions), got shape {tuple(sa.shape)}")
    check(0.0 < float(alpha) <= 1.0, f"oe_boxes: alpha must be in (0, 1], got {alpha}")
    return _dispatch.call("oe_boxes", (sa.detach(), float(alpha)), backend)


def oe_erase(sa: Tensor, boxes: Tensor, *, backend: str | None = None) -> Tensor:
    """Zero each inclusive box ``(x0, x1, y0, y1)`` in its map; rows of -1 erase nothing.

    Args:
        sa (Tensor[N, K, H, W]), boxes (int64 Tensor[N, K, 4]).
    Returns:
        Tensor[N, K, H, W]; gradients flow to ``sa`` outside the boxes.
    Under autocast ("promote"): sa keeps its dtype.
    """
    check(sa.dim() == 4, f"oe_erase: sa must be (N, K, H, W), got shape {tuple(sa.shape)}")
    check(sa.is_floating_point(), f"oe_erase: sa must be floating point, got {sa.dtype}")
    check(tuple(boxes.shape) == (*sa.shape[:2], 4),
          f"oe_erase: boxes must be ({sa.shape[0]}, {sa.shape[1]}, 4) to match sa, got {tuple(boxes.shape)}")
    check(boxes.dtype == torch.int64, f"oe_erase: boxes must be int64, got {boxes.dtype}")
    check(boxes.device == sa.device, f"oe_erase: boxes on {boxes.device} but sa on {sa.device}")
    return _dispatch.call("oe_erase", (sa, boxes), backend)


# -- implementations ---------------------------------------------------------------------------------------------

_CPP_READY = False


def _cpp_ops():
    """``torch.ops.fastmlr`` with the fake kernels and the erasing's gradient registered (once)."""
    global _CPP_READY
    ops = torch.ops.fastmlr
    if not _CPP_READY:
        _CPP_READY = True
        torch.library.register_fake("fastmlr::oe_boxes")(
            lambda sa, alpha: sa.new_empty((sa.shape[0], sa.shape[1], 4), dtype=torch.int64))
        torch.library.register_fake("fastmlr::oe_erase")(
            lambda sa, boxes: torch.empty_like(sa, memory_format=torch.contiguous_format))

        def setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[1])

        def backward(ctx, grad):
            (boxes,) = ctx.saved_tensors
            # The erased rectangle is a constant mask: its gradient is the mask applied to grad.
            return ops.oe_erase(grad, boxes), None

        torch.library.register_autograd("fastmlr::oe_erase", backward, setup_context=setup)
    return ops


def _cpp_boxes():
    ops = _cpp_ops()
    return lambda sa, alpha: ops.oe_boxes(sa, alpha)


def _cpp_erase():
    ops = _cpp_ops()
    return lambda sa, boxes: ops.oe_erase(sa, boxes)


def _triton_boxes():
    from ..kernels import oe

    return oe.oe_boxes


def _triton_erase():
    from ..kernels import oe

    return oe.oe_erase


def _one_program_holds_the_map(device_type: str, tensors: tuple) -> str | None:
    H, W = tensors[0].shape[-2:]
    if max(H, W) > MAX_OE_SIDE:
        return f"maps of {H} x {W} exceed the {MAX_OE_SIDE} x {MAX_OE_SIDE} that one program holds"
    return None


# Erasing and boxes only compare and copy: exact in every floating dtype.
_CPP_DTYPES = dict.fromkeys(("cpu", "cuda"), (torch.float32, torch.float64, torch.float16, torch.bfloat16))
# SRDL erases the top K=3 categories' 14 x 14 maps (448 px images, stride 32).
_SIZES = {"small": (2, 3, 9, 11), "paper": (16, 3, 14, 14)}


def _boxes_examples(size, gen):
    return torch.sigmoid(3.0 * torch.randn(*_SIZES[size], generator=gen)), 0.5


def _erase_examples(size, gen):
    sa = torch.sigmoid(3.0 * torch.randn(*_SIZES[size], generator=gen))
    return sa, oe_boxes_ref(sa, 0.5)


OE_BOXES = declare(OpSpec(
    name="oe_boxes",
    schema="oe_boxes(Tensor sa, float alpha=0.5) -> Tensor",
    reference=oe_boxes_ref,
    autocast="promote",  # comparisons
    output_shape=lambda shapes: (shapes[0][0], shapes[0][1], 4),
    function=oe_boxes,
    make_examples=_boxes_examples,
    impls={"cpp": Impl(_cpp_boxes, dtypes=_CPP_DTYPES), "triton": Impl(_triton_boxes, _one_program_holds_the_map)},
    differentiable=False,
    doc="SRDL eq. 7-10: object-erasing rectangles",
))

OE_ERASE = declare(OpSpec(
    name="oe_erase",
    schema="oe_erase(Tensor sa, Tensor boxes) -> Tensor",
    reference=oe_erase_ref,
    autocast="promote",  # copies
    output_shape=lambda shapes: tuple(shapes[0]),
    function=oe_erase,
    make_examples=_erase_examples,
    impls={"cpp": Impl(_cpp_erase, dtypes=_CPP_DTYPES), "triton": Impl(_triton_erase)},
    doc="SRDL: zero each object-erasing rectangle",
))
