"""Baseline of the SRDL paper (section 4.3): backbone + global max pooling + one linear layer.

``baseline_cm`` is the capacity-matched configuration of the same model: the
1x1 conv + BN + ReLU projection that AAMN and MMDSR put on the backbone map
(``proj_dim=512``) before GMP + linear, so that a comparison separates what
their modules add from what one more layer adds.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel
from .blocks import projection


class Baseline(MLRModel):
    """ResNet/MobileNet + GMP + linear (paper: 77.1 mAP COCO, 91.8 VOC at 448 px)."""

    def __init__(
        self, num_classes: int, backbone: str = "resnet101", weights: str | None = None,
        proj_dim: int | None = None, **unused,
    ):
        if unused:
            raise TypeError(f"baseline: unexpected options {sorted(unused)}")
        if proj_dim is not None and int(proj_dim) < 1:
            raise ValueError(f"baseline: proj_dim must be >= 1 or None, got {proj_dim}")
        cfg = {"backbone": backbone}
        if proj_dim is not None:
            cfg["proj_dim"] = int(proj_dim)
        super().__init__(num_classes, cfg)
        self.backbone = Backbone(backbone, weights)
        self.proj = None
        width = self.backbone.out_channels
        if proj_dim is not None:
            self.proj = projection(width, int(proj_dim))
            width = int(proj_dim)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward_head(self, feats: Tensor) -> Tensor:
        if self.proj is not None:
            feats = self.proj(feats)
        return self.fc(feats.amax(dim=(2, 3)))


@register_model("baseline")
def baseline(num_classes: int, **cfg) -> Baseline:
    return Baseline(num_classes, **cfg)


@register_model("baseline_cm")
def baseline_cm(num_classes: int, **cfg) -> Baseline:
    """Capacity-matched baseline: the heads' 1x1 projection (512 wide), then GMP + linear."""
    cfg.setdefault("proj_dim", 512)
    return Baseline(num_classes, **cfg)
