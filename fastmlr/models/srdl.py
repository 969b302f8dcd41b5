"""SRDL: Semantic Representation and Dependency Learning for multi-label image recognition.

Pu, Sun, Wu, Chen, Tian, Lin. The function computed here is fixed by
docs/srdl.md, which resolves the paper's ambiguities:
a label graph (eq. 3) gives one contextualised embedding per category, which
guides channel attention (eq. 4) and spatial attention (eq. 5) over the
backbone's feature map; category features are the attention-weighted map
max-pooled (eq. 6), classified per category (eq. 2). In training, object
erasing (eq. 7-10) removes the most obvious region of the top-K categories'
spatial maps and adds the erased logits' loss (eq. 11-13).

The hot steps (5, 6 and OE) go through :mod:`fastmlr.ops`, so which
implementation runs (reference, C++/CUDA, Triton) never changes the model;
the head's D x D linear layers go through :func:`.cpu_linear.linear`, which
is ``layer(x)`` except in eager float32 CPU inference (oneDNN, weight packed).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .. import ops
from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel, apply_ablation, fold_buffer, label_embeddings_or_random, masked_bce
from .cpu_linear import linear
from .graph import LabelGraph, reweighted_correlation

# Paper tables 5 and 6, each a configuration of the one model.
ABLATIONS: dict[str, dict] = {
    "car": dict(use_oe=False),
    "car_no_gcn": dict(use_oe=False, use_gcn=False),
    "car_no_ca": dict(use_oe=False, use_ca=False),
    "car_no_sa": dict(use_oe=False, use_sa=False),
    "car_oe": dict(use_oe=True),
}


class SRDL(MLRModel):
    """SRDL (CAR + OE) with every ablation of paper tables 5/6 as a switch.

    Args:
        num_classes: C.
        backbone: a name from ``fastmlr.models.backbones.BACKBONES``.
        weights: ImageNet weights for the backbone (path, "imagenet" for packaged ones, None).
        embeddings (Tensor[C, E] | None): label embeddings A0 (``fastmlr.labels``); random if None.
        embed_dim: E when ``embeddings`` is None.
        use_gcn, use_ca, use_sa, use_oe: the ablation switches.
        oe_k, oe_alpha: OE's top-K and threshold.
        gcn_layers: L.
        adjacency (Tensor[C, C] | None): label co-occurrence counts or probabilities; when given,
            V starts as ML-GCN's re-weighted correlation matrix (``fastmlr.models.graph``) instead
            of a dominant self-loop. Only the initialisation: V is learned either way.
        tau, p: that correlation matrix's threshold and re-weighting.
        center_categories: subtract the mean over categories from X before ``f_w`` (docs/srdl.md,
            fastmlr's resolutions: what every category shares goes to ``f_w``'s bias).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        weights: str | None = None,
        embeddings: Tensor | None = None,
        embed_dim: int = 300,
        use_gcn: bool = True,
        use_ca: bool = True,
        use_sa: bool = True,
        use_oe: bool = True,
        oe_k: int = 3,
        oe_alpha: float = 0.5,
        gcn_layers: int = 2,
        adjacency: Tensor | None = None,
        tau: float = 0.4,
        p: float = 0.2,
        center_categories: bool = True,
        ablation: str | None = None,
    ):
        sw = apply_ablation("SRDL", ABLATIONS, ablation, use_gcn=use_gcn, use_ca=use_ca, use_sa=use_sa, use_oe=use_oe)
        use_gcn, use_ca, use_sa, use_oe = sw["use_gcn"], sw["use_ca"], sw["use_sa"], sw["use_oe"]
        if not (use_ca or use_sa):
            raise ValueError("SRDL needs channel or spatial attention (use_ca and use_sa are both off)")
        if use_oe and not use_sa:
            raise ValueError("object erasing (use_oe) erases spatial attention: it needs use_sa")
        if not 0.0 < oe_alpha <= 1.0:
            raise ValueError(f"oe_alpha must be in (0, 1], got {oe_alpha}")
        if oe_k < 1:
            raise ValueError(f"oe_k must be >= 1, got {oe_k}")
        embeddings = label_embeddings_or_random("SRDL", embeddings, num_classes, embed_dim)
        embed_dim = embeddings.shape[1]
        super().__init__(
            num_classes,
            dict(
                backbone=backbone, embed_dim=int(embed_dim), use_gcn=use_gcn, use_ca=use_ca, use_sa=use_sa,
                use_oe=use_oe, oe_k=int(oe_k), oe_alpha=float(oe_alpha), gcn_layers=int(gcn_layers),
                center_categories=bool(center_categories),
            ),
        )
        self.use_gcn, self.use_ca, self.use_sa, self.use_oe = use_gcn, use_ca, use_sa, use_oe
        self.oe_k, self.oe_alpha = int(oe_k), float(oe_alpha)

        self.backbone = Backbone(backbone, weights)
        D = self.backbone.out_channels
        # A0: stored with the model so a checkpoint never needs the embedding source again.
        self.register_buffer("label_embeddings", embeddings.clone())
        # Wc once computed, set by fold_constants (None: computed from the label graph each call).
        self.register_buffer("folded_category_embeddings", None, persistent=False)
        init_graph = reweighted_correlation(adjacency, tau, p) if adjacency is not None else None
        self.gcn = LabelGraph(num_classes, embed_dim, gcn_layers, init_graph=init_graph) if use_gcn else None
        self.center_categories = bool(center_categories) and num_classes > 1
        self.f_w = nn.Linear(embed_dim, D)
        nn.init.zeros_(self.f_w.bias)  # a shared bias would start every category on one vector
        if use_ca:
            self.f_ca = nn.Linear(D, D)
            self.f_c = nn.Linear(D, D)
        if use_sa:
            self.f_sa = nn.Linear(D, D)
            self.f_s = nn.Linear(D, 1)
        bound = 1 / math.sqrt(D)
        self.cls_weight = nn.Parameter(torch.empty(num_classes, D).uniform_(-bound, bound))
        self.cls_bias = nn.Parameter(torch.zeros(num_classes))

    # -- the pieces of the head, each a step of docs/srdl.md --------------------------------------
    def category_embeddings(self) -> Tensor:
        """Steps 2-3: ``Wc = f_w(X - mean_c X)`` (Tensor[C, D]; X uncentred without center_categories)."""
        if self.folded_category_embeddings is not None:
            return self.folded_category_embeddings.to(self.cls_weight.dtype)
        x = self.gcn(self.label_embeddings) if self.gcn is not None else self.label_embeddings
        if self.center_categories:
            x = x - x.mean(dim=0, keepdim=True)
        return self.f_w(x)

    def channel_attention(self, f: Tensor, wc: Tensor) -> Tensor:
        """Step 4, eq. 4. f (Tensor[N, D, P]), wc (Tensor[C, D]) -> CA (Tensor[N, C, D])."""
        g = linear(self.f_ca, f.amax(dim=2))
        return torch.sigmoid(linear(self.f_c, torch.tanh(g[:, None, :] * wc[None, :, :])))

    def spatial_attention(self, f: Tensor, wc: Tensor) -> Tensor:
        """Step 5, eq. 5. f (Tensor[N, D, P]), wc (Tensor[C, D]) -> SA (Tensor[N, C, P])."""
        u = linear(self.f_sa, f.transpose(1, 2))
        return ops.car_spatial_attention(u, wc, self.f_s.weight[0], self.f_s.bias[0])

    def classify(self, feat: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Step 7, eq. 2: one linear classifier per category. feat (Tensor[N, K, D]) -> (Tensor[N, K])."""
        return (feat * weight).sum(dim=-1) + bias

    def _head(self, fmap: Tensor) -> dict[str, Tensor]:
        N, D, H, W = fmap.shape
        f = fmap.flatten(2)
        wc = self.category_embeddings()
        C = wc.shape[0]
        ca = self.channel_attention(f, wc) if self.use_ca else f.new_zeros(N, C, D)
        sa = self.spatial_attention(f, wc) if self.use_sa else f.new_zeros(N, C, H * W)
        feat = ops.car_pool(f, sa, ca)
        logits = self.classify(feat, self.cls_weight, self.cls_bias)
        return {"logits": logits, "f": f, "sa": sa, "ca": ca, "hw": (H, W)}

    # -- MLRModel interface ------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self._head(feats)["logits"]

    def forward_train(self, images: Tensor) -> dict[str, Tensor]:
        out = self._head(self.forward_features(images))
        if self.use_oe and self.training:
            out["logits_erased"] = self.erased_logits(out)
        return out

    def erased_logits(self, out: dict[str, Tensor]) -> Tensor:
        """OE (eq. 7-10): logits ``z'`` with the top-K categories' obvious regions erased.

        Only the K chosen categories change (``SA' = SA`` elsewhere), so only
        their features are pooled again; ``z'`` equals ``z`` for the others.
        """
        logits, f, sa, ca = out["logits"], out["f"], out["sa"], out["ca"]
        H, W = out["hw"]
        N, C, P = sa.shape
        K = min(self.oe_k, C)
        with torch.no_grad():
            idx = logits.topk(K, dim=1).indices  # sigmoid is monotonic: top-K of p
        sa_k = sa.gather(1, idx[:, :, None].expand(N, K, P)).reshape(N, K, H, W)
        boxes = ops.oe_boxes(sa_k, self.oe_alpha)
        sa_erased = ops.oe_erase(sa_k, boxes).reshape(N, K, P)
        ca_k = ca.gather(1, idx[:, :, None].expand(N, K, ca.shape[2]))
        feat_k = ops.car_pool(f, sa_erased, ca_k)
        z_k = self.classify(feat_k, self.cls_weight[idx], self.cls_bias[idx])
        return logits.scatter(1, idx, z_k)

    def loss(self, out: dict[str, Tensor], targets: Tensor, ignore: Tensor | None = None) -> Tensor:
        loss = masked_bce(out["logits"], targets, ignore)
        if "logits_erased" in out:
            loss = loss + masked_bce(out["logits_erased"], targets, ignore)
        return loss

    def fold_constants(self) -> None:
        """Steps 2-3 depend on no image: ``Wc`` becomes a buffer; the label graph and f_w are no longer read."""
        with torch.no_grad():
            self.folded_category_embeddings = fold_buffer(self.category_embeddings())

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> Tensor | None:
        if not self.use_sa:
            return None
        out = self._head(self.forward_features(images))
        H, W = out["hw"]
        return out["sa"].reshape(out["sa"].shape[0], -1, H, W)


@register_model("srdl", label_embeddings=True, ablations=ABLATIONS, options=("oe_k", "oe_alpha", "use_oe", "adjacency"),
                # Checkpoints from before the centring (docs/srdl.md) computed f_w(X) uncentred.
                legacy={"center_categories": False})
def srdl(num_classes: int, **cfg) -> SRDL:
    return SRDL(num_classes, **cfg)
