"""fastmlr's models: ``create_model(name, num_classes, **cfg)`` over a registry."""

from ._registry import create_model, list_models, model_info, register_model
from .backbones import BACKBONES, Backbone
from .base import MLRModel, masked_bce

# Importing a model file registers it.
from . import aamn, baseline, mlgcn, mmdsr, srdl  # noqa: E402,F401

__all__ = ["create_model", "list_models", "model_info", "register_model", "BACKBONES", "Backbone", "MLRModel", "masked_bce"]
