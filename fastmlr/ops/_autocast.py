"""How each of fastmlr's ops behaves under ``torch.autocast``: one rule per op, the same on every backend.

Each op declares its rule (``OpSpec.autocast``, fastmlr/ops/opspec.py); this module applies it.
Autocast casts the inputs of the PyTorch ops it knows (``F.linear`` runs in the
autocast dtype, ``cosine_similarity`` in float32, elementwise ops follow type
promotion) but passes a custom op's inputs through as they come: a model under
autocast hands an op activations in float16/bfloat16 and its own float32
parameters. Each op therefore takes the category autocast gives the PyTorch
computation it fuses:

- ``"lower"`` (a fused linear layer, such as SRDL's spatial attention): every
  float32/float16/bfloat16 input is cast to the autocast dtype, as autocast
  casts a linear layer's weight and bias;
- ``"fp32"`` (a cosine similarity, whose norm clamp float16 cannot hold): those
  inputs are cast to float32;
- ``"promote"`` (products and maxima, comparisons and copies, a covariance like
  ``torch.cov``): every floating input is cast to the widest floating dtype among them.

float64 inputs are never cast down (autocast leaves float64 alone too). The op then
runs with autocast disabled, so a backend's own decomposition (the reference's
matmuls) is not recast halfway through. Outside autocast nothing is cast and mixed
dtypes remain an error. The public functions of :mod:`fastmlr.ops` apply the rule
before choosing a backend; the "cpp" backend registers the same rule as the
Autocast kernel of its ``torch.ops.fastmlr`` ops (:func:`register_for_library`), for
callers of those ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch

from . import opspec as _spec


class _Rules(Mapping):
    """op name -> its autocast rule, read from the ops' declarations (fastmlr/ops/opspec.py) when asked."""

    def __getitem__(self, op: str) -> str:
        try:
            return _spec.spec(op).autocast
        except ValueError:
            raise KeyError(op) from None

    def __iter__(self):
        return iter([s.name for s in _spec.specs()])

    def __len__(self) -> int:
        return len(_spec.specs())

    def __repr__(self) -> str:
        return repr(dict(self))


RULES = _Rules()

_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs in on ``device_type`` now, or None when autocast is off there."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
    except RuntimeError:  # a device type without autocast (meta, ...)
        return None
    return torch.get_autocast_dtype(device_type)


def target_dtype(op: str, dtypes: list[torch.dtype], amp_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``op``'s castable floating inputs take under autocast in ``amp_dtype``."""
    rule = RULES[op]
    if rule == "lower":
        return amp_dtype
    if rule == "fp32":
        return torch.float32
    widest = dtypes[0]
    for d in dtypes[1:]:
        widest = torch.promote_types(widest, d)
    return widest


def cast_inputs(op: str, tensors: tuple, device_type: str) -> tuple[tuple, contextlib.AbstractContextManager]:
    """Apply ``op``'s rule to ``tensors`` (non-tensors and integer tensors pass through).

    Returns the inputs to run the op on and the context to run it in: autocast
    disabled when it was on, else a no-op (and the inputs unchanged).
    """
    amp = autocast_dtype(device_type)
    if amp is None:
        return tensors, contextlib.nullcontext()
    floats = [t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return tensors, torch.autocast(device_type, enabled=False)
    to = target_dtype(op, floats, amp)

    def cast(t):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != to:
            if RULES[op] == "promote" or t.dtype in _CASTABLE:
                return t.to(to)
        return t

    return tuple(cast(t) for t in tensors), torch.autocast(device_type, enabled=False)


def register_for_library(lib: torch.library.Library, ops, device_types=("cpu", "cuda")) -> None:
    """Register the rule as the Autocast kernel of ``lib``'s ops ``namespace::op`` (for direct callers)."""
    ns = lib.ns
    for device_type in device_types:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        for name in ops:
            overload = getattr(getattr(torch.ops, ns), name).default

            def kernel(*args, _op=name, _overload=overload, _dev=device_type):
                args, ctx = cast_inputs(_op, args, _dev)
                with ctx:
                    return _overload(*args)

            lib.impl(name, kernel, key)
