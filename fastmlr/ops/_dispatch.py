"""Backend registry and selection for fastmlr's ops (xformers-style dispatch).

Each backend states, per op and per call, whether it can run it and if not
why. Selection order: the ``backend=`` argument, else the innermost
``with use_backend(name):`` block, else ``$FASTMLR_BACKEND``, else the first
backend in the device's preference order that accepts the call. A backend that was asked for by name and refuses raises
:class:`BackendError`, which lists every backend and its reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

OPS = ("car_spatial_attention", "car_pool", "oe_boxes", "oe_erase", "second_order_pool", "multi_perspective_cosine")


class BackendError(RuntimeError):
    """No backend (or not the requested one) can run this call."""


@dataclass
class Backend:
    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    # Lower runs first when no backend is named. Keyed by device type.
    priority: dict[str, int] = field(default_factory=dict)
    # why_not(op, device_type, tensors) -> None if it can run, else a reason.
    why_not: Callable[[str, str, tuple], str | None] = lambda op, dev, ts: None

    def refuse(self, op: str, device_type: str, tensors: tuple) -> str | None:
        if op not in self.impls:
            return f"does not implement {op}"
        if device_type not in self.priority:
            return f"does not run on {device_type} tensors"
        return self.why_not(op, device_type, tensors)


_BACKENDS: dict[str, Backend] = {}
# Backends that could not be registered (e.g. the extension failed to build), with the reason.
_UNAVAILABLE: dict[str, str] = {}


# The backend chosen by the innermost ``use_backend`` block (None: no block, or one that lifts the choice).
_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastmlr_ops_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run every fastmlr op called inside the block on backend ``name``.

    Nothing is stored on models: the choice lives in a context variable, between an
    op's own ``backend=`` argument (which wins) and ``$FASTMLR_BACKEND``. ``None``
    lifts an outer block's choice. An unknown name raises at once.
    """
    if name is not None and name not in _BACKENDS and name not in _UNAVAILABLE:
        known = ", ".join(sorted(set(_BACKENDS) | set(_UNAVAILABLE)))
        raise BackendError(f"unknown backend {name!r}; known backends: {known}")
    token = _CHOSEN.set(name)
    try:
        yield
    finally:
        _CHOSEN.reset(token)


def current_backend() -> str | None:
    """The backend named by the innermost ``use_backend`` block, else ``$FASTMLR_BACKEND``, else None."""
    return _CHOSEN.get() or os.environ.get("FASTMLR_BACKEND") or None


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend
    _UNAVAILABLE.pop(backend.name, None)


def mark_unavailable(name: str, reason: str) -> None:
    if name not in _BACKENDS:
        _UNAVAILABLE[name] = reason


def _device_type(device) -> str:
    if isinstance(device, torch.Tensor):
        return device.device.type
    return torch.device(device).type


def available_backends(device="cpu") -> list[str]:
    """Backends that run on ``device`` (a device, its name, or a tensor), fastest first."""
    dev = _device_type(device)
    names = [b.name for b in _BACKENDS.values() if dev in b.priority]
    return sorted(names, key=lambda n: _BACKENDS[n].priority[dev])


def _explain(op: str, dev: str, tensors: tuple) -> str:
    lines = []
    for name in sorted(set(_BACKENDS) | set(_UNAVAILABLE)):
        if name in _UNAVAILABLE:
            lines.append(f"  {name}: unavailable ({_UNAVAILABLE[name]})")
        else:
            reason = _BACKENDS[name].refuse(op, dev, tensors)
            lines.append(f"  {name}: {reason or 'accepts this call'}")
    return "\n".join(lines)


def select(op: str, tensors: tuple, backend: str | None = None) -> Backend:
    """Return the backend that runs ``op`` on ``tensors``."""
    dev = tensors[0].device.type
    requested = backend or current_backend()
    if requested:
        b = _BACKENDS.get(requested)
        reason = (
            _UNAVAILABLE.get(requested, "no such backend") if b is None else b.refuse(op, dev, tensors)
        )
        if reason is None:
            return b
        raise BackendError(
            f"backend {requested!r} cannot run {op} on {dev} tensors: {reason}.\n"
            f"Every backend, for this call:\n{_explain(op, dev, tensors)}"
        )
    for name in available_backends(dev):
        b = _BACKENDS[name]
        if b.refuse(op, dev, tensors) is None:
            return b
    raise BackendError(f"no backend can run {op} on {dev} tensors:\n{_explain(op, dev, tensors)}")
