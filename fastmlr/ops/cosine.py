"""MMDSR's multi-perspective weighted cosine, declared once: ``multi_perspective_cosine`` (docs/models/mmdsr.md).

No C++ kernel: Triton on a GPU, the reference elsewhere. See fastmlr/ops/opspec.py
for what a declaration holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch
from ._checks import check
from .opspec import COSINE_EPS, Impl, OnnxNode, OpSpec, TrtPlugin, declare


def multi_perspective_cosine_ref(v: Tensor, w: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Multi-perspective weighted cosine between every pair of category features (MMDSR's DSR module).

    ``S[n,i,j] = 1/K * sum_k cos(w[k] * v[n,i], w[k] * v[n,j])``, each norm clamped below at ``eps``.

    Args:
        v (Tensor[N, C, D]): category-specific features of each image.
        w (Tensor[K, D]): one weight vector per perspective.
    Returns:
        Tensor[N, C, C], symmetric, entries in [-1, 1].
    """
    vw = v[:, None, :, :] * w[None, :, None, :]  # N, K, C, D
    vn = vw / vw.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.matmul(vn, vn.transpose(-1, -2)).mean(dim=1)  # N, K, C, C -> N, C, C


def multi_perspective_cosine_dec(v: Tensor, w: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """``S[n,i,j] = 1/K sum_k cos(w[k] v[n,i], w[k] v[n,j])`` one perspective at a time (no N x K x C x D tensor)."""
    K = w.shape[0]
    total = None
    for k in range(K):
        vw = v * w[k]  # N, C, D
        vn = vw / vw.norm(dim=-1, keepdim=True).clamp_min(eps)
        term = torch.matmul(vn, vn.transpose(-1, -2))
        total = term if total is None else total + term
    return total / K


def multi_perspective_cosine(v: Tensor, w: Tensor, *, backend: str | None = None) -> Tensor:
    """Multi-perspective weighted cosine graph, MMDSR's dynamic semantic module (docs/models/mmdsr.md).

    ``S[n,i,j] = 1/K * sum_k cos(w[k] * v[n,i], w[k] * v[n,j])`` (norms clamped below at 1e-8).

    Args:
        v (Tensor[N, C, D]): category features; w (Tensor[K, D]): perspective weights.
    Returns:
        Tensor[N, C, C]
    Under autocast ("fp32", as ``cosine_similarity``): v and w are cast to float32.
    """
    check(v.dim() == 3, f"multi_perspective_cosine: v must be (N, C, D), got shape {tuple(v.shape)}")
    check(w.dim() == 2 and w.shape[1] == v.shape[2],
          f"multi_perspective_cosine: w must be (K, {v.shape[2]}) to match v {tuple(v.shape)}, got {tuple(w.shape)}")
    check(w.shape[0] >= 1, "multi_perspective_cosine: w has no perspectives (K = 0)")
    return _dispatch.call("multi_perspective_cosine", (v, w), backend, same_dtype=("v", "w"))


def _triton():
    from ..kernels import mlr_extra

    return mlr_extra.multi_perspective_cosine


def _scalars(shapes) -> list:
    (_n, c, d), (k, _) = shapes[0], shapes[1]
    return [c, d, k, c * d, d, d, c * c, c]  # C, D, K, v.stride(0..1), w.stride(0), out.stride(0..1)


def _config(arch: int) -> tuple[dict, int]:
    # Not the launcher's 64 x 64 x 32 tiles, which spill registers in the plugin's kernel (ptxas -v,
    # sm_80 and sm_90, fp32); this one compiles for sm_80/86/89/90 without spills.
    return dict(BLOCK_I=64, BLOCK_J=64, BLOCK_R=16), 8


# MMDSR: C = 80 categories' features of d = 512, K = 4 perspectives.
_SIZES = {"small": (2, 7, 10, 3), "paper": (16, 80, 512, 4)}


def _examples(size, gen):
    N, C, D, K = _SIZES[size]
    return torch.randn(N, C, D, generator=gen), 1.0 + 0.1 * torch.randn(K, D, generator=gen)


MULTI_PERSPECTIVE_COSINE = declare(OpSpec(
    name="multi_perspective_cosine",
    schema="multi_perspective_cosine(Tensor v, Tensor w) -> Tensor",
    reference=multi_perspective_cosine_ref,
    autocast="fp32",  # a cosine similarity, whose norm clamp float16 cannot hold
    output_shape=lambda shapes: (shapes[0][0], shapes[0][1], shapes[0][1]),  # N, C, C
    function=multi_perspective_cosine,
    make_examples=_examples,
    decomposition=multi_perspective_cosine_dec,
    onnx=OnnxNode("MultiPerspectiveCosine", ("v", "w"), "s"),
    # TensorRT passes only integer scalars to an ahead-of-time kernel: the clamp is a compile-time constant.
    trt=TrtPlugin("mpc_trt_kernel", (3, 2), _scalars,
                  grid=lambda sh, bl, cdiv: (cdiv(sh[0][1], bl["BLOCK_J"]), cdiv(sh[0][1], bl["BLOCK_I"]), sh[0][0]),
                  config=_config, constants={"USE_DOT": True, "EPS": COSINE_EPS}),
    impls={"triton": Impl(_triton)},
    doc="MMDSR: multi-perspective weighted cosine graph",
))
