"""What every Triton kernel file in fastmlr.kernels shares.

``INTERPRET`` is read once, at import, because that is when ``@triton.jit``
decides (``triton.knobs.runtime.interpret``, i.e. ``TRITON_INTERPRET``)
whether a kernel is compiled for a GPU or run by the CPU interpreter. Set
``TRITON_INTERPRET=1`` before triton is first imported in the process (its own
library functions are decorated then too); fastmlr.ops imports this package
only on first use. Changing it later has no effect on decorated kernels.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET: bool = bool(triton.knobs.runtime.interpret)

if INTERPRET:
    def loop_bound(n):
        """A kernel loop's runtime bound as a Python int: ``for k0 in range(0, loop_bound(D), BLOCK)``.

        The interpreter hands a kernel's integer arguments over as one-element arrays and runs its loops
        with Python's ``range``, which converts them with ``__index__``; Triton 3.6's interpreter does that
        with ``int(array)``, which numpy >= 2.4 refuses for arrays of one dimension ("only 0-dimensional
        arrays can be converted to Python scalars"). Reading the single value as a 0-d array works with
        every numpy. Compiled kernels use the identity below.
        """
        return int(n.handle.data.reshape(())) if isinstance(n, tl.tensor) else n
else:
    @triton.jit
    def loop_bound(n):
        return n


# The interpreter has no libdevice (tanh included); a real GPU uses it.
USE_LIBDEVICE: bool = not INTERPRET

# Loads are upcast to this before any arithmetic: fp16/bf16/fp32 accumulate in
# fp32, float64 stays float64 (so float64 gradchecks stay meaningful).
_ACC = {torch.float16: tl.float32, torch.bfloat16: tl.float32, torch.float32: tl.float32, torch.float64: tl.float64}
_TORCH_ACC = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
              torch.float64: torch.float64}


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for tensors of ``dtype``."""
    return _ACC[dtype]


def torch_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Torch twin of :func:`acc_dtype`, for buffers the kernels accumulate into."""
    return _TORCH_ACC[dtype]


def check_contiguous(op: str, **ts: torch.Tensor) -> None:
    """Raise if a launcher hands a kernel a strided tensor (kernels index them densely)."""
    for name, t in ts.items():
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous after the launcher's .contiguous(), "
                             f"got strides {t.stride()} for shape {tuple(t.shape)}")


def device_context(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@triton.jit
def tanh(x, USE_LIBDEVICE: tl.constexpr):
    """tanh(x): libdevice on a GPU, ``2 sigmoid(2x) - 1`` in the interpreter.

    The identity is exact in real arithmetic; in floating point its absolute
    error is about one ulp of 1 near x = 0, which is what the attention sums
    (over D) care about.
    """
    if USE_LIBDEVICE:
        y = libdevice.tanh(x)
    else:
        y = 2.0 * tl.sigmoid(2.0 * x) - 1.0
    return y
