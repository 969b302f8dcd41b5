"""MMDSR: Multi-layered Multi-perspective Dynamic Semantic Representation for multi-label images.

Kuang and Li, Machine Learning 113, 2024.
Only the abstract is public; docs/models/mmdsr.md says, module by module, what
it states and what fastmlr builds, with shapes. In short, from the backbone's
stride-8, -16 and -32 maps (``Backbone.forward_stages``), each projected to d
channels and brought to the stride-16 grid (P = H*W positions):

- multi-scale feature reconstruction (MFR): at every position the top
  (stride-32) level's query attends over the three levels (cross-layer
  attention), giving a local multi-scale map ``X_l`` (Tensor[N, d, H, W]);
- channel dual-branch cross-attention (CDCA): a global branch (pooled
  channel descriptor) and a local branch (per-position channel descriptor)
  give a gate ``M`` that fuses the multi-scale map with the top level's
  global semantics, ``Z = M * X_l + (1 - M) * X_g`` (attentional feature
  fusion, Dai et al. 2021);
- dynamic semantic representation (DSR): per-category features by attention
  of each label embedding over the positions (SSGRL's semantic decoupling,
  with fused attention), a per-image category graph from the
  multi-perspective weighted cosine (:func:`fastmlr.ops.multi_perspective_cosine`),
  and graph convolutions over it; one classifier per category.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel, apply_ablation, label_embeddings_or_random
from .blocks import attention, projection

ABLATIONS: dict[str, dict] = {
    "no_mfr": dict(use_mfr=False),
    "no_cdca": dict(use_cdca=False),
    "no_dsr": dict(use_dsr=False),
    "no_graph": dict(use_graph=False),
    "none": dict(use_mfr=False, use_cdca=False, use_dsr=False),
}


class CrossLayerAttention(nn.Module):
    """MFR: per position, the top level's query attends over the S levels.

    ``a[n,s,p] = softmax_s(<Wq L_S[n,:,p], Wk L_s[n,:,p]> / sqrt(d_k))``; ``X_l = sum_s a[s] L_s``.

    forward: levels (Tensor[N, S, d, H, W]), last = top level -> X_l (Tensor[N, d, H, W]).
    """

    def __init__(self, dim: int, key_dim: int = 64):
        super().__init__()
        self.query = nn.Conv2d(dim, key_dim, 1)
        self.key = nn.Conv2d(dim, key_dim, 1)
        self.scale = 1.0 / math.sqrt(key_dim)

    def forward(self, levels: Tensor) -> Tensor:
        N, S, d, H, W = levels.shape
        q = self.query(levels[:, -1])  # N, d_k, H, W
        k = self.key(levels.reshape(N * S, d, H, W)).reshape(N, S, -1, H, W)
        a = torch.softmax((q[:, None] * k).sum(dim=2) * self.scale, dim=1)  # N, S, H, W
        return (a[:, :, None] * levels).sum(dim=1)


class DualBranchFusion(nn.Module):
    """CDCA: ``M = sigmoid(G(GAP(U)) + L(U))`` with ``U = X_l + X_g``; ``Z = M X_l + (1 - M) X_g``.

    G (global branch) and L (local branch, per position) are d -> d/r -> d bottlenecks of 1x1 convs.

    forward: x_local, x_global (Tensor[N, d, H, W]) -> Z (Tensor[N, d, H, W]).
    """

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.global_branch = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))
        self.local_branch = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, dim, 1))

    def gate(self, x_local: Tensor, x_global: Tensor) -> Tensor:
        u = x_local + x_global
        return torch.sigmoid(self.global_branch(u.mean(dim=(2, 3), keepdim=True)) + self.local_branch(u))

    def forward(self, x_local: Tensor, x_global: Tensor) -> Tensor:
        m = self.gate(x_local, x_global)
        return m * x_local + (1 - m) * x_global


class DynamicSemantic(nn.Module):
    """DSR: category features, a per-image graph over them, graph convolutions.

    - ``e = f_w(A0)`` (Tensor[C, d]); ``V[n,c] = softmax_p(<e_c, Wk Z[n,:,p]> / sqrt(d)) Z[n,:,p]^T``
      (Tensor[N, C, d]);
    - ``S = multi_perspective_cosine(V, w)`` (Tensor[N, C, C]), w (Tensor[K, d]) learned;
      ``A = relu(S)`` normalised per row (its diagonal is 1, so a row never sums to 0 for V[n,c] != 0);
    - ``H_0 = V``, ``H_{l+1} = LeakyReLU_0.2(A H_l W_l)``; output ``V + H_L`` (Tensor[N, C, d]).

    forward: z (Tensor[N, d, H, W]), a0 (Tensor[C, E]) -> Tensor[N, C, d].
    """

    def __init__(self, embed_dim: int, dim: int, perspectives: int = 4, gcn_layers: int = 2,
                 use_graph: bool = True):
        super().__init__()
        self.use_graph = use_graph
        self.f_w = nn.Linear(embed_dim, dim)
        self.key = nn.Conv2d(dim, dim, 1)
        if use_graph:
            # Near 1: the first graphs are plain cosines; the perspectives then move apart.
            g = torch.Generator().manual_seed(0)
            self.perspectives = nn.Parameter(1.0 + 0.1 * torch.randn(perspectives, dim, generator=g))
            self.gcn = nn.ModuleList([nn.Linear(dim, dim, bias=False) for _ in range(gcn_layers)])

    def category_attention(self, z: Tensor, a0: Tensor) -> Tensor:
        """Attention of each category over positions, Tensor[N, C, P] (sums to 1 over P)."""
        e = self.f_w(a0)  # C, d
        k = self.key(z).flatten(2)  # N, d, P
        return torch.softmax(torch.einsum("cd,ndp->ncp", e, k) / math.sqrt(e.shape[1]), dim=2)

    def category_features(self, z: Tensor, a0: Tensor) -> Tensor:
        N = z.shape[0]
        e = self.f_w(a0)[None].expand(N, -1, -1)  # N, C, d
        k = self.key(z).flatten(2).transpose(1, 2)  # N, P, d
        return attention(e, k, z.flatten(2).transpose(1, 2))  # N, C, d

    def adjacency(self, v: Tensor) -> Tensor:
        """V (Tensor[N, C, d]) -> row-normalised A (Tensor[N, C, C])."""
        s = F.relu(ops.multi_perspective_cosine(v, self.perspectives))
        return s / s.sum(dim=2, keepdim=True).clamp_min(1e-6)

    def forward(self, z: Tensor, a0: Tensor) -> Tensor:
        v = self.category_features(z, a0)
        if not self.use_graph or len(self.gcn) == 0:
            return v
        a = self.adjacency(v)
        h = v
        for lin in self.gcn:
            h = F.leaky_relu(torch.bmm(a, lin(h)), negative_slope=0.2)
        return v + h


class MMDSR(MLRModel):
    """MMDSR with each module as a switch (docs/models/mmdsr.md).

    Args:
        num_classes: C.
        backbone: a name from ``fastmlr.models.backbones.BACKBONES`` (its three stages are read).
        weights: ImageNet weights for the backbone (path, "imagenet" for packaged ones, None).
        embeddings (Tensor[C, E] | None): label embeddings A0 (``fastmlr.labels``); random if None.
        embed_dim: E when ``embeddings`` is None.
        dim: d, the width every level is projected to.
        use_mfr, use_cdca, use_dsr: the three modules of the abstract; use_graph: DSR's graph
            (off: category features straight to their classifiers).
        perspectives: K of the weighted cosine; gcn_layers: L.
        ablation: a name from ``ABLATIONS`` (overrides the switches it names).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        weights: str | None = None,
        embeddings: Tensor | None = None,
        embed_dim: int = 300,
        dim: int = 512,
        use_mfr: bool = True,
        use_cdca: bool = True,
        use_dsr: bool = True,
        use_graph: bool = True,
        perspectives: int = 4,
        gcn_layers: int = 2,
        key_dim: int = 64,
        ablation: str | None = None,
    ):
        sw = apply_ablation("MMDSR", ABLATIONS, ablation, use_mfr=use_mfr, use_cdca=use_cdca, use_dsr=use_dsr,
                            use_graph=use_graph)
        use_mfr, use_cdca, use_dsr, use_graph = sw["use_mfr"], sw["use_cdca"], sw["use_dsr"], sw["use_graph"]
        if int(perspectives) < 1:
            raise ValueError(f"MMDSR: perspectives must be >= 1, got {perspectives}")
        if int(gcn_layers) < 0:
            raise ValueError(f"MMDSR: gcn_layers must be >= 0, got {gcn_layers}")
        embeddings = label_embeddings_or_random("MMDSR", embeddings, num_classes, embed_dim, warn=use_dsr)
        embed_dim = embeddings.shape[1]
        super().__init__(
            num_classes,
            dict(backbone=backbone, embed_dim=int(embed_dim), dim=int(dim), use_mfr=use_mfr, use_cdca=use_cdca,
                 use_dsr=use_dsr, use_graph=use_graph, perspectives=int(perspectives),
                 gcn_layers=int(gcn_layers), key_dim=int(key_dim)),
        )
        self.use_mfr, self.use_cdca, self.use_dsr = use_mfr, use_cdca, use_dsr
        self.backbone = Backbone(backbone, weights)
        c8, c16, c32 = self.backbone.stage_channels
        # Levels at strides 8 and 16 are read only by MFR (16 also stands in for X_l without it).
        self.lateral = nn.ModuleList([projection(c, dim) for c in ((c8, c16, c32) if use_mfr else (c16, c32))])
        self.mfr = CrossLayerAttention(dim, key_dim) if use_mfr else None
        self.cdca = DualBranchFusion(dim) if use_cdca else None
        self.register_buffer("label_embeddings", embeddings.clone())
        if use_dsr:
            self.dsr = DynamicSemantic(embed_dim, dim, int(perspectives), int(gcn_layers), use_graph)
            bound = 1 / math.sqrt(dim)
            self.cls_weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
            self.cls_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            self.dsr = None
            self.fc = nn.Linear(dim, num_classes)

    # -- the pieces of the head --------------------------------------------------------------------
    def fuse(self, stages: list[Tensor]) -> Tensor:
        """[F8, F16, F32] -> Z (Tensor[N, d, H16, W16]): MFR then CDCA (or their plain stand-ins)."""
        f8, f16, f32 = stages
        H, W = f16.shape[2:]
        top = F.interpolate(self.lateral[-1](f32), size=(H, W), mode="bilinear", align_corners=False)
        if self.mfr is not None:
            low = F.adaptive_avg_pool2d(self.lateral[0](f8), (H, W))
            mid = self.lateral[1](f16)
            x_local = self.mfr(torch.stack([low, mid, top], dim=1))
        else:
            x_local = self.lateral[0](f16)
        if self.cdca is not None:
            return self.cdca(x_local, top)
        return x_local + top

    def _logits(self, z: Tensor) -> Tensor:
        if self.dsr is None:
            return self.fc(z.amax(dim=(2, 3)))
        feat = self.dsr(z, self.label_embeddings.to(z.dtype))
        return (feat * self.cls_weight).sum(dim=-1) + self.cls_bias

    # -- MLRModel interface ------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        """images (Tensor[N, 3, S, S]) -> Z (Tensor[N, d, S/16, S/16])."""
        return self.fuse(self.backbone.forward_stages(images))

    def forward_head(self, feats: Tensor) -> Tensor:
        return self._logits(feats)

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> Tensor | None:
        if self.dsr is None:
            return None
        z = self.forward_features(images)
        a = self.dsr.category_attention(z, self.label_embeddings.to(z.dtype))
        return a.reshape(z.shape[0], -1, *z.shape[2:])


@register_model("mmdsr", label_embeddings=True, ablations=ABLATIONS)
def mmdsr(num_classes: int, **cfg) -> MMDSR:
    return MMDSR(num_classes, **cfg)
