"""Backend registry and selection for fastmlr's ops (xformers-style dispatch), over the ops' declarations.

Each backend states, per op and per call, whether it can run it and if not
why. Selection order: the ``backend=`` argument, else the innermost
``with use_backend(name):`` block, else ``$FASTMLR_BACKEND``, else the first
backend in the device's preference order that accepts the call. A backend that
was asked for by name and refuses raises :class:`BackendError`, which lists
every backend and its reason.

What each backend runs comes from the ops' declarations (fastmlr/ops/opspec.py):
"reference" runs ``OpSpec.reference``, "decomposed" ``OpSpec.decomposition``,
the others ``OpSpec.impls[name]``; an op declared later (:func:`fastmlr.ops.declare`)
is added to every loaded backend. This module names no op.

The optional backends ("cpp": the extension fastmlr._C; "triton":
fastmlr.kernels; "nodes": the tracing form) are imported one at a time, the
first time selection has to ask one of them: an op call that the C++ backend
runs loads neither Triton nor the "nodes" module, and one that Triton runs on
a GPU does not load fastmlr._C. What is known without importing (the ops a
backend implements, its priorities, whether Triton runs CPU tensors) is
decided without importing. ``import fastmlr.ops`` imports neither fastmlr._C nor
triton; :func:`backend_status` and :func:`available_backends` load them all.
The Triton interpreter mode (``TRITON_INTERPRET=1``) is fixed by the first
import of ``triton`` in the process (torchvision and torch._dynamo import
triton, so ``import fastmlr.models`` does too) and by the loading of
fastmlr.kernels: set it before either, e.g. in the environment.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from . import opspec as _spec
from ._autocast import cast_inputs
from ._checks import same_device_dtype
from ._registry import (  # noqa: F401  (re-exported: the registry's public names)
    _BACKENDS,
    _UNAVAILABLE,
    PRIORITY,
    Backend,
    BackendError,
    BackendStatus,
    mark_unavailable,
    register_backend,
)


@dataclass(frozen=True)
class OptionalBackend:
    """An optional backend before it is imported: its module and what is known without importing it.

    The module defines ``make_backend(call) -> Backend``; ``call`` is this dispatcher's :func:`call`,
    for a backend that runs other backends (the "nodes" ops), so no backend module imports the dispatcher.
    """

    module: str
    priority: dict
    # implements(spec): whether the backend has the op (from the declaration alone).
    implements: Callable
    auto: bool = True
    # A refusal of a whole device type that needs no import (None: ask the loaded backend).
    why_not_device: Callable[[str], str | None] = lambda dev: None


def _interpreter_requested() -> bool:
    """Whether Triton runs (or will run, when first imported) its kernels in the CPU interpreter."""
    triton = sys.modules.get("triton")
    if triton is not None and hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _triton_device(device_type: str) -> str | None:
    if device_type == "cpu" and not _interpreter_requested():
        return ("Triton runs CPU tensors only in its interpreter, and TRITON_INTERPRET=1 was not set "
                "(set it before triton is first imported)")
    return None


OPTIONAL = {
    "cpp": OptionalBackend("fastmlr.ops._cpp", PRIORITY["cpp"], lambda s: "cpp" in s.impls),
    "triton": OptionalBackend("fastmlr.ops._triton", PRIORITY["triton"], lambda s: "triton" in s.impls,
                              why_not_device=_triton_device),
    "nodes": OptionalBackend("fastmlr.ops._nodes", PRIORITY["nodes"], lambda s: s.fused, auto=False),
}
_TRIED: set[str] = set()


def load(name: str) -> bool:
    """Import optional backend ``name`` once; one that cannot load is marked unavailable with its reason."""
    if name in _TRIED or name not in OPTIONAL:
        return True
    _TRIED.add(name)
    module = OPTIONAL[name].module
    try:
        register_backend(importlib.import_module(module).make_backend(call))
    except ModuleNotFoundError as e:
        mark_unavailable(name, "not built into this version of fastmlr" if e.name == module else f"import failed: {e}")
    except Exception as e:  # a broken optional backend must not break the package
        mark_unavailable(name, f"import failed: {type(e).__name__}: {e}")
    return True


# Under torch.compile / torch.export a loading runs eagerly while tracing and its result is a constant,
# so a first op call inside a compiled region does not break the graph on the imports. This attribute is
# the whole effect of torch.compiler.assume_constant_result, which would import torch._dynamo (and with it
# triton) here; tests/test_ops_dispatch.py checks it still works.
load._dynamo_marked_constant = True  # type: ignore[attr-defined]


def load_all() -> bool:
    for name in OPTIONAL:
        load(name)
    return True


load_all._dynamo_marked_constant = True  # type: ignore[attr-defined]


class _Choice:
    """The backend named by the innermost ``use_backend`` block (None: no block, or one that lifts the choice).

    A plain module-level object, not a ``contextvars.ContextVar``: Dynamo (torch 2.11) cannot trace
    ``ContextVar.get``, and every op in a compiled model would break the graph. Dynamo reads this
    attribute as a constant and guards on it, as torch's own ``sdpa_kernel`` state. The choice is
    therefore per process, not per thread or task: set it around the calls of one thread.
    """

    name: str | None = None


_CHOICE = _Choice()


def known_backends() -> list[str]:
    """Every backend name fastmlr knows, whether or not it runs here (loads nothing)."""
    return sorted(set(_BACKENDS) | set(_UNAVAILABLE) | set(OPTIONAL))


@contextlib.contextmanager
def use_backend(name: str | None):
    """Run every fastmlr op called inside the block on backend ``name``.

    Nothing is stored on models: the choice lives in process-wide state (restored when the block
    exits), between an op's own ``backend=`` argument (which wins) and ``$FASTMLR_BACKEND``. ``None``
    lifts an outer block's choice. An unknown name raises at once. torch.compile guards on the
    choice: a compiled model called in another block recompiles.
    """
    if name is not None and name not in known_backends():
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(known_backends())}")
    previous = _CHOICE.name
    _CHOICE.name = name
    try:
        yield
    finally:
        _CHOICE.name = previous


def current_backend() -> str | None:
    """The backend named by the innermost ``use_backend`` block, else ``$FASTMLR_BACKEND``, else None."""
    return _CHOICE.name or os.environ.get("FASTMLR_BACKEND") or None


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
    come first, fastest first; then the others by name. Loads every optional backend.
    """
    load_all()
    if op is not None:
        _spec.spec(op)  # ValueError naming the known ops
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
    load_all()
    lines = []
    for name in known_backends():
        if name in _UNAVAILABLE:
            lines.append(f"  {name}: unavailable ({_UNAVAILABLE[name]})")
        else:
            reason = _BACKENDS[name].refuse(op, dev, tensors)
            lines.append(f"  {name}: {reason or 'accepts this call'}")
    return "\n".join(lines)


