"""Reference implementations of fastmlr's ops in plain PyTorch.

These are the definitions every other backend (C++/CUDA, Triton) is held to.
They follow docs/srdl.md (the function SRDL computes, as fastmlr builds it) and are
written for clarity, not memory: ``car_spatial_attention_ref`` and
``car_pool_ref`` materialise ``N x C x P x D`` tensors, which is exactly what
the fused backends exist to avoid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .constants import FLAT_EPS


def car_spatial_attention_ref(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """Category-specific spatial attention (SRDL eq. 5).

    ``SA[n,c,p] = sigmoid(b + sum_k s[k] * tanh(u[n,p,k] * wc[c,k]))``

    Args:
        u (Tensor[N, P, D]): ``f_sa(F)`` at every location.
        wc (Tensor[C, D]): ``f_w(x_c)`` per category.
        s (Tensor[D]): weight of ``f_s`` (D -> 1).
        b (Tensor[]): bias of ``f_s``.
    Returns:
        Tensor[N, C, P]
    """
    t = torch.tanh(u[:, None, :, :] * wc[None, :, None, :])  # N, C, P, D
    return torch.sigmoid(torch.matmul(t, s) + b)


def car_pool_ref(f: Tensor, sa: Tensor, ca: Tensor) -> Tensor:
    """Category features: attention-weighted map then global max pooling (eq. 6 + GMP).

    ``feat[n,c,k] = max_p 0.5 * f[n,k,p] * (sa[n,c,p] + ca[n,c,k])``

    Args:
        f (Tensor[N, D, P]): backbone feature map, flattened spatially.
        sa (Tensor[N, C, P]): spatial attention.
        ca (Tensor[N, C, D]): channel attention.
    Returns:
        Tensor[N, C, D]; NaN where any of the P terms is NaN (as ``torch.amax``).
    """
    w = sa[:, :, None, :] + ca[:, :, :, None]  # N, C, D, P
    return (0.5 * f[:, None, :, :] * w).amax(dim=-1)


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


# -- AAMN and MMDSR (docs/models/aamn.md, docs/models/mmdsr.md) -----------------------------------

def second_order_pool_ref(x: Tensor) -> Tensor:
    """Global second-order pooling: the channel covariance of each feature map (AAMN's SRE module).

    ``cov[n,i,j] = 1/P * sum_p (x[n,i,p] - mean_p x[n,i]) * (x[n,j,p] - mean_p x[n,j])``

    Args:
        x (Tensor[N, D, P]): feature map, flattened spatially.
    Returns:
        Tensor[N, D, D], symmetric.
    """
    xc = x - x.mean(dim=2, keepdim=True)  # N, D, P: the centred copy a fused kernel never stores
    return torch.matmul(xc, xc.transpose(1, 2)) / x.shape[2]


def multi_perspective_cosine_ref(v: Tensor, w: Tensor, eps: float = 1e-8) -> Tensor:
    """Multi-perspective weighted cosine between every pair of category features (MMDSR's DSR module).

    ``S[n,i,j] = 1/K * sum_k cos(w[k] * v[n,i], w[k] * v[n,j])``, each norm clamped below at ``eps``.

    Args:
        v (Tensor[N, C, D]): category-specific features of each image.
        w (Tensor[K, D]): one weight vector per perspective.
    Returns:
        Tensor[N, C, C], symmetric, entries in [-1, 1].
    """
    vw = v[:, None, :, :] * w[None, :, None, :]  # N, K, C, D
    vn = vw / vw.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.matmul(vn, vn.transpose(-1, -2)).mean(dim=1)  # N, K, C, C -> N, C, C
