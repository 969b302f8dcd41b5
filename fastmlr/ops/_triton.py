"""The "triton" backend: fastmlr.kernels' Triton kernels behind fastmlr.ops.

Each op with a Triton kernel says so in its declaration (``OpSpec.impls["triton"]``);
this module names no op. On CUDA tensors it is the default (priority 10). On CPU
tensors Triton runs only in its interpreter, which Triton decides when the kernels
are decorated, i.e. when they are first loaded: the first time selection asks this
backend (fastmlr/ops/_dispatch.py states the whole rule). The backend runs CPU
tensors only if ``TRITON_INTERPRET=1`` was set by then, and even so is never
preferred over the C++ backend (priority 90; it is slow, and meant for testing the
kernels without a GPU). Ask for it with ``use_backend("triton")`` or
``FASTMLR_BACKEND=triton``.

Importing this module raises if triton cannot be imported; fastmlr.ops then
marks the backend unavailable with that reason.
"""

from __future__ import annotations

import torch

from fastmlr.kernels.utils import INTERPRET

from . import opspec as _spec
from ._registry import PRIORITY, Backend

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
    return _spec.spec(op).impls["triton"].why_not(device_type, tensors)


def make_backend(call) -> Backend:
    """The backend the dispatcher registers when it loads this module (``call`` is unused here)."""
    return Backend(name="triton", priority=dict(PRIORITY["triton"]), why_not=_why_not, why_not_device=_why_not_device,
                   derive=lambda op: op.impls["triton"].load() if "triton" in op.impls else None)