def _skip_unloaded(name: str, op: str, dev: str) -> bool:
    """Whether optional backend ``name``, not loaded yet, certainly cannot run ``op`` on ``dev`` (no import needed)."""
    opt = OPTIONAL.get(name)
    if opt is None or name in _BACKENDS or name in _UNAVAILABLE:
        return False
    return (not opt.implements(_spec.spec(op))) or dev not in opt.priority or opt.why_not_device(dev) is not None


def _order(dev: str) -> tuple[str, ...]:
    """The backends chosen automatically on ``dev``, loaded or not, in order of preference."""
    prio = {n: b.priority[dev] for n, b in _BACKENDS.items() if b.auto and dev in b.priority}
    for n, opt in OPTIONAL.items():
        if n not in _BACKENDS and n not in _UNAVAILABLE and opt.auto and dev in opt.priority:
            prio[n] = opt.priority[dev]
    return tuple(sorted(prio, key=lambda n: prio[n]))


# Functions of names alone (they read the registry, the environment and the declarations): constants while
# tracing, as load(), so that Dynamo never guards on the registry before a loading changes it.
_skip_unloaded._dynamo_marked_constant = True  # type: ignore[attr-defined]
_order._dynamo_marked_constant = True  # type: ignore[attr-defined]


def select(op: str, tensors: tuple, backend: str | None = None, *, lift_choice: bool = False) -> Backend:
    """Return the backend that runs ``op`` on ``tensors``, loading only the backends it has to ask.

    ``lift_choice``: ignore ``use_backend`` blocks and ``$FASTMLR_BACKEND`` (the "nodes" ops' own
    implementation, which must not choose itself again).
    """
    dev = tensors[0].device.type
    requested = backend or (None if lift_choice else current_backend())
    if requested:
        load(requested)
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
    for name in _order(dev):
        if _skip_unloaded(name, op, dev):
            continue
        load(name)
        b = _BACKENDS.get(name)
        if b is not None and b.refuse(op, dev, tensors) is None:
            return b
    raise BackendError(f"no backend can run {op} on {dev} tensors:\n{_explain(op, dev, tensors)}")


def call(op: str, args: tuple, backend: str | None = None, *, same_dtype: tuple[str, ...] = (),
         lift_choice: bool = False):
    """Run ``op`` on ``args`` (its schema's arguments, checked by the caller): autocast rule, then selection.

    What an op's public function ends with (``fastmlr.ops.dispatch``), after checking its arguments.
    ``same_dtype``: the names of the leading arguments that must share device and floating dtype once
    autocast has cast them.
    """
    tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
    args, ctx = cast_inputs(op, args, tensors[0].device.type)
    if same_dtype:
        same_device_dtype(op, same_dtype, args[:len(same_dtype)])
    tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
    impl = select(op, tensors, backend, lift_choice=lift_choice).impls[op]
    with ctx:
        return impl(*args)
