"""The "nodes" backend: every inference op as one ``torch.ops.fastmlr`` call, so traced graphs keep it whole.

Exporters that want the fused ops as single nodes (the ONNX ``fused`` op set:
fastmlr/deploy/onnx_fused.py) trace inside ``use_backend("nodes")``. The CAR
ops are the extension's own ``fastmlr::car_spatial_attention`` and
``fastmlr::car_pool`` (the "cpp" backend's kernels). AAMN's
``second_order_pool`` and MMDSR's ``multi_perspective_cosine`` have no C++
op: this module defines thin torch custom ops ``fastmlr::second_order_pool``
and ``fastmlr::multi_perspective_cosine`` whose implementation is the
ordinary dispatch (the fastest backend that runs the call: Triton on CUDA,
the reference on the CPU), with fake kernels for tracing and an autograd
formula through the reference. Object erasing is training-only: not here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _cpp  # noqa: F401  (loads fastmlr._C; without it this backend is unavailable, with the reason)
from . import reference
from ._dispatch import Backend, register_backend, use_backend

_ops = torch.ops.fastmlr


@torch.library.custom_op("fastmlr::second_order_pool", mutates_args=())
def _second_order_pool(x: Tensor) -> Tensor:
    from . import second_order_pool

    with use_backend(None):
        return second_order_pool(x).contiguous()


@_second_order_pool.register_fake
def _(x: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], x.shape[1]))


@torch.library.custom_op("fastmlr::multi_perspective_cosine", mutates_args=())
def _multi_perspective_cosine(v: Tensor, w: Tensor) -> Tensor:
    from . import multi_perspective_cosine

    with use_backend(None):
        return multi_perspective_cosine(v, w).contiguous()


@_multi_perspective_cosine.register_fake
def _(v: Tensor, w: Tensor) -> Tensor:
    return v.new_empty((v.shape[0], v.shape[1], v.shape[1]))


def _vjp_through_reference(ref_fn):
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        ins = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = ref_fn(*ins)
        return torch.autograd.grad(out, ins, grad)

    return setup, backward


for _op, _ref in ((_second_order_pool, reference.second_order_pool_ref),
                  (_multi_perspective_cosine, reference.multi_perspective_cosine_ref)):
    _setup, _backward = _vjp_through_reference(_ref)
    _op.register_autograd(_backward, setup_context=_setup)


def _why_not(op: str, device_type: str, tensors: tuple) -> str | None:
    if op.startswith("car_"):
        return _cpp._why_not(op, device_type, tensors)
    return None


register_backend(
    Backend(
        name="nodes",
        impls={
            "car_spatial_attention": lambda u, wc, s, b: _ops.car_spatial_attention(u, wc, s, b),
            "car_pool": lambda f, sa, ca: _ops.car_pool(f, sa, ca)[0],
            "second_order_pool": lambda x: _ops.second_order_pool(x),
            "multi_perspective_cosine": lambda v, w: _ops.multi_perspective_cosine(v, w),
        },
        # Runs only when named: it is the tracing form of the other backends (listed beside "cpp").
        priority={"cpu": 15, "cuda": 25},
        auto=False,
        why_not=_why_not,
        why_not_device=_cpp._why_not_device,
    )
)
