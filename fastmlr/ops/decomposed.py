"""The "decomposed" backend: the reference's arithmetic in chunks of categories, for portable graphs.

The reference materialises ``N x C x P x D`` tensors, so a graph traced
through it (ONNX, TensorRT) needs memory that grows with the number of
categories. Here the same elementwise terms and reductions run over fixed
chunks of categories, each chunk a slice of at most :data:`CHUNK_ELEMENTS`
``P x D`` (or ``D x P``) elements per image (at least one category), and the
small per-chunk results (``N x c x P``, ``N x c x D``) are concatenated.
Traced, the chunk loop unrolls into ``ceil(C / chunk)`` copies of a few
standard ops (Mul, Tanh, MatMul, Add, ReduceMax, Concat): every op is in
TensorRT's ONNX parser set, and the largest intermediate is bounded by
``N x max(CHUNK_ELEMENTS, P x D)`` whatever ``C`` is.

It is plain PyTorch (autograd included) and never chosen automatically:
exporters select it with ``use_backend("decomposed")``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference

# Elements of one chunk's N=1 intermediate (c x P x D). 2**20 fp32 = 4 MiB: a few chunks fit in a CPU's L2/L3,
# and the unrolled graph stays short (ResNet-101 at 448 px, P x D = 196 x 2048: 2 categories a chunk).
CHUNK_ELEMENTS = 1 << 20


def categories_per_chunk(per_category: int, budget: int | None = None) -> int:
    """How many categories one chunk holds when each costs ``per_category`` elements (at least 1)."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    return max(1, int(budget) // max(1, int(per_category)))


def _chunks(C: int, per_category: int):
    step = categories_per_chunk(per_category)
    return [(c0, min(C, c0 + step)) for c0 in range(0, C, step)]


def car_spatial_attention_dec(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """``SA[n,c,p] = sigmoid(b + sum_k s[k] * tanh(u[n,p,k] * wc[c,k]))`` one chunk of categories at a time.

    u (Tensor[N, P, D]), wc (Tensor[C, D]), s (Tensor[D]), b (Tensor[]) -> Tensor[N, C, P].
    """
    P, D = u.shape[1], u.shape[2]
    C = wc.shape[0]
    parts = []
    for c0, c1 in _chunks(C, P * D):
        t = torch.tanh(u[:, None, :, :] * wc[None, c0:c1, None, :])  # N, c, P, D
        # A product and a sum, not matmul(t, s): ONNX Runtime runs a MatMul by a 1-D s as a GEMM with one
        # column, 1.2 ms per chunk of 2 x 196 x 2048 against 0.14 ms for Mul + ReduceSum (CPU, 1 thread).
        parts.append((t * s).sum(dim=-1))  # N, c, P
    z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return torch.sigmoid(z + b)


def car_pool_dec(f: Tensor, sa: Tensor, ca: Tensor) -> Tensor:
    """``feat[n,c,k] = max_p 0.5 * f[n,k,p] * (sa[n,c,p] + ca[n,c,k])`` one chunk of categories at a time.

    f (Tensor[N, D, P]), sa (Tensor[N, C, P]), ca (Tensor[N, C, D]) -> Tensor[N, C, D].
    """
    D, P = f.shape[1], f.shape[2]
    C = sa.shape[1]
    # 0.5 * x is exact in binary floating point, so halving f first gives the reference's products.
    half = 0.5 * f[:, None, :, :]  # N, 1, D, P
    parts = []
    for c0, c1 in _chunks(C, D * P):
        w = sa[:, c0:c1, None, :] + ca[:, c0:c1, :, None]  # N, c, D, P
        parts.append((half * w).amax(dim=-1))  # N, c, D
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def multi_perspective_cosine_dec(v: Tensor, w: Tensor, eps: float = 1e-8) -> Tensor:
    """``S[n,i,j] = 1/K sum_k cos(w[k] v[n,i], w[k] v[n,j])`` one perspective at a time (no N x K x C x D tensor)."""
    K = w.shape[0]
    total = None
    for k in range(K):
        vw = v * w[k]  # N, C, D
        vn = vw / vw.norm(dim=-1, keepdim=True).clamp_min(eps)
        term = torch.matmul(vn, vn.transpose(-1, -2))
        total = term if total is None else total + term
    return total / K


IMPLS = {
    "car_spatial_attention": car_spatial_attention_dec,
    "car_pool": car_pool_dec,
    # Its one intermediate (the centred copy, N x D x P) is the input's size: nothing to chunk.
    "second_order_pool": reference.second_order_pool_ref,
    "multi_perspective_cosine": multi_perspective_cosine_dec,
}

__all__ = ["CHUNK_ELEMENTS", "categories_per_chunk", "car_spatial_attention_dec", "car_pool_dec",
           "multi_perspective_cosine_dec", "IMPLS"]
