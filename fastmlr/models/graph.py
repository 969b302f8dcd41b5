"""Label graphs shared by the models: SRDL's learned graph (eq. 3) and ML-GCN's correlation matrix.

- :func:`reweighted_correlation` and :func:`correlation_matrix`: ML-GCN's graph
  from label co-occurrence (Chen et al., CVPR 2019, section 3.4, eq. 7-8):
  conditional probabilities ``P(L_j | L_i) = M_ij / N_i``, binarised at ``tau``,
  re-weighted so a node keeps ``1 - p`` and gives ``p`` to its neighbours, then
  normalised ``D^-1/2 A' D^-1/2`` for the GCN.
- :class:`GraphConv`: one GCN layer ``A_hat @ H @ W``.
- :class:`LabelGraph`: SRDL's ``A_{l+1} = LeakyReLU(V_hat A_l W_l)`` over a
  learned adjacency ``V`` (``V_hat = softmax(V, dim=1)``), initialised so that
  categories stay distinct (docs/srdl.md, fastmlr's resolutions), or from a
  co-occurrence graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LEAKY_SLOPE = 0.2
# Share of its own row a category keeps in SRDL's V_hat at initialisation (ML-GCN's 1 - p).
SELF_WEIGHT = 0.8


def conditional_probabilities(adjacency: Tensor) -> Tensor:
    """``P[i, j] = P(L_j | L_i)`` (Tensor[C, C] float64) from counts or from probabilities.

    Counts (``M[i, j]``: images with both labels, ``M[i, i]``: images with label i) are
    recognised by a value above 1; a label that never occurs gets a zero row.
    """
    a = torch.as_tensor(adjacency, dtype=torch.float64)
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency must be a square C x C matrix, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all() or (a < 0).any():
        raise ValueError("adjacency must hold non-negative finite co-occurrence counts or probabilities")
    if (a > 1).any():
        return a / a.diagonal().clamp_min(1.0)[:, None]
    return a


def reweighted_correlation(adjacency: Tensor, tau: float = 0.4, p: float = 0.2) -> Tensor:
    """ML-GCN's binarised, re-weighted correlation matrix ``A'`` (Tensor[C, C] float64), eq. 7-8.

    ``A_ij = 1`` if ``P(L_j | L_i) >= tau`` (i != j); ``A'_ij = p * A_ij / sum_{k != i} A_ik``
    off the diagonal and ``A'_ii = 1 - p``. A row without a neighbour (or a label that never
    occurs) keeps 1 on itself. Rows sum to 1.
    """
    if not 0.0 <= tau <= 1.0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"tau and p must be in [0, 1], got tau={tau}, p={p}")
    prob = conditional_probabilities(adjacency)
    C = prob.shape[0]
    eye = torch.eye(C, dtype=torch.bool)
    occurs = prob.sum(dim=1, keepdim=True) > 0  # a label never seen has no conditional probabilities
    binary = (prob >= tau) & ~eye & occurs
    deg = binary.sum(dim=1, keepdim=True).to(torch.float64)
    off = torch.where(deg > 0, binary.to(torch.float64) * p / deg.clamp_min(1.0), torch.zeros_like(prob))
    self_w = torch.where(deg[:, 0] > 0, torch.full((C,), 1.0 - p, dtype=torch.float64),
                         torch.ones(C, dtype=torch.float64))
    return off + torch.diag(self_w)


def correlation_matrix(adjacency: Tensor, tau: float = 0.4, p: float = 0.2) -> Tensor:
    """ML-GCN's re-weighted, binarised correlation matrix, normalised (paper eq. 7-8).

    Args:
        adjacency (Tensor[C, C]): co-occurrence counts (diagonal: occurrences of
            each label) or conditional probabilities ``P[i, j] = P(L_j | L_i)``.
        tau: binarisation threshold on ``P``.
        p: total weight a node gives its neighbours (``1 - p`` stays on itself).
    Returns:
        ``D^-1/2 A' D^-1/2`` (Tensor[C, C], float32), ``D`` the row sums of ``A'``.
    """
    a_re = reweighted_correlation(adjacency, tau, p)
    d = a_re.sum(dim=1).pow(-0.5)
    return (d[:, None] * a_re * d[None, :]).to(torch.float32)


class GraphConv(nn.Module):
    """One GCN layer without its non-linearity: ``A_hat @ H @ W``. H (Tensor[C, in]) -> (Tensor[C, out])."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1 / math.sqrt(out_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))

    def forward(self, h: Tensor, adj: Tensor) -> Tensor:
        return adj @ (h @ self.weight)


def self_loop_logit(num_classes: int, self_weight: float = SELF_WEIGHT) -> float:
    """The diagonal ``s`` of ``V = s I`` whose row softmax gives ``self_weight`` to the diagonal."""
    if num_classes == 1:
        return 0.0
    if not 0.0 < self_weight < 1.0:
        raise ValueError(f"self_weight must be in (0, 1), got {self_weight}")
    return math.log(self_weight / (1.0 - self_weight) * (num_classes - 1))


class LabelGraph(nn.Module):
    """Eq. 3: ``A_{l+1} = LeakyReLU(V_hat A_l W_l)`` over a learned adjacency V.

    ``V_hat = softmax(V, dim=1)``. Initialisation (docs/srdl.md, fastmlr's resolutions):
    ``V = s I + 0.1 * noise`` with ``s`` chosen so each category keeps ``self_weight`` (0.8)
    of its row, whatever C is; with ``init_graph`` (a row-stochastic C x C matrix such as
    :func:`reweighted_correlation`'s), ``V = log(init_graph)`` so that ``V_hat`` starts as it.
    ``W_l`` start orthogonal, scaled by LeakyReLU's gain, so the embeddings' norms do not
    shrink layer after layer.

    forward: A0 (Tensor[C, E]) -> X (Tensor[C, E]).
    """

    def __init__(self, num_classes: int, dim: int, layers: int = 2, self_weight: float = SELF_WEIGHT,
                 init_graph: Tensor | None = None):
        super().__init__()
        if init_graph is not None:
            g = torch.as_tensor(init_graph, dtype=torch.float64)
            if tuple(g.shape) != (num_classes, num_classes):
                raise ValueError(f"init_graph must be ({num_classes}, {num_classes}), got {tuple(g.shape)}")
            g = g / g.sum(dim=1, keepdim=True).clamp_min(1e-12)
            v = g.clamp_min(1e-4).log().to(torch.float32)
        else:
            v = torch.randn(num_classes, num_classes) * 0.1 + self_loop_logit(num_classes, self_weight) * torch.eye(num_classes)
        self.adjacency = nn.Parameter(v)
        gain = math.sqrt(2.0 / (1.0 + LEAKY_SLOPE**2))
        self.weights = nn.ParameterList(
            [nn.Parameter(nn.init.orthogonal_(torch.empty(dim, dim), gain=gain)) for _ in range(layers)]
        )

    def normalized_adjacency(self) -> Tensor:
        return torch.softmax(self.adjacency, dim=1)

    def forward(self, a0: Tensor) -> Tensor:
        v_hat = self.normalized_adjacency()
        a = a0
        for w in self.weights:
            a = F.leaky_relu(v_hat @ a @ w, negative_slope=LEAKY_SLOPE)
        return a
