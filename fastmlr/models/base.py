"""What every fastmlr model provides, so train/evaluate/predict/export never special-case one."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def masked_bce(logits: Tensor, targets: Tensor, ignore: Tensor | None = None) -> Tensor:
    """BCE with logits summed over categories, averaged over the batch (SRDL eq. 11-13).

    logits, targets (Tensor[N, C]); ignore (bool Tensor[N, C]): entries that count nowhere.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss itself in fp32
        logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if ignore is not None:
        loss = loss.masked_fill(ignore, 0.0)
    return loss.sum(dim=1).mean()


def label_embeddings_or_random(model: str, embeddings, num_classes: int, embed_dim: int, warn: bool = True) -> Tensor:
    """Validate label embeddings A0 (Tensor[C, E]); None gives seeded random ones (with one warning)."""
    if embeddings is not None:
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if embeddings.dim() != 2 or embeddings.shape[0] != num_classes:
            raise ValueError(
                f"{model}: embeddings must be ({num_classes}, E) for {num_classes} classes, "
                f"got {tuple(embeddings.shape)}"
            )
        return embeddings
    if warn:
        warnings.warn(f"{model}: no label embeddings given; using random ones (see fastmlr.labels)", stacklevel=4)
    return torch.randn(num_classes, int(embed_dim), generator=torch.Generator().manual_seed(0))


def fold_buffer(value: Tensor) -> Tensor:
    """A constant for :meth:`MLRModel.fold_constants`: detached, at least float32."""
    return value.detach().to(torch.promote_types(value.dtype, torch.float32))


def apply_ablation(model: str, presets: dict[str, dict], ablation: str | None, **switches: bool) -> dict[str, bool]:
    """The module switches after an ablation preset (a name of ``presets``) overrides those it names."""
    if ablation is None:
        return switches
    if ablation not in presets:
        raise ValueError(f"unknown {model} ablation {ablation!r}; known: {', '.join(presets)}")
    unknown = set(presets[ablation]) - set(switches)
    if unknown:
        raise ValueError(f"{model} ablation {ablation!r} names unknown switches {sorted(unknown)}")
    return {**switches, **presets[ablation]}


class MLRModel(nn.Module):
    """Base class: ``forward(images) -> logits (Tensor[N, C])``.

    Subclasses implement ``forward_features`` and ``forward_head``; they may
    override ``forward_train`` (extra outputs used by ``loss``),
    ``attention_maps`` and ``fold_constants``.
    """

    model_name = "?"

    def __init__(self, num_classes: int, config: dict):
        super().__init__()
        self.num_classes = num_classes
        # Everything needed to rebuild the module with create_model(name, num_classes, **config).
        self.config = dict(config)

    def forward_features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_train(self, images: Tensor) -> dict[str, Tensor]:
        return {"logits": self(images)}

    def loss(self, out: dict[str, Tensor], targets: Tensor, ignore: Tensor | None = None) -> Tensor:
        return masked_bce(out["logits"], targets, ignore)

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> Tensor | None:
        """Per-category spatial maps (Tensor[N, C, H, W]) where the model has them."""
        return None

    def fold_constants(self) -> None:
        """Replace image-independent computations by buffers holding their results (default: none).

        For a copy of the model about to be exported: the outputs stay the same, the
        parameters that fed the folded values are no longer read, so training the
        model afterwards would not change them. Buffers are at least float32 and are
        not saved in state dicts.
        """


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, image_size: int, num_images: int = 2, seed: int = 0) -> int:
    """Set every BatchNorm's running statistics from ``num_images`` random N(0, 1) images (a cumulative
    average over one forward pass), as a trained network's are set from its data; returns how many layers.

    A randomly initialised network in eval mode normalises with mean 0 and variance 1, whatever its
    activations are, so they grow layer after layer (a random ResNet-101 SRDL reaches 3.5e5 at 224 px,
    past float16's 65504, and its fp16 graph gives NaN); with these statistics they stay O(10-100).
    For models built to be measured (latency, engine size), never for trained ones.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training, momenta = model.training, [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative: one pass gives the batch's own statistics
        m.train()
    x = torch.randn(num_images, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    model(x.to(next(model.parameters()).device))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(bns)
