"""The registry of fastmlr's op backends: what each backend is, and which are registered.

A backend module (fastmlr/ops/_cpp.py, _triton.py, _nodes.py) imports this
module, never the dispatcher (fastmlr/ops/_dispatch.py), which loads the backend
modules by name: the dependency runs one way. Each registered backend's
implementations come from the ops' declarations through its ``derive``; an op
declared later is added to every registered backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from . import opspec as _spec

# Preference of each backend per device type, lower first (the optional ones' known before they load).
PRIORITY = {
    "cpp": {"cpu": 10, "cuda": 20},
    # The tracing form of the others, run only when named (listed beside "cpp").
    "nodes": {"cpu": 15, "cuda": 25},
    # Triton runs CPU tensors only in its interpreter: slow, for testing the kernels without a GPU.
    "triton": {"cuda": 10, "cpu": 90},
    # Runs only when named: the portable ONNX op set traces through it. Listed before the reference.
    "decomposed": {"cpu": 90, "cuda": 90, "meta": 90},
    # Last resort everywhere: it materialises N x C x P x D.
    "reference": {"cpu": 100, "cuda": 100, "meta": 100},
}


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
    # why_not_device(device_type) -> None if it can run anything on that device type, else a reason.
    why_not_device: Callable[[str], str | None] = lambda dev: None
    # False: runs only when named (export-time forms such as "decomposed"), never chosen automatically.
    auto: bool = True
    # derive(spec) -> this backend's implementation of a declared op, or None: fills ``impls`` for every
    # op declared before and after the backend is registered.
    derive: Callable | None = None

    def refuse_device(self, device_type: str) -> str | None:
        if device_type not in self.priority:
            return f"does not run on {device_type} tensors"
        return self.why_not_device(device_type)

    def refuse(self, op: str, device_type: str, tensors: tuple) -> str | None:
        if op not in self.impls:
            return f"does not implement {op}"
        return self.refuse_device(device_type) or self.why_not(op, device_type, tensors)


class BackendStatus(NamedTuple):
    """One row of :func:`backend_status`: whether ``name`` runs, and if not why (``reason`` is None when it runs)."""

    name: str
    runs: bool
    reason: str | None


_BACKENDS: dict[str, Backend] = {}
# Backends that could not be registered (e.g. the extension failed to build), with the reason.
_UNAVAILABLE: dict[str, str] = {}


def _add_spec(op: _spec.OpSpec) -> None:
    for b in _BACKENDS.values():
        impl = b.derive(op) if b.derive is not None else None
        if impl is not None:
            b.impls[op.name] = impl


def _drop_op(name: str) -> None:
    for b in _BACKENDS.values():
        b.impls.pop(name, None)


_spec.on_declare(_add_spec, _drop_op)


def register_backend(backend: Backend) -> None:
    """Add ``backend``; its ``derive`` fills its implementations from every declared op."""
    if backend.derive is not None:
        for op in _spec.specs():
            impl = backend.derive(op)
            if impl is not None:
                backend.impls[op.name] = impl
    _BACKENDS[backend.name] = backend
    _UNAVAILABLE.pop(backend.name, None)


def mark_unavailable(name: str, reason: str) -> None:
    if name not in _BACKENDS:
        _UNAVAILABLE[name] = reason


