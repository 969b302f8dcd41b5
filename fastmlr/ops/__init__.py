"""fastmlr's hot ops: the public functional API.

One definition of what each op computes (``fastmlr.ops.reference`` and
docs/srdl.md), several implementations behind :func:`available_backends`.
Which implementation runs: an op's ``backend=`` argument, else the innermost
``with use_backend(name):`` block, else ``$FASTMLR_BACKEND``, else the fastest
backend that accepts the call. :func:`backend_status` says, per device (and
op), which backends run and why the others refuse; ``python -m fastmlr.ops``
prints it. The optional backends ("cpp", "triton") are imported on first use,
not by ``import fastmlr.ops`` (see fastmlr/ops/_dispatch.py).

Under ``torch.autocast`` every op follows one rule, whichever backend runs it
(:data:`AUTOCAST_RULES`, explained in fastmlr/ops/_autocast.py): "lower" casts its
float32/16 inputs to the autocast dtype (car_spatial_attention, a fused linear
layer), "fp32" to float32 (multi_perspective_cosine, a cosine similarity),
"promote" to the widest floating dtype among its inputs (car_pool, oe_boxes,
oe_erase, second_order_pool); the op then runs with autocast disabled. So an
op may be handed float16/bfloat16 activations with float32 parameters there.
Outside autocast, the floating inputs of an op must share one dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import decomposed, reference
from ._autocast import RULES as AUTOCAST_RULES
from ._autocast import cast_inputs as _autocast_inputs
from ._dispatch import (
    OPS,
    Backend,
    BackendError,
    BackendStatus,
    available_backends,
    backend_status,
    current_backend,
    register_backend,
    select,
    use_backend,
)

__all__ = [
    "car_spatial_attention",
    "car_pool",
    "oe_boxes",
    "oe_erase",
    "second_order_pool",
    "multi_perspective_cosine",
    "available_backends",
    "backend_status",
    "BackendStatus",
    "use_backend",
    "current_backend",
    "BackendError",
    "register_backend",
    "OPS",
    "AUTOCAST_RULES",
]

register_backend(
    Backend(
        name="reference",
        impls={
            "car_spatial_attention": reference.car_spatial_attention_ref,
            "car_pool": reference.car_pool_ref,
            "oe_boxes": reference.oe_boxes_ref,
            "oe_erase": reference.oe_erase_ref,
            "second_order_pool": reference.second_order_pool_ref,
            "multi_perspective_cosine": reference.multi_perspective_cosine_ref,
        },
        # Last resort everywhere: it materialises N x C x P x D.
        priority={"cpu": 100, "cuda": 100, "meta": 100},
    )
)
register_backend(
    Backend(
        name="decomposed",
        impls=dict(decomposed.IMPLS),
        # Runs only when named: the portable ONNX op set traces through it, in chunks of
        # categories (fastmlr/ops/decomposed.py). Listed before the reference, which it outruns.
        priority={"cpu": 90, "cuda": 90, "meta": 90},
        auto=False,
    )
)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _same_device_dtype(op: str, **ts: Tensor) -> None:
    first = next(iter(ts.items()))
    for name, t in ts.items():
        _check(
            t.device == first[1].device,
            f"{op}: {name} is on {t.device} but {first[0]} is on {first[1].device}",
        )
        _check(t.is_floating_point(), f"{op}: {name} must be floating point, got {t.dtype}")
        _check(
            t.dtype == first[1].dtype,
            f"{op}: {name} has dtype {t.dtype} but {first[0]} has {first[1].dtype}",
        )


def car_spatial_attention(u: Tensor, wc: Tensor, s: Tensor, b: Tensor, *, backend: str | None = None) -> Tensor:
    """Category-specific spatial attention, SRDL eq. 5 (docs/srdl.md step 5).

    ``SA[n,c,p] = sigmoid(b + sum_k s[k] * tanh(u[n,p,k] * wc[c,k]))``

    Args:
        u (Tensor[N, P, D]), wc (Tensor[C, D]), s (Tensor[D]), b (Tensor[]).
    Returns:
        Tensor[N, C, P]
    Under autocast ("lower"): u, wc, s, b are cast to the autocast dtype, as a linear layer's are.
    """
    _check(u.dim() == 3, f"car_spatial_attention: u must be (N, P, D), got shape {tuple(u.shape)}")
    _check(wc.dim() == 2, f"car_spatial_attention: wc must be (C, D), got shape {tuple(wc.shape)}")
    D = u.shape[2]
    _check(wc.shape[1] == D, f"car_spatial_attention: wc must be (C, {D}) to match u (N, P, {D}), got {tuple(wc.shape)}")
    _check(tuple(s.shape) == (D,), f"car_spatial_attention: s must be ({D},), got {tuple(s.shape)}")
    _check(b.numel() == 1 and b.dim() <= 1, f"car_spatial_attention: b must be a scalar tensor, got shape {tuple(b.shape)}")
    b = b.reshape(())
    (u, wc, s, b), ctx = _autocast_inputs("car_spatial_attention", (u, wc, s, b), u.device.type)
    _same_device_dtype("car_spatial_attention", u=u, wc=wc, s=s, b=b)
    impl = select("car_spatial_attention", (u, wc, s, b), backend).impls["car_spatial_attention"]
    with ctx:
        return impl(u, wc, s, b)


def car_pool(f: Tensor, sa: Tensor, ca: Tensor, *, backend: str | None = None) -> Tensor:
    """Category features, SRDL eq. 6 then global max pooling (docs/srdl.md step 6).

    ``feat[n,c,k] = max_p 0.5 * f[n,k,p] * (sa[n,c,p] + ca[n,c,k])``

    Args:
        f (Tensor[N, D, P]), sa (Tensor[N, C, P]), ca (Tensor[N, C, D]).
    Returns:
        Tensor[N, C, D]. NaN propagates, as in ``torch.amax``: ``feat[n,c,k]`` is
        NaN when any of its P terms is (every backend; the gradient then goes to
        the first NaN position). Infinities take part in the max as values.
    Under autocast ("promote"): f, sa, ca are cast to the widest of their dtypes.
    """
    _check(f.dim() == 3, f"car_pool: f must be (N, D, P), got shape {tuple(f.shape)}")
    N, D, P = f.shape
    _check(sa.dim() == 3 and sa.shape[0] == N and sa.shape[2] == P,
           f"car_pool: sa must be ({N}, C, {P}) to match f {tuple(f.shape)}, got {tuple(sa.shape)}")
    C = sa.shape[1]
    _check(tuple(ca.shape) == (N, C, D),
           f"car_pool: ca must be ({N}, {C}, {D}) to match f and sa, got {tuple(ca.shape)}")
    _check(P >= 1, "car_pool: f has no spatial positions (P = 0)")
    (f, sa, ca), ctx = _autocast_inputs("car_pool", (f, sa, ca), f.device.type)
    _same_device_dtype("car_pool", f=f, sa=sa, ca=ca)
    impl = select("car_pool", (f, sa, ca), backend).impls["car_pool"]
    with ctx:
        return impl(f, sa, ca)


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
    _check(sa.dim() == 4, f"oe_boxes: sa must be (N, K, H, W), got shape {tuple(sa.shape)}")
    _check(sa.is_floating_point(), f"oe_boxes: sa must be floating point, got {sa.dtype}")
    _check(sa.shape[2] >= 1 and sa.shape[3] >= 1,
           f"oe_boxes: sa must have H, W >= 1 (a map with positions), got shape {tuple(sa.shape)}")
    _check(0.0 < float(alpha) <= 1.0, f"oe_boxes: alpha must be in (0, 1], got {alpha}")
    sa = sa.detach()
    (sa,), ctx = _autocast_inputs("oe_boxes", (sa,), sa.device.type)
    impl = select("oe_boxes", (sa,), backend).impls["oe_boxes"]
    with ctx:
        return impl(sa, float(alpha))


def oe_erase(sa: Tensor, boxes: Tensor, *, backend: str | None = None) -> Tensor:
    """Zero each inclusive box ``(x0, x1, y0, y1)`` in its map; rows of -1 erase nothing.

    Args:
        sa (Tensor[N, K, H, W]), boxes (int64 Tensor[N, K, 4]).
    Returns:
        Tensor[N, K, H, W]; gradients flow to ``sa`` outside the boxes.
    Under autocast ("promote"): sa keeps its dtype.
    """
    _check(sa.dim() == 4, f"oe_erase: sa must be (N, K, H, W), got shape {tuple(sa.shape)}")
    _check(sa.is_floating_point(), f"oe_erase: sa must be floating point, got {sa.dtype}")
    _check(tuple(boxes.shape) == (*sa.shape[:2], 4),
           f"oe_erase: boxes must be ({sa.shape[0]}, {sa.shape[1]}, 4) to match sa, got {tuple(boxes.shape)}")
    _check(boxes.dtype == torch.int64, f"oe_erase: boxes must be int64, got {boxes.dtype}")
    _check(boxes.device == sa.device, f"oe_erase: boxes on {boxes.device} but sa on {sa.device}")
    (sa, boxes), ctx = _autocast_inputs("oe_erase", (sa, boxes), sa.device.type)
    impl = select("oe_erase", (sa, boxes), backend).impls["oe_erase"]
    with ctx:
        return impl(sa, boxes)


def second_order_pool(x: Tensor, *, backend: str | None = None) -> Tensor:
    """Global second-order pooling (channel covariance), AAMN's spatial-relation module (docs/models/aamn.md).

    ``cov[n,i,j] = 1/P * sum_p (x[n,i,p] - mean_p x[n,i]) * (x[n,j,p] - mean_p x[n,j])``

    Args:
        x (Tensor[N, D, P]).
    Returns:
        Tensor[N, D, D]
    Under autocast ("promote", as ``torch.cov``): x keeps its dtype.
    """
    _check(x.dim() == 3, f"second_order_pool: x must be (N, D, P), got shape {tuple(x.shape)}")
    _check(x.shape[2] >= 1, "second_order_pool: x has no spatial positions (P = 0)")
    (x,), ctx = _autocast_inputs("second_order_pool", (x,), x.device.type)
    _same_device_dtype("second_order_pool", x=x)
    impl = select("second_order_pool", (x,), backend).impls["second_order_pool"]
    with ctx:
        return impl(x)


def multi_perspective_cosine(v: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """Multi-perspective weighted cosine graph, MMDSR's dynamic semantic module (docs/models/mmdsr.md).

    ``S[n,i,j] = 1/K * sum_k cos(w[k] * v[n,i], w[k] * v[n,j])`` (norms clamped below at 1e-8).

    Args:
        v (Tensor[N, C, D]): category features; w (Tensor[K, D]): perspective weights.
    Returns:
        Tensor[N, C, C]
    Under autocast ("fp32", as ``cosine_similarity``): v and w are cast to float32.
    """
    _check(v.dim() == 3, f"multi_perspective_cosine: v must be (N, C, D), got shape {tuple(v.shape)}")
    _check(w.dim() == 2 and w.shape[1] == v.shape[2],
           f"multi_perspective_cosine: w must be (K, {v.shape[2]}) to match v {tuple(v.shape)}, got {tuple(w.shape)}")
    _check(w.shape[0] >= 1, "multi_perspective_cosine: w has no perspectives (K = 0)")
    (v, w), ctx = _autocast_inputs("multi_perspective_cosine", (v, w), v.device.type)
    _same_device_dtype("multi_perspective_cosine", v=v, w=w)
    impl = select("multi_perspective_cosine", (v, w), backend).impls["multi_perspective_cosine"]
    with ctx:
        return impl(v, w)

