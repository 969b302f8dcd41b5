"""The "decomposed" backend's chunking: the reference's arithmetic in chunks of categories, for portable graphs.

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

Each op's decomposition is declared with the op (``OpSpec.decomposition``, e.g.
fastmlr/ops/car.py); this module holds the chunking they share. It is plain
PyTorch (autograd included) and never chosen automatically: exporters select
it with ``use_backend("decomposed")``.
"""

from __future__ import annotations

# Elements of one chunk's N=1 intermediate (c x P x D). 2**20 fp32 = 4 MiB: a few chunks fit in a CPU's L2/L3,
# and the unrolled graph stays short (ResNet-101 at 448 px, P x D = 196 x 2048: 2 categories a chunk).
CHUNK_ELEMENTS = 1 << 20


def categories_per_chunk(per_category: int, budget: int | None = None) -> int:
    """How many categories one chunk holds when each costs ``per_category`` elements (at least 1)."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    return max(1, int(budget) // max(1, int(per_category)))


def chunks(C: int, per_category: int) -> list[tuple[int, int]]:
    """``[(c0, c1), ...]``: the chunks of ``C`` categories when each costs ``per_category`` elements."""
    step = categories_per_chunk(per_category)
    return [(c0, min(C, c0 + step)) for c0 in range(0, C, step)]


__all__ = ["CHUNK_ELEMENTS", "categories_per_chunk", "chunks"]
