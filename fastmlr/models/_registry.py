"""Model registry: ``register_model`` and ``create_model(name, num_classes, **cfg)`` (timm style)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator: register ``fn(num_classes, **cfg) -> nn.Module`` under ``name``."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **cfg) -> nn.Module:
    """Build a registered model. Unknown names raise ``ValueError`` listing the known ones."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = _MODELS[name](int(num_classes), **cfg)
    model.model_name = name
    return model
