"""The "cpp" backend: fastmlr's C++/CUDA extension ``fastmlr._C``.

Loading ``fastmlr._C`` registers the ops ``torch.ops.fastmlr.*`` (schemas in
csrc/fastmlr.cpp, kernels in csrc/cpu and csrc/cuda). This module adds what
torch.compile and autograd need (fake kernels, backward formulas) and the
backend entry for :mod:`fastmlr.ops`. If the extension is missing the import
fails and fastmlr.ops (which imports this module on first use) marks "cpp" unavailable with the reason.

Differences from the reference, by design:
- ``car_pool``'s backward sends each maximum's gradient to the first ``p``
  reaching it; ``torch.amax`` splits it evenly among exact ties. Ties do not
  occur with continuous inputs. NaN inputs are not propagated by the maximum.
- ``car_spatial_attention`` in float32 on the CPU uses a vectorised rational
  tanh (csrc/car_math.h) with an absolute error of at most 4e-7 (float64 uses
  the exact libm tanh); ``torch.ops.fastmlr.tanh_fast`` exposes it for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import fastmlr._C  # noqa: F401  (runs the TORCH_LIBRARY initialisers)
except ImportError as e:
    raise ImportError(
        f"fastmlr._C, the C++/CUDA extension, cannot be loaded ({e}); "
        "build it with `pip install --no-build-isolation -e .` in the repository"
    ) from e

from ._autocast import register_for_library
from ._dispatch import Backend, register_backend

_ops = torch.ops.fastmlr


# --- fake kernels: shapes only, for FakeTensorMode / torch.compile / export -----------------

@torch.library.register_fake("fastmlr::car_spatial_attention")
def _(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    return u.new_empty((u.shape[0], wc.shape[0], u.shape[1]))


@torch.library.register_fake("fastmlr::car_spatial_attention_backward")
def _(grad: Tensor, u: Tensor, wc: Tensor, s: Tensor, b: Tensor, out: Tensor):
    return torch.empty_like(u), torch.empty_like(wc), torch.empty_like(s), torch.empty_like(b)


@torch.library.register_fake("fastmlr::car_pool")
def _(f: Tensor, sa: Tensor, ca: Tensor):
    shape = (f.shape[0], sa.shape[1], f.shape[1])
    return f.new_empty(shape), f.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("fastmlr::car_pool_backward")
def _(grad: Tensor, f: Tensor, sa: Tensor, ca: Tensor, idx: Tensor):
    return torch.empty_like(f), torch.empty_like(sa), torch.empty_like(ca)


@torch.library.register_fake("fastmlr::oe_boxes")
def _(sa: Tensor, alpha: float) -> Tensor:
    return sa.new_empty((sa.shape[0], sa.shape[1], 4), dtype=torch.int64)


@torch.library.register_fake("fastmlr::oe_erase")
def _(sa: Tensor, boxes: Tensor) -> Tensor:
    return torch.empty_like(sa, memory_format=torch.contiguous_format)


# --- autograd ----------------------------------------------------------------------------------

def _sa_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _sa_backward(ctx, grad):
    u, wc, s, b, out = ctx.saved_tensors
    return _ops.car_spatial_attention_backward(grad.contiguous(), u, wc, s, b, out)


torch.library.register_autograd("fastmlr::car_spatial_attention", _sa_backward, setup_context=_sa_setup)


def _pool_setup(ctx, inputs, output):
    f, sa, ca = inputs
    # The argmax index (N x C x D) is all the backward keeps besides the inputs.
    ctx.save_for_backward(f, sa, ca, output[1])


def _pool_backward(ctx, grad_feat, grad_idx):
    f, sa, ca, idx = ctx.saved_tensors
    if grad_feat is None:
        return None, None, None
    return _ops.car_pool_backward(grad_feat.contiguous(), f, sa, ca, idx)


torch.library.register_autograd("fastmlr::car_pool", _pool_backward, setup_context=_pool_setup)


def _erase_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _erase_backward(ctx, grad):
    (boxes,) = ctx.saved_tensors
    # The erased rectangle is a constant mask: its gradient is the mask applied to grad.
    return _ops.oe_erase(grad, boxes), None


torch.library.register_autograd("fastmlr::oe_erase", _erase_backward, setup_context=_erase_setup)


# --- autocast: the rule of fastmlr/ops/_autocast.py, for callers of torch.ops.fastmlr.* -------

_AUTOCAST_LIB = torch.library.Library("fastmlr", "IMPL")
register_for_library(_AUTOCAST_LIB, ["car_spatial_attention", "car_pool", "oe_boxes", "oe_erase"])


# --- the backend -------------------------------------------------------------------------------

def has_cuda_kernels() -> bool:
    """Whether fastmlr._C was built with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastmlr::car_pool", "CUDA")


_CAR_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float16, torch.bfloat16, torch.float64),
}
# Erasing and boxes only compare and copy: exact in every floating dtype.
_OE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _why_not_device(device_type: str) -> str | None:
    if device_type == "cuda" and not has_cuda_kernels():
        return "fastmlr._C was built without CUDA (no nvcc at build time, or FASTMLR_WITH_CUDA=0)"
    return None


def _why_not(op: str, device_type: str, tensors: tuple) -> str | None:
    dtype = tensors[0].dtype
    allowed = _OE_DTYPES if op.startswith("oe_") else _CAR_DTYPES[device_type]
    if dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        return f"{op} on {device_type} supports {names}, got {str(dtype).removeprefix('torch.')}"
    return None


def _car_spatial_attention(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    return _ops.car_spatial_attention(u, wc, s, b)


def _car_pool(f: Tensor, sa: Tensor, ca: Tensor) -> Tensor:
    return _ops.car_pool(f, sa, ca)[0]


def _oe_boxes(sa: Tensor, alpha: float) -> Tensor:
    return _ops.oe_boxes(sa, alpha)


def _oe_erase(sa: Tensor, boxes: Tensor) -> Tensor:
    return _ops.oe_erase(sa, boxes)


register_backend(
    Backend(
        name="cpp",
        impls={
            "car_spatial_attention": _car_spatial_attention,
            "car_pool": _car_pool,
            "oe_boxes": _oe_boxes,
            "oe_erase": _oe_erase,
        },
        priority={"cpu": 10, "cuda": 20},
        why_not=_why_not,
        why_not_device=_why_not_device,
    )
)
