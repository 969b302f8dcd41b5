"""ML-GCN: multi-label image recognition with graph convolutional networks.

Chen, Wei, Wang, Guo, "Multi-Label Image Recognition with Graph Convolutional
Networks", CVPR 2019. A peer of SRDL in the SRDL paper's table 3 (32.40 ms).

The image side is the baseline's: ``x = GMP(backbone(I))`` (Tensor[N, D]).
The label side turns label embeddings ``A0`` (Tensor[C, E]) into one classifier
per category with a two-layer GCN over a label graph::

    H1 = LeakyReLU_0.2(A_hat @ A0 @ W1)      W1: E x hidden (paper: 1024)
    W  = A_hat @ H1 @ W2                     W2: hidden x D
    logits = x @ W^T                         (Tensor[N, C]; no bias, as in the paper)

The graph ``A_hat`` (Tensor[C, C]), fastmlr's choice, since a model is built
before any dataset statistics exist:

- ``adjacency=`` given (C x C co-occurrence *counts* ``M[i, j]`` = images with
  both i and j, ``M[i, i]`` = images with i; or conditional *probabilities*
  ``P[i, j] = P(j | i)``; counts are recognised by a value above 1): the
  paper's correlation matrix (section 3.4). ``P`` is binarised at
  ``tau`` (0.4), re-weighted so each row gives ``p`` (0.2) to its neighbours
  together and ``1 - p`` to itself, then normalised ``D^-1/2 A D^-1/2``. It is
  a fixed buffer, saved with the model.
- otherwise: a learned adjacency, SRDL's :class:`~fastmlr.models.graph.LabelGraph`
  (a C x C parameter around a dominant self-loop, used as ``softmax(V, dim=1)``);
  only its adjacency is used, since its square E x E layer weights cannot map
  E -> hidden -> D. This departs from the paper, which never learns the graph:
  pass ``adjacency`` for the paper's model.

``python -m fastmlr.cooccurrence`` (or ``fastmlr.cooccurrence.label_cooccurrence``)
makes the counts from any fastmlr dataset; ``python -m fastmlr.train --adjacency
cooccurrence`` passes them, and is what ``train`` chooses for mlgcn when ``--adjacency`` is left out
(the registry's ``defaults``; ``--adjacency learned`` asks for the learned graph). A checkpoint records which of the two was used (``config["fixed_adjacency"]``);
rebuilding a fixed-graph model without ``adjacency`` makes a placeholder
buffer that the checkpoint's state dict then fills.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel, fold_buffer, label_embeddings_or_random
from .graph import GraphConv, LabelGraph, correlation_matrix


class MLGCN(MLRModel):
    """ML-GCN: GMP image features classified by GCN-generated per-category classifiers.

    Args:
        num_classes: C.
        backbone: a name from ``fastmlr.models.backbones.BACKBONES``.
        weights: ImageNet weights for the backbone (path, "imagenet" for packaged ones, None).
        embeddings (Tensor[C, E] | None): label embeddings A0 (``fastmlr.labels``); random if None.
        embed_dim: E when ``embeddings`` is None.
        hidden: width of the GCN's hidden layer (paper: 1024).
        adjacency (Tensor[C, C] | None): co-occurrence counts or probabilities (see the module
            docstring); None learns the graph.
        tau, p: the correlation matrix's threshold and re-weighting.
        fixed_adjacency: set by checkpoints; True with no ``adjacency`` makes a placeholder graph.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        weights: str | None = None,
        embeddings: Tensor | None = None,
        embed_dim: int = 300,
        hidden: int = 1024,
        adjacency: Tensor | None = None,
        tau: float = 0.4,
        p: float = 0.2,
        fixed_adjacency: bool | None = None,
    ):
        embeddings = label_embeddings_or_random("ML-GCN", embeddings, num_classes, embed_dim)
        embed_dim = embeddings.shape[1]
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if adjacency is not None:
            adjacency = torch.as_tensor(adjacency)
            if tuple(adjacency.shape) != (num_classes, num_classes):
                raise ValueError(
                    f"adjacency must be ({num_classes}, {num_classes}) for {num_classes} classes, "
                    f"got {tuple(adjacency.shape)}"
                )
        fixed = adjacency is not None if fixed_adjacency is None else bool(fixed_adjacency)
        if adjacency is not None and not fixed:
            raise ValueError("fixed_adjacency=False contradicts the adjacency given (drop one of them)")
        super().__init__(
            num_classes,
            dict(backbone=backbone, embed_dim=int(embed_dim), hidden=int(hidden), tau=float(tau), p=float(p),
                 fixed_adjacency=fixed),
        )
        self.backbone = Backbone(backbone, weights)
        D = self.backbone.out_channels
        self.register_buffer("label_embeddings", embeddings.clone())
        if fixed:
            a_hat = correlation_matrix(adjacency, tau, p) if adjacency is not None else torch.eye(num_classes)
            self.register_buffer("adjacency_hat", a_hat)
            self.graph = None
        else:
            self.graph = LabelGraph(num_classes, int(embed_dim), layers=0)
        self.gc1 = GraphConv(int(embed_dim), int(hidden))
        self.gc2 = GraphConv(int(hidden), D)
        # W once computed, set by fold_constants (None: computed by the GCN each call).
        self.register_buffer("folded_classifiers", None, persistent=False)

    def normalized_adjacency(self) -> Tensor:
        """``A_hat`` (Tensor[C, C])."""
        return self.adjacency_hat if self.graph is None else self.graph.normalized_adjacency()

    def classifiers(self) -> Tensor:
        """The GCN's output: one classifier per category, ``W`` (Tensor[C, D])."""
        if self.folded_classifiers is not None:
            return self.folded_classifiers
        adj = self.normalized_adjacency()
        h = F.leaky_relu(self.gc1(self.label_embeddings, adj), negative_slope=0.2)
        return self.gc2(h, adj)

    def fold_constants(self) -> None:
        """The classifiers depend on no image: ``W`` becomes a buffer; the GCN and its graph are no longer read."""
        with torch.no_grad():
            self.folded_classifiers = fold_buffer(self.classifiers())

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward_head(self, feats: Tensor) -> Tensor:
        x = feats.amax(dim=(2, 3))
        return x @ self.classifiers().to(x.dtype).t()


@register_model("mlgcn", label_embeddings=True, options=("adjacency",), defaults={"adjacency": "cooccurrence"})
def mlgcn(num_classes: int, **cfg) -> MLGCN:
    return MLGCN(num_classes, **cfg)
