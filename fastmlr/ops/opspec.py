"""The op as the unit: one declaration per op, read by every backend, exporter and runtime.

An op of fastmlr is declared once, as an :class:`OpSpec`, in the module of
fastmlr/ops named after it (``fastmlr/ops/car.py`` declares SRDL's two
category-aware representation ops). The declaration says everything
that is true of the op whoever runs it:

- what it computes: ``schema`` (a ``torch.library`` schema string), the
  ``reference`` implementation every backend is held to, ``output_shape``;
- how it behaves under ``torch.autocast`` (``autocast``: "lower", "fp32" or
  "promote", fastmlr/ops/_autocast.py);
- its ``decomposition`` into standard ops (the portable ONNX op set);
- its contracts with the deployment targets: the fused ONNX node
  (:class:`OnnxNode`) and the TensorRT plugin (:class:`TrtPlugin`);
- the implementations other backends bring (``impls``: backend name ->
  :class:`Impl`, each loaded on first use, so choosing a backend imports only
  what it runs);
- example inputs, small (tests) and at the paper's size (benchmarks, GPU checks).

Readers iterate over :func:`specs` and name no op: the dispatcher and autocast
(fastmlr/ops/_dispatch.py, _autocast.py), the ONNX exporter
(fastmlr/deploy/onnx_ops.py), the TensorRT plugins (fastmlr/deploy/trt_plugins.py),
the fused ONNX runner (fastmlr/runtime/onnx_fused.py) and AOTInductor.
:func:`declare` adds an op (built-in or a user's) to the registry; the public
function (``fastmlr.ops.<name>``) is the ``function`` of its spec.

This module imports torch and fastmlr/constants.py (which imports nothing):
ops and deployment code read it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import constants

# The domain and version of the fused ONNX nodes (ONNX graphs, TensorRT plugin namespace): fastmlr/constants.py,
# which the runners read without importing fastmlr.ops.
FUSED_DOMAIN = constants.FUSED_DOMAIN
FUSED_VERSION = constants.FUSED_VERSION
# The numbers the kernels and the ops' definitions share live in fastmlr/constants.py, which imports
# nothing (so fastmlr.kernels never imports fastmlr.ops): the cosine's norm clamp, the erasing boxes' flatness.
COSINE_EPS = constants.COSINE_EPS
FLAT_EPS = constants.FLAT_EPS

AUTOCAST_KINDS = ("lower", "fp32", "promote")
SIZES = ("small", "paper")

Shape = Sequence[Any]  # a tensor's shape: ints, or a deployment target's symbolic size expressions


@dataclass(frozen=True)
class OnnxNode:
    """The fused ONNX node of an op: one node of ``domain`` (version ``version``) named ``op_type``.

    ``inputs`` name the node's inputs in order (the order is the contract and is
    the op's tensor arguments' order); the node has one output, named
    ``output``, whose shape is the spec's :attr:`OpSpec.output_shape` and whose
    type is the inputs' (one of ``types``). ``attributes`` are the node's
    attributes (name -> value), empty for every built-in op.
    """

    op_type: str
    inputs: tuple[str, ...]
    output: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    domain: str = FUSED_DOMAIN
    version: int = FUSED_VERSION
    types: tuple[str, ...] = ("tensor(float)", "tensor(float16)")


@dataclass(frozen=True)
class TrtPlugin:
    """The TensorRT plugin contract of an op (an ahead-of-time Triton kernel per fused ONNX node).

    - ``kernel``: the entry's name in :mod:`fastmlr.kernels.trt_entry`, which takes
      ``(input pointers..., integer scalars..., output pointer)``;
    - ``ranks``: each input's rank (the plugin checks them);
    - ``scalars(shapes)``: the kernel's integer arguments, in its order, from the
      inputs' shapes (ints or TensorRT shape expressions);
    - ``grid(shapes, blocks, cdiv)``: the launch grid (x, y, z); ``cdiv`` is ceil
      division for the shape type;
    - ``config(arch)``: (block sizes, num_warps) for compute capability ``arch``;
    - ``constants``: further compile-time constants of the entry (e.g. the
      cosine's EPS), besides the block sizes and the accumulator type.
    """

    kernel: str
    ranks: tuple[int, ...]
    scalars: Callable[[Sequence[Shape]], list]
    grid: Callable[[Sequence[Shape], dict, Callable], tuple]
    config: Callable[[int], tuple[dict, int]]
    constants: Mapping[str, Any] = field(default_factory=dict)


def _no_refusal(device_type: str, tensors: tuple) -> str | None:
    return None


@dataclass(frozen=True)
class Impl:
    """One backend's implementation of one op.

    ``load()`` returns the callable (same arguments as the reference); it is
    called the first time the backend runs the op, so its imports (fastmlr._C,
    triton) happen then and only for the backend chosen. ``why_not(device_type,
    tensors)`` returns None when this implementation accepts the call, else the
    reason (op-specific limits, e.g. a largest map size); ``dtypes`` (device
    type -> accepted dtypes of the first input), when given, is checked first.
    """

    load: Callable[[], Callable]
    why_not: Callable[[str, tuple], str | None] = _no_refusal
    dtypes: Mapping[str, tuple] | None = None


@dataclass(frozen=True)
class OpSpec:
    """Everything fastmlr knows about one op (see the module docstring).

    Fields:
        name: the op's name, also its ``fastmlr.ops`` function and ``torch.ops`` name.
        schema: the op's ``torch.library`` schema, e.g.
            ``"pool(Tensor f, Tensor sa, Tensor ca) -> Tensor"`` (tensors first,
            then scalars with their defaults; one output). The extension's own op
            may return more (an argmax index its backward reads); its ``Impl`` adapts.
        reference: plain-PyTorch definition every backend is held to (differentiable
            where the op is); takes the schema's arguments in order.
        autocast: "lower", "fp32" or "promote" (fastmlr/ops/_autocast.py).
        output_shape: ``output_shape(shapes)`` -> the output's shape from the tensor
            inputs' shapes; works on ints and on symbolic sizes (ONNX, TensorRT).
        function: the public entry (checks arguments, applies autocast, dispatches);
            accepts ``backend=``.
        make_examples: ``make_examples(size, generator)`` -> the op's positional arguments
            (CPU, float32 floats, drawn from the CPU ``generator``); use :meth:`example_inputs`.
        decomposition: the same function in chunks of standard ops (the
            "decomposed" backend, the portable ONNX op set), or None (not exported).
        onnx: the fused ONNX node, or None when the fused op sets do not carry the op.
        trt: the TensorRT plugin, or None.
        impls: backend name -> :class:`Impl` (the "reference" and "decomposed"
            backends need none: they run ``reference`` and ``decomposition``).
        differentiable: whether the output has a gradient (integer boxes do not).
        doc: one line for listings.
    """

    name: str
    schema: str
    reference: Callable
    autocast: str
    output_shape: Callable[[Sequence[Shape]], tuple]
    function: Callable
    make_examples: Callable[..., tuple]
    decomposition: Callable | None = None
    onnx: OnnxNode | None = None
    trt: TrtPlugin | None = None
    impls: Mapping[str, Impl] = field(default_factory=dict)
    differentiable: bool = True
    doc: str = ""

    def __post_init__(self):
        if self.autocast not in AUTOCAST_KINDS:
            raise ValueError(f"op {self.name}: autocast must be one of {', '.join(AUTOCAST_KINDS)}, "
                             f"got {self.autocast!r}")
        if not self.schema.startswith(self.name + "("):
            raise ValueError(f"op {self.name}: the schema must start with '{self.name}(', got {self.schema!r}")
        if self.trt is not None and self.onnx is None:
            raise ValueError(f"op {self.name}: a TensorRT plugin implements a fused ONNX node; declare onnx too")

    @property
    def fused(self) -> bool:
        """Whether the fused ONNX op set (and with it the TensorRT plugins, the fused runner) carries the op."""
        return self.onnx is not None

    @property
    def qualified_name(self) -> str:
        """``fastmlr::name``: the op's name in the extension's torch.library namespace."""
        return f"{FUSED_DOMAIN}::{self.name}"

    def example_inputs(self, device="cpu", dtype: torch.dtype = torch.float32, size: str = "small",
                       seed: int = 0) -> tuple:
        """The op's positional arguments, deterministic for ``seed``: tensors on ``device``, floating ones in
        ``dtype`` (integer ones, such as boxes, int64), then any scalars the schema declares.

        ``size="small"``: a few elements per dimension, uneven, for tests.
        ``size="paper"``: the shapes the op runs at in its paper's setting (448 px
        images, ResNet-101's 14 x 14 x 2048 last map): for CAR N=16, C=80, P=14x14,
        D=2048; OE the top K=3 maps of 14 x 14; AAMN's second-order pooling of the
        reduced map, r=64; MMDSR's cosine of C=80 features of d=512, K=4 perspectives.
        """
        if size not in SIZES:
            raise ValueError(f"op {self.name}: size must be one of {', '.join(SIZES)}, got {size!r}")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        args = self.make_examples(size, gen)
        return tuple(a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)
                     if isinstance(a, torch.Tensor) else a for a in args)


_SPECS: dict[str, OpSpec] = {}
_LISTENERS: list[Callable[[OpSpec], None]] = []
_WITHDRAW_LISTENERS: list[Callable[[str], None]] = []


def declare(op: OpSpec) -> OpSpec:
    """Add ``op`` to the registry (in declaration order) and tell the loaded backends; returns ``op``.

    Declaring a name twice replaces the first declaration (re-running a module).
    """
    _SPECS[op.name] = op
    for listener in list(_LISTENERS):
        listener(op)
    return op


def withdraw(name: str) -> None:
    """Remove op ``name`` from the registry (a test's or a plugin's op); the backends forget it too."""
    _SPECS.pop(name, None)
    for listener in list(_WITHDRAW_LISTENERS):
        listener(name)


def on_declare(listener: Callable[[OpSpec], None], on_withdraw: Callable[[str], None] | None = None) -> None:
    """Call ``listener(spec)`` for every op declared from now on, ``on_withdraw(name)`` for every op withdrawn
    (the backend registry's hooks)."""
    _LISTENERS.append(listener)
    if on_withdraw is not None:
        _WITHDRAW_LISTENERS.append(on_withdraw)


def specs() -> tuple[OpSpec, ...]:
    """Every declared op, in declaration order (importing :mod:`fastmlr.ops` declares the built-in ones)."""
    return tuple(_SPECS.values())


def spec(name: str) -> OpSpec:
    """The declaration of op ``name``; ValueError naming the known ops if there is none."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; known ops: {', '.join(_SPECS)}") from None


def fused_specs() -> tuple[OpSpec, ...]:
    """The ops the fused ONNX op set carries, in declaration order."""
    return tuple(s for s in _SPECS.values() if s.fused)


def by_onnx_type(op_type: str) -> OpSpec | None:
    """The op whose fused ONNX node is ``op_type`` (in :data:`FUSED_DOMAIN`), or None."""
    for s in _SPECS.values():
        if s.onnx is not None and s.onnx.op_type == op_type:
            return s
    return None


__all__ = ["FUSED_DOMAIN", "FUSED_VERSION", "COSINE_EPS", "FLAT_EPS", "AUTOCAST_KINDS", "SIZES", "OnnxNode",
           "TrtPlugin", "Impl", "OpSpec", "declare", "withdraw", "on_declare", "specs", "spec", "fused_specs",
           "by_onnx_type"]
