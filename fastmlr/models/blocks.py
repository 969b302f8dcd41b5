"""Building blocks that several model heads share (AAMN, MMDSR, baseline_cm)."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d_k)) v`` by PyTorch's fused attention, one head.

    q (Tensor[N, L, d_k]), k (Tensor[N, S, d_k]), v (Tensor[N, S, d_v]) -> Tensor[N, L, d_v]. The head
    axis is added because the ONNX exporter translates only 4-D scaled_dot_product_attention.
    """
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]


def projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BN + ReLU: the extra layer each head puts on a backbone map (and baseline_cm copies)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )
