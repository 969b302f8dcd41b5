"""The "triton" backend: fastmlr.kernels' Triton kernels behind fastmlr.ops.

On CUDA tensors it is the default (priority 10). On CPU tensors Triton runs
only in its interpreter, which Triton decides when the kernels are decorated,
i.e. when this module is imported: the first time fastmlr.ops consults its
registry (first op call, ``available_backends``, ``backend_status``), not at
``import fastmlr.ops`` (fastmlr/ops/_dispatch.py states the whole rule). The
backend runs CPU tensors only if ``TRITON_INTERPRET=1`` was set by then, and
even so is never preferred over the C++ backend
(priority 90; it is slow, and meant for testing the kernels without a GPU).
Ask for it with ``use_backend("triton")`` or ``FASTMLR_BACKEND=triton``.

Importing this module raises if triton cannot be imported; fastmlr.ops then
marks the backend unavailable with that reason.
"""

from __future__ import annotations

import torch

from fastmlr.kernels import car, mlr_extra, oe
from fastmlr.kernels.utils import INTERPRET

from ._dispatch import Backend, register_backend

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# numpy, under the interpreter, has no bfloat16.
_INTERPRET_DTYPES = (torch.float16, torch.float32, torch.float64)


def _why_not_device(device_type: str) -> str | None:
    if device_type == "cpu" and not INTERPRET:
        return ("Triton runs CPU tensors only in its interpreter, and fastmlr.kernels was loaded without "
                "TRITON_INTERPRET=1 (set it before triton is first imported)")
    return None


def _why_not(op: str, device_type: str, tensors: tuple) -> str | None:
    allowed = _CUDA_DTYPES if device_type == "cuda" else _INTERPRET_DTYPES
    for t in tensors:
        if t.is_floating_point() and t.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            where = "on CUDA" if device_type == "cuda" else "in the Triton interpreter"
            return f"dtype {t.dtype} is not supported {where} (supported: {names})"
    if op == "oe_boxes":
        H, W = tensors[0].shape[-2:]
        if max(H, W) > oe.MAX_OE_SIDE:
            return f"maps of {H} x {W} exceed the {oe.MAX_OE_SIDE} x {oe.MAX_OE_SIDE} that one program holds"
    return None


register_backend(
    Backend(
        name="triton",
        impls={
            "car_spatial_attention": car.car_spatial_attention,
            "car_pool": car.car_pool,
            "oe_boxes": oe.oe_boxes,
            "oe_erase": oe.oe_erase,
            "second_order_pool": mlr_extra.second_order_pool,
            "multi_perspective_cosine": mlr_extra.multi_perspective_cosine,
        },
        priority={"cuda": 10, "cpu": 90},
        why_not=_why_not,
        why_not_device=_why_not_device,
    )
)
