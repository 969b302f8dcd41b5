"""The "nodes" backend: every fused op as one torch custom op, so traced graphs keep it whole.

Exporters that want the fused ops as single nodes (the ONNX ``fused`` op set:
fastmlr/deploy/onnx_ops.py) trace inside ``use_backend("nodes")``. For every
op whose declaration has an ONNX node (``OpSpec.onnx``), this module defines
the torch custom op ``fastmlr_nodes::<op>`` with the op's schema; its
implementation is the ordinary selection with any ``use_backend`` choice lifted
(the fastest backend that runs the call: the C++ kernels on the CPU, Triton on
CUDA, the reference elsewhere), its fake kernel gives the declared output shape,
and its gradient goes through the reference. It runs through the dispatcher's
``call``, handed over when the dispatcher loads this module (neither the public
functions of fastmlr.ops nor an import of the dispatcher), and names no op. Object erasing is
training-only: not here.
"""

from __future__ import annotations

import torch

from . import opspec as _spec
from ._registry import PRIORITY, Backend

NAMESPACE = "fastmlr_nodes"
_LIB = torch.library.Library(NAMESPACE, "DEF")


def _vjp_through_reference(ref_fn):
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        ins = [t.detach().requires_grad_() for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = ref_fn(*ins)
        return tuple(torch.autograd.grad(out, ins, grad))

    return setup, backward


def _define(op: _spec.OpSpec, call):
    """Define ``fastmlr_nodes::<op>`` (once; ``call`` is the dispatcher's) and return the callable that runs it."""
    name = op.name
    if not hasattr(getattr(torch.ops, NAMESPACE), name):
        _LIB.define(op.schema)

        def impl(*args, _op=name):
            return call(_op, args, lift_choice=True).contiguous()

        def fake(*args, _op=op):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            return tensors[0].new_empty(_op.output_shape([tuple(t.shape) for t in tensors]))

        _LIB.impl(name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_LIB)
        setup, backward = _vjp_through_reference(op.reference)
        torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup, lib=_LIB)
    overload = getattr(getattr(torch.ops, NAMESPACE), name).default
    return lambda *args: overload(*args)


def node_op(op: _spec.OpSpec):
    """The ``torch.ops.fastmlr_nodes`` overload of a fused op (what the ONNX translation table maps);
    defined when the dispatcher loads this backend (``use_backend("nodes")``, :func:`fastmlr.ops.backend_status`)."""
    overload = getattr(getattr(torch.ops, NAMESPACE), op.name, None)
    if overload is None:
        raise RuntimeError(f"{NAMESPACE}::{op.name} is not defined: the 'nodes' backend is not loaded")
    return overload.default


def make_backend(call) -> Backend:
    """The backend the dispatcher registers when it loads this module; ``call`` runs the ordinary selection."""
    return Backend(name="nodes", priority=dict(PRIORITY["nodes"]), auto=False,
                   derive=lambda op: _define(op, call) if op.fused else None)
