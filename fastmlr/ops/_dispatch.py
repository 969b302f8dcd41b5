"""Backend registry and selection for fastmlr's ops (xformers-style dispatch).

Each backend states, per op and per call, whether it can run it and if not
why. Selection order: the ``backend=`` argument, else the innermost
``with use_backend(name):`` block, else ``$FASTMLR_BACKEND``, else the first
backend in the device's preference order that accepts the call. A backend that
was asked for by name and refuses raises :class:`BackendError`, which lists
every backend and its reason.

The optional backends ("cpp": the extension fastmlr._C; "triton":
fastmlr.kernels) are imported the first time the registry is consulted: the
first op call, :func:`available_backends` or :func:`backend_status`.
``import fastmlr.ops`` imports neither fastmlr._C nor triton. The Triton
interpreter mode (``TRITON_INTERPRET=1``) is fixed by two things, both after
which changing the variable has no effect: the first import of ``triton`` in the
process (Triton decorates its own library then; torchvision and torch._dynamo
import triton, so ``import fastmlr.models`` does too), and the loading of
fastmlr.kernels here. Set it before either, e.g. in the environment.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

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
    # why_not_device(device_type) -> None if it can run anything on that device type, else a reason.
    why_not_device: Callable[[str], str | None] = lambda dev: None
    # False: runs only when named (export-time forms such as "decomposed"), never chosen automatically.
    auto: bool = True

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
# Optional backends, imported on first consultation of the registry: name -> module that registers it.
_OPTIONAL = {"cpp": "fastmlr.ops._cpp", "triton": "fastmlr.ops._triton", "nodes": "fastmlr.ops._nodes"}
_loaded = False


def _load_optional() -> bool:
    """Import the optional backends once; one that cannot load is marked unavailable with its reason."""
    global _loaded
    if _loaded:
        return True
    _loaded = True
    for name, module in _OPTIONAL.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                mark_unavailable(name, "not built into this version of fastmlr")
            else:
                mark_unavailable(name, f"import failed: {e}")
        except Exception as e:  # a broken optional backend must not break the package
            mark_unavailable(name, f"import failed: {type(e).__name__}: {e}")
    return True


# Under torch.compile / torch.export the first loading runs eagerly while tracing and its result is a
# constant, so a first op call inside a compiled region does not break the graph on the imports. This
# attribute is the whole effect of torch.compiler.assume_constant_result, which would import
# torch._dynamo (and with it triton) here; tests/test_ops_dispatch.py checks it still works.
_load_optional._dynamo_marked_constant = True  # type: ignore[attr-defined]
_ensure_loaded = _load_optional


# The backend chosen by the innermost ``use_backend`` block (None: no block, or one that lifts the choice).
_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastmlr_ops_backend", default=None)


def known_backends() -> list[str]:
    """Every backend name fastmlr knows, whether or not it runs here (loads nothing)."""
    return sorted(set(_BACKENDS) | set(_UNAVAILABLE) | set(_OPTIONAL))


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run every fastmlr op called inside the block on backend ``name``.

    Nothing is stored on models: the choice lives in a context variable, between an
    op's own ``backend=`` argument (which wins) and ``$FASTMLR_BACKEND``. ``None``
    lifts an outer block's choice. An unknown name raises at once. torch.compile
    guards on the choice: a compiled model called in another block recompiles.
    """
    if name is not None and name not in known_backends():
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())}")
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


def _probe(dtype: torch.dtype) -> tuple:
    # Shapes and dtype are all a refusal looks at; meta tensors allocate nothing.
    return (torch.empty(1, 1, 1, 1, dtype=dtype, device="meta"),)


def backend_status(device="cpu", op: str | None = None, dtype: torch.dtype = torch.float32) -> list[BackendStatus]:
    """Every known backend on ``device`` (a device, its name, or a tensor): whether it runs, and if not why.

    With ``op``, whether it runs that op on ``dtype`` inputs of a small shape. Backends that run
    come first, fastest first; then the others by name.
    """
    _ensure_loaded()
    if op is not None and op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    dev = _device_type(device)
    no_device = "no CUDA device on this machine" if dev == "cuda" and not torch.cuda.is_available() else None
    rows = []
    for name in known_backends():
        if name in _UNAVAILABLE:
            rows.append(BackendStatus(name, False, f"unavailable: {_UNAVAILABLE[name]}"))
            continue
        b = _BACKENDS[name]
        reason = no_device or (b.refuse_device(dev) if op is None else b.refuse(op, dev, _probe(dtype)))
        rows.append(BackendStatus(name, reason is None, reason))
    running = sorted((r for r in rows if r.runs), key=lambda r: _BACKENDS[r.name].priority[dev])
    return running + [r for r in rows if not r.runs]


def available_backends(device="cpu") -> list[str]:
    """Backends that run on ``device`` (a device, its name, or a tensor), fastest first."""
    return [r.name for r in backend_status(device) if r.runs]


def _explain(op: str, dev: str, tensors: tuple) -> str:
    lines = []
    for name in known_backends():
        if name in _UNAVAILABLE:
            lines.append(f"  {name}: unavailable ({_UNAVAILABLE[name]})")
        else:
            reason = _BACKENDS[name].refuse(op, dev, tensors)
            lines.append(f"  {name}: {reason or 'accepts this call'}")
    return "\n".join(lines)


def select(op: str, tensors: tuple, backend: str | None = None) -> Backend:
    """Return the backend that runs ``op`` on ``tensors``."""
    _ensure_loaded()
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
    for b in sorted((b for b in _BACKENDS.values() if b.auto and dev in b.priority), key=lambda b: b.priority[dev]):
        if b.refuse(op, dev, tensors) is None:
            return b
    raise BackendError(f"no backend can run {op} on {dev} tensors:\n{_explain(op, dev, tensors)}")
