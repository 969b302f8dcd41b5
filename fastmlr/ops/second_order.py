"""AAMN's global second-order pooling, declared once: ``second_order_pool`` (docs/models/aamn.md).

No C++ kernel: Triton on a GPU, the reference elsewhere. See fastmlr/ops/opspec.py
for what a declaration holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _dispatch
from ._checks import check
from .opspec import Impl, OnnxNode, OpSpec, TrtPlugin, declare


def second_order_pool_ref(x: Tensor) -> Tensor:
    """Global second-order pooling: the channel covariance of each feature map (AAMN's SRE module).

    ``cov[n,i,j] = 1/P * sum_p (x[n,i,p] - mean_p x[n,i]) * (x[n,j,p] - mean_p x[n,j])``

    Args:
        x (Tensor[N, D, P]): feature map, flattened spatially.
    Returns:
        Tensor[N, D, D], symmetric.
    """
    xc = x - x.mean(dim=2, keepdim=True)  # N, D, P: the centred copy a fused kernel never stores
    return torch.matmul(xc, xc.transpose(1, 2)) / x.shape[2]


def second_order_pool(x: Tensor, *, backend: str | None = None) -> Tensor:
    """Global second-order pooling (channel covariance), AAMN's spatial-relation module (docs/models/aamn.md).

    ``cov[n,i,j] = 1/P * sum_p (x[n,i,p] - mean_p x[n,i]) * (x[n,j,p] - mean_p x[n,j])``

    Args:
        x (Tensor[N, D, P]).
    Returns:
        Tensor[N, D, D]
    Under autocast ("promote", as ``torch.cov``): x keeps its dtype.
    """
    check(x.dim() == 3, f"second_order_pool: x must be (N, D, P), got shape {tuple(x.shape)}")
    check(x.shape[2] >= 1, "second_order_pool: x has no spatial positions (P = 0)")
    return _dispatch.call("second_order_pool", (x,), backend, same_dtype=("x",))


def _triton():
    from ..kernels import mlr_extra

    return mlr_extra.second_order_pool


def _scalars(shapes) -> list:
    _n, d, p = shapes[0]
    return [d, p, d * p, p, d * d, d]  # D, P, x.stride(0..1), out.stride(0..1)


def _config(arch: int) -> tuple[dict, int]:
    # Not the launcher's 64 x 64 x 32 tiles: in one launch the plugin's kernel also computes its row means,
    # and spills registers at that size (ptxas -v, sm_80 and sm_90, fp32). This tile compiles for
    # sm_80/86/89/90 without spills, in the 48 KB of shared memory a launch gets without opting in.
    return dict(BLOCK_I=32, BLOCK_J=32, BLOCK_R=32), 4


# The covariance of AAMN's reduced map (r = sop_dim = 64 channels) at 14 x 14 (448 px, stride 32).
_SIZES = {"small": (2, 9, 13), "paper": (16, 64, 14 * 14)}


def _examples(size, gen):
    return (torch.randn(*_SIZES[size], generator=gen).relu(),)


SECOND_ORDER_POOL = declare(OpSpec(
    name="second_order_pool",
    schema="second_order_pool(Tensor x) -> Tensor",
    reference=second_order_pool_ref,
    autocast="promote",  # a covariance, like torch.cov
    output_shape=lambda shapes: (shapes[0][0], shapes[0][1], shapes[0][1]),  # N, D, D
    function=second_order_pool,
    make_examples=_examples,
    # Its one intermediate (the centred copy, N x D x P) is the input's size: nothing to chunk.
    decomposition=second_order_pool_ref,
    onnx=OnnxNode("SecondOrderPool", ("x",), "cov"),
    trt=TrtPlugin("sop_trt_kernel", (3,), _scalars,
                  grid=lambda sh, bl, cdiv: (cdiv(sh[0][1], bl["BLOCK_J"]), cdiv(sh[0][1], bl["BLOCK_I"]), sh[0][0]),
                  config=_config, constants={"USE_DOT": True}),
    impls={"triton": Impl(_triton)},
    doc="AAMN: global second-order pooling (channel covariance)",
))
