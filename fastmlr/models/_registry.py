"""Model registry: ``register_model`` and ``create_model(name, num_classes, **cfg)`` (timm style).

Each entry also says what the commands must give the model: whether it takes
label embeddings, which ablation presets it knows, and which of its keyword
options commands may set from their flags (``options``). Commands map flags to
those names and never test a model's name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., nn.Module]
    label_embeddings: bool = False  # the factory takes ``embeddings`` (Tensor[C, E])
    ablations: dict = field(default_factory=dict)  # preset name -> switches, passed as ``ablation=``
    options: tuple[str, ...] = ()  # keyword options of the factory that commands may set (e.g. "oe_k")
    # Config values of checkpoints saved before an option existed: what those models computed.
    legacy: dict = field(default_factory=dict)
    # What the commands choose when a flag is left out, e.g. {"adjacency": "cooccurrence"} (the paper's graph).
    defaults: dict = field(default_factory=dict)


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, label_embeddings: bool = False, ablations: dict | None = None, options: tuple[str, ...] = (),
    legacy: dict | None = None, defaults: dict | None = None,
):
    """Decorator: register ``fn(num_classes, **cfg) -> nn.Module`` under ``name``.

    ``options`` names the keyword arguments of ``fn`` that commands may set from their flags;
    ``legacy`` the config values a checkpoint without that key was trained with (its option came later);
    ``defaults`` what commands choose for an option whose flag is left out (``{"adjacency": "cooccurrence"}``).
    """

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, fn, label_embeddings, dict(ablations or {}), tuple(options),
                                  dict(legacy or {}), dict(defaults or {}))
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, num_classes: int, **cfg) -> nn.Module:
    """Build a registered model. Unknown names raise ``ValueError`` listing the known ones.

    A ``"backend"`` key (configs of checkpoints written when models stored an ops backend) is
    dropped: the backend is chosen with ``fastmlr.ops.use_backend`` around the calls.
    """
    info = model_info(name)
    backend = cfg.pop("backend", None)
    if backend is not None:
        warnings.warn(
            f"create_model: backend={backend!r} is no longer a model option and is ignored; "
            f"choose the ops backend with `with fastmlr.ops.use_backend({backend!r}):` around the calls",
            stacklevel=2,
        )
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = info.factory(int(num_classes), **cfg)
    model.model_name = name
    return model
