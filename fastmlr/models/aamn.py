"""AAMN: Attention-Augmented Memory Network for image multi-label classification.

ACM TOMM 2023. Only the abstract is
public; docs/models/aamn.md says, module by module, what the abstract states
and what fastmlr builds in its place, with shapes. In short, after the
backbone's map ``F`` (Tensor[N, D, H, W]) and a 1x1 projection to ``X``
(Tensor[N, d, H, W]):

- channel-relation exploration (CRE): DANet's channel attention module, each
  channel a softmax-weighted mix of all channels by their similarity over
  the map (PyTorch's fused ``scaled_dot_product_attention``, channels as the
  sequence), added back with a learned scale that starts at 0;
- spatial-relation enhancement (SRE): second-order statistics (the channel
  covariance of a reduced map, :func:`fastmlr.ops.second_order_pool`, turned
  into a channel gate as in GSoP-Net) and long-range dependencies between
  pixels (a non-local block, again fused attention);
- categorical memory (CMM): a C x d memory of class prototypes, the
  exponential moving average of the pooled features of the training images
  that contain each category; every pixel reads it by attention, and the read
  is added to the map. The memory is a buffer: updated in training (in
  :meth:`AAMN.loss`, where the labels arrive; summed across ranks under
  torch.distributed), saved in checkpoints, fixed in ``eval()``.

Logits: global max pooling then one linear layer, as the baseline.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ._registry import register_model
from .backbones import Backbone
from .base import MLRModel, apply_ablation, masked_bce
from .blocks import attention, projection

# Ablations: each module off in turn, and all off (= the capacity-matched baseline plus nothing).
ABLATIONS: dict[str, dict] = {
    "no_memory": dict(use_memory=False),
    "no_cre": dict(use_cre=False),
    "no_sre": dict(use_sre=False),
    "none": dict(use_memory=False, use_cre=False, use_sre=False),
}


class ChannelRelation(nn.Module):
    """CRE: channel attention over the map (DANet's CAM with scaled-softmax similarity).

    ``A = softmax(X X^T / sqrt(P))`` (Tensor[N, d, d]); ``out = X + gamma * A X``, gamma starts at 0.

    forward: x (Tensor[N, d, H, W]) -> Tensor[N, d, H, W].
    """

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        N, d, H, W = x.shape
        f = x.flatten(2)  # N, d, P: channels are the sequence, positions the embedding
        mixed = attention(f, f, f)
        return x + self.gamma * mixed.reshape(N, d, H, W)


class SpatialRelation(nn.Module):
    """SRE: second-order channel gate (GSoP) then a non-local block over pixels.

    Second order: ``cov = second_order_pool(reduce(X))`` (Tensor[N, r, r]); a row-wise
    convolution (one filter bank per row, GSoP-Net) and a linear layer give a gate
    ``s = sigmoid(...)`` (Tensor[N, d]); ``X1 = X * s``.
    Long range: ``q, k = Wq X1, Wk X1`` (Tensor[N, P, d_k]); ``X2 = X1 + beta * softmax(q k^T / sqrt(d_k)) X1``,
    beta starts at 0.

    forward: x (Tensor[N, d, H, W]) -> Tensor[N, d, H, W].
    """

    def __init__(self, dim: int, reduced: int = 64, key_dim: int = 64, use_second_order: bool = True,
                 use_nonlocal: bool = True):
        super().__init__()
        self.use_second_order, self.use_nonlocal = use_second_order, use_nonlocal
        if use_second_order:
            self.reduce = nn.Sequential(nn.Conv2d(dim, reduced, 1, bias=False), nn.BatchNorm2d(reduced),
                                        nn.ReLU(inplace=True))
            self.row_conv = nn.Conv1d(reduced, 4 * reduced, kernel_size=reduced, groups=reduced)
            self.gate = nn.Linear(4 * reduced, dim)
        if use_nonlocal:
            self.query = nn.Conv2d(dim, key_dim, 1)
            self.key = nn.Conv2d(dim, key_dim, 1)
            self.beta = nn.Parameter(torch.zeros(1))

    def second_order_gate(self, x: Tensor) -> Tensor:
        """x (Tensor[N, d, H, W]) -> channel gate s (Tensor[N, d])."""
        cov = ops.second_order_pool(self.reduce(x).flatten(2))  # N, r, r
        return torch.sigmoid(self.gate(F.relu(self.row_conv(cov).squeeze(2))))

    def forward(self, x: Tensor) -> Tensor:
        N, d, H, W = x.shape
        if self.use_second_order:
            x = x * self.second_order_gate(x)[:, :, None, None]
        if self.use_nonlocal:
            q = self.query(x).flatten(2).transpose(1, 2)  # N, P, d_k
            k = self.key(x).flatten(2).transpose(1, 2)
            v = x.flatten(2).transpose(1, 2)  # N, P, d
            ctx = attention(q, k, v)  # N, P, d
            x = x + self.beta * ctx.transpose(1, 2).reshape(N, d, H, W)
        return x


class CategoricalMemory(nn.Module):
    """CMM: a memory ``M`` (Tensor[C, d]) of class prototypes that every pixel reads by attention.

    Update (training only, :meth:`update`): for each category c with positives in the
    batch (summed over all ranks), ``M[c] <- m * M[c] + (1 - m) * mean of g over images
    with c``, where g (Tensor[N, d]) is the detached pooled feature; a category's first
    update sets ``M[c]`` to that mean. Read (:meth:`forward`): keys ``Wk M``, values
    ``Wv M``, queries ``Wq X`` per pixel; ``X + gamma * softmax(q k^T / sqrt(d_k)) v``,
    gamma starts at 0.
    """

    def __init__(self, num_classes: int, dim: int, key_dim: int = 64, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("memory", torch.zeros(num_classes, dim))
        self.register_buffer("memory_filled", torch.zeros(num_classes, dtype=torch.bool))
        self.query = nn.Linear(dim, key_dim)
        self.key = nn.Linear(dim, key_dim)
        self.value = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[N, d, H, W]) -> Tensor[N, d, H, W]: the map augmented by the memory."""
        N, d, H, W = x.shape
        q = self.query(x.flatten(2).transpose(1, 2))  # N, P, d_k
        # A copy: update() changes the buffer in place before backward needs what was read.
        m = self.memory.to(x.dtype, copy=True)
        k = self.key(m).expand(N, -1, -1)  # N, C, d_k
        v = self.value(m).expand(N, -1, -1)  # N, C, d
        read = attention(q, k, v)  # N, P, d
        return x + self.gamma * read.transpose(1, 2).reshape(N, d, H, W)

    @torch.no_grad()
    def update(self, g: Tensor, targets: Tensor, ignore: Tensor | None = None) -> None:
        """EMA update from pooled features g (Tensor[N, d]) and labels targets (Tensor[N, C])."""
        pos = targets > 0.5
        if ignore is not None:
            pos = pos & ~ignore.bool()
        pos = pos.to(torch.float32)
        sums = pos.t() @ g.detach().float()  # C, d
        counts = pos.sum(dim=0)  # C
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank must end with the same memory: reduce the class sums and counts.
            packed = torch.cat([sums, counts[:, None]], dim=1)
            dist.all_reduce(packed)
            sums, counts = packed[:, :-1], packed[:, -1]
        seen = counts > 0
        mean = sums / counts.clamp_min(1.0)[:, None]
        m = torch.where(self.memory_filled, torch.full_like(counts, self.momentum), torch.zeros_like(counts))
        new = m[:, None] * self.memory.float() + (1 - m[:, None]) * mean
        self.memory.copy_(torch.where(seen[:, None], new, self.memory.float()).to(self.memory.dtype))
        self.memory_filled |= seen


class AAMN(MLRModel):
    """AAMN with each module as a switch (docs/models/aamn.md).

    Args:
        num_classes: C.
        backbone: a name from ``fastmlr.models.backbones.BACKBONES``.
        weights: ImageNet weights for the backbone (path, "imagenet" for packaged ones, None).
        dim: d, the width of the projected map the modules work on.
        use_memory, use_cre, use_sre: the three modules of the abstract.
        use_second_order, use_nonlocal: SRE's two halves (when use_sre).
        memory_momentum: m of the memory's moving average.
        sop_dim: r, channels of the reduced map whose covariance SRE pools.
        key_dim: d_k of the non-local block and the memory read.
        ablation: a name from ``ABLATIONS`` (overrides the switches it names).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        weights: str | None = None,
        dim: int = 512,
        use_memory: bool = True,
        use_cre: bool = True,
        use_sre: bool = True,
        use_second_order: bool = True,
        use_nonlocal: bool = True,
        memory_momentum: float = 0.9,
        sop_dim: int = 64,
        key_dim: int = 64,
        ablation: str | None = None,
    ):
        sw = apply_ablation("AAMN", ABLATIONS, ablation, use_memory=use_memory, use_cre=use_cre, use_sre=use_sre)
        use_memory, use_cre, use_sre = sw["use_memory"], sw["use_cre"], sw["use_sre"]
        if use_sre and not (use_second_order or use_nonlocal):
            raise ValueError("AAMN: use_sre needs use_second_order or use_nonlocal (both are off)")
        for name, val in (("dim", dim), ("sop_dim", sop_dim), ("key_dim", key_dim)):
            if int(val) < 1:
                raise ValueError(f"AAMN: {name} must be >= 1, got {val}")
        super().__init__(
            num_classes,
            dict(backbone=backbone, dim=int(dim), use_memory=use_memory, use_cre=use_cre, use_sre=use_sre,
                 use_second_order=use_second_order, use_nonlocal=use_nonlocal,
                 memory_momentum=float(memory_momentum), sop_dim=int(sop_dim), key_dim=int(key_dim)),
        )
        self.use_memory, self.use_cre, self.use_sre = use_memory, use_cre, use_sre
        self.backbone = Backbone(backbone, weights)
        self.proj = projection(self.backbone.out_channels, dim)
        self.cre = ChannelRelation() if use_cre else None
        self.sre = (SpatialRelation(dim, sop_dim, key_dim, use_second_order, use_nonlocal)
                    if use_sre else None)
        self.cmm = CategoricalMemory(num_classes, dim, key_dim, memory_momentum) if use_memory else None
        self.fc = nn.Linear(dim, num_classes)

    def enhance(self, fmap: Tensor) -> Tensor:
        """F (Tensor[N, D, H, W]) -> X' (Tensor[N, d, H, W]): projection, CRE, SRE (not the memory)."""
        x = self.proj(fmap)
        if self.cre is not None:
            x = self.cre(x)
        if self.sre is not None:
            x = self.sre(x)
        return x

    def _head(self, fmap: Tensor) -> dict[str, Tensor]:
        x = self.enhance(fmap)
        g = x.amax(dim=(2, 3))  # N, d: what the memory stores
        if self.cmm is not None:
            x = self.cmm(x)
        return {"logits": self.fc(x.amax(dim=(2, 3))), "memory_feat": g}

    # -- MLRModel interface ------------------------------------------------------------------------
    def forward_features(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self._head(feats)["logits"]

    def forward_train(self, images: Tensor) -> dict[str, Tensor]:
        return self._head(self.forward_features(images))

    def loss(self, out: dict[str, Tensor], targets: Tensor, ignore: Tensor | None = None) -> Tensor:
        """BCE; in training, also folds this batch's positives into the memory (after it was read)."""
        if self.training and self.cmm is not None and "memory_feat" in out:
            if out["memory_feat"].shape[0] != targets.shape[0]:
                raise ValueError(f"AAMN.loss: {out['memory_feat'].shape[0]} features but "
                                 f"{targets.shape[0]} target rows")
            self.cmm.update(out["memory_feat"], targets, ignore)
        return masked_bce(out["logits"], targets, ignore)


@register_model("aamn", ablations=ABLATIONS)
def aamn(num_classes: int, **cfg) -> AAMN:
    return AAMN(num_classes, **cfg)
