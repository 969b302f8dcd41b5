"""``nn.Linear`` for eager CPU inference with oneDNN and a weight packed once.

Eager PyTorch runs ``F.linear`` through ATen's BLAS call (MKL's sgemm in the x86 wheels), which on the AMD
CPUs these machines have reaches 86-102 G multiply-adds per second on SRDL's D x D layers, against 203-223
for oneDNN with its weight reordered once into its own blocked layout (``benchmarks/head_profile.py``:
``f_sa`` 8.05 -> 3.68 ms, ``f_c`` 3.91 -> 1.65 ms, 2 threads, ResNet-101 at 448 px). The frozen
AOTInductor packages already run the packed form (Inductor's freezing packs every linear weight);
:func:`linear` gives eager inference the same.

It applies only where nothing can tell: a float32 CPU call with autograd off (``torch.no_grad`` or
``torch.inference_mode``) and CPU autocast off, on plain tensors, outside any tracer (``torch.compile``, ``torch.export`` and
the ONNX and AOTInductor exports built on it, ``torch.jit.trace``). Everything else (training, other
dtypes, devices, traced graphs) is ``layer(x)`` as before, so exported graphs hold ``aten.linear`` as they
did. The packed copy is kept beside the layer and rebuilt when the weight is replaced or changed in place:
its ``data_ptr`` and version counter (which optimizer steps, ``load_state_dict``, ``nn.init`` and
``torch.no_grad`` writes advance), and, for writes through ``.data`` (which PyTorch hides from the
version counter), 256 of its elements spread over the whole weight, compared on every call (a few
microseconds). It is dropped by ``copy.deepcopy`` and pickling, and costs one more copy of the weight
(16 MB for a 2048 x 2048 layer). Results differ from ``F.linear``'s only by
float32 summation order (tests/test_cpu_linear.py bounds both against float64).

``FASTMLR_PACKED_LINEAR=0`` turns it off (what the benchmarks use to show both).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
from torch import Tensor

_ATTR = "_fastmlr_packed"
_broken: str | None = None  # why the packed path failed once in this process (then it is not tried again)


class _Packed:
    """The packed weight and the weight state it was made from; never copied or pickled with the layer."""

    __slots__ = ("key", "sample", "weight")

    def __init__(self, key: tuple, sample: Tensor, weight: Tensor):
        self.key, self.sample, self.weight = key, sample, weight

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return (type(None), ())


def enabled() -> bool:
    """Whether the packed path may be used in this process (oneDNN present, not switched off, not failed)."""
    return (_broken is None and os.environ.get("FASTMLR_PACKED_LINEAR", "1") != "0"
            and torch.backends.mkldnn.is_available())


def applies(layer: nn.Linear, x: Tensor) -> bool:
    """Whether :func:`linear` would run ``layer`` on ``x`` through the packed weight."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch.is_autocast_enabled("cpu"):  # autocast decides the linear's dtype: leave it to F.linear
        return False
    w = layer.weight
    return (type(x) is torch.Tensor and type(w.data) is torch.Tensor and x.device.type == "cpu"
            and x.dtype == torch.float32 and w.dtype == torch.float32 and x.dim() >= 1
            and x.shape[-1] == w.shape[1] and enabled())


_SAMPLE = 256


def _sample(w: Tensor) -> Tensor:
    flat = w.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // _SAMPLE)].clone()


def _packed_weight(layer: nn.Linear, rows: int) -> Tensor:
    w = layer.weight
    key = (w.data_ptr(), w._version, tuple(w.shape))
    held, sample = layer.__dict__.get(_ATTR), _sample(w)
    if held is None or held.key != key or not torch.equal(held.sample, sample):
        held = _Packed(key, sample, torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows))
        layer.__dict__[_ATTR] = held
    return held.weight


def release(module: nn.Module) -> None:
    """Drop the packed copies held for ``module``'s linear layers (the memory; they are rebuilt on use)."""
    for m in module.modules():
        m.__dict__.pop(_ATTR, None)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)``; for eager float32 CPU inference, oneDNN with ``layer``'s weight packed (see the module)."""
    global _broken
    if not applies(layer, x):
        return layer(x)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    try:
        w = _packed_weight(layer, x2.shape[0])
        b = layer.bias.detach() if layer.bias is not None else None
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")
    except (RuntimeError, AttributeError) as e:  # an ATen build without these oneDNN ops
        _broken = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"fastmlr: packed oneDNN linear unavailable ({_broken}); eager linears use F.linear",
              file=sys.stderr)
        return layer(x)
    return y.view(*lead, y.shape[-1])


__all__ = ["applies", "enabled", "linear", "release"]
