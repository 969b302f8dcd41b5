"""Baseline of the SRDL paper (section 4.3): backbone + global max pooling + one linear layer."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel


class Baseline(MLRModel):
    """ResNet/MobileNet + GMP + linear (paper: 77.1 mAP COCO, 91.8 VOC at 448 px)."""

    def __init__(
        self, num_classes: int, backbone: str = "resnet101", weights: str | None = None, backend: str | None = None,
        **unused,
    ):
        # backend: accepted like every model's, unused (no fastmlr.ops in this head).
        if unused:
            raise TypeError(f"baseline: unexpected options {sorted(unused)}")
        super().__init__(num_classes, {"backbone": backbone})
        self.backbone = Backbone(backbone, weights)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.fc(feats.amax(dim=(2, 3)))


@register_model("baseline")
def baseline(num_classes: int, **cfg) -> Baseline:
    return Baseline(num_classes, **cfg)
