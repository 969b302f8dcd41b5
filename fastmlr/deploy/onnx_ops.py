"""The two ONNX op sets of an exported graph, and the fused set's node contract.

- ``standard`` (the default): only ops of TensorRT's ONNX parser set. The graph
  is traced through the ops' ``decomposed`` backend, whose chunks of categories
  bound the largest intermediate independently of the number of categories
  (fastmlr/ops/decomposed.py). Runs in any ONNX runtime.
- ``fused``: each fused op is one node of the ``fastmlr`` domain (version 1),
  traced through the ``nodes`` backend (one ``fastmlr_nodes::`` custom op per
  op) and translated here. A runtime needs an implementation of the nodes: in
  Python, :mod:`fastmlr.runtime.onnx_fused` (onnxruntime-extensions calling
  fastmlr's kernels); in TensorRT, plugins.

The fused nodes are the ops' declarations (``OpSpec.onnx``, fastmlr/ops/opspec.py):
op type, inputs in order, one output of the declared shape, float32 or float16 like
the inputs, and the declared attributes (none for the built-in ops). ``python -c
"from fastmlr import ops; [print(s.onnx) for s in ops.fused_specs()]"`` lists them.
This module names no op.
"""

from __future__ import annotations

import inspect

from ..ops import FUSED_DOMAIN, fused_specs
from ..ops.opspec import FUSED_VERSION, by_onnx_type

OP_SETS = ("standard", "fused")
DEFAULT_OP_SET = "standard"


def fused_node_types() -> tuple[str, ...]:
    """The op types of the fused nodes, in declaration order (e.g. for TensorRT's list of supported nodes)."""
    return tuple(s.onnx.op_type for s in fused_specs())


# The fastmlr.ops backend each op set is traced through.
TRACE_BACKEND = {"standard": "decomposed", "fused": "nodes"}


def check_op_set(name: str, flag: str = "--onnx-ops") -> str:
    if name not in OP_SETS:
        raise ValueError(f"{flag} must be one of {', '.join(OP_SETS)}, got {name!r}")
    return name


def trace_backend(op_set: str) -> str:
    """The backend to trace ``op_set`` through; refuses one whose backend cannot run here, saying why."""
    from .. import ops

    backend = TRACE_BACKEND[check_op_set(op_set)]
    rows = {r.name: r for r in ops.backend_status("cpu")}
    if not rows[backend].runs:
        raise ValueError(f"--onnx-ops {op_set} traces through the {backend!r} ops backend, which cannot run here: "
                         f"{rows[backend].reason}; export with --onnx-ops standard")
    return backend


def _translation(spec, dom, FLOAT):
    """The onnxscript function emitting ``spec``'s node: parameters named and typed as onnxscript reads them."""
    node = spec.onnx
    attrs = dict(node.attributes)

    def emit(*args):
        return getattr(dom, node.op_type)(*args, **attrs)

    P = inspect.Parameter
    emit.__signature__ = inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD, annotation=FLOAT) for n in node.inputs],
                                           return_annotation=FLOAT)
    emit.__annotations__ = {**{n: FLOAT for n in node.inputs}, "return": FLOAT}
    emit.__name__ = emit.__qualname__ = spec.name
    return emit


def translation_table() -> dict:
    """``torch.onnx.export(custom_translation_table=...)`` for the fused op set: each declared fused op's
    ``fastmlr_nodes::`` custom op (the "nodes" backend) -> its ``fastmlr``-domain node."""
    from onnxscript import values
    from onnxscript.onnx_types import FLOAT

    from ..ops._nodes import node_op

    trace_backend("fused")  # loads the "nodes" backend, which defines the custom ops mapped below
    register_schemas()
    table = {}
    for spec in fused_specs():
        dom = values.Opset(spec.onnx.domain, spec.onnx.version)
        table[node_op(spec)] = _translation(spec, dom, FLOAT)
    return table


def register_schemas() -> None:
    """Declare the fused nodes to onnx (once per process), so onnxscript can emit them and the checker knows them.

    Type inference follows the schema (the output's type is the inputs'); the exporter
    records every output's shape in the graph's value_info.
    """
    import onnx
    from onnx.defs import OpSchema

    for spec in fused_specs():
        node = spec.onnx
        if onnx.defs.has(node.op_type, node.domain):
            continue
        schema = OpSchema(
            node.op_type, node.domain, node.version, doc=f"fastmlr.ops.{spec.name}",
            inputs=[OpSchema.FormalParameter(name, "T") for name in node.inputs],
            outputs=[OpSchema.FormalParameter(node.output, "T")],
            type_constraints=[("T", list(node.types), "the inputs' type")],
        )
        onnx.defs.register_schema(schema)


def fused_nodes(model_proto) -> list:
    """The graph's nodes of the fastmlr domain (top level; the exporter inlines functions)."""
    return [n for n in model_proto.graph.node if n.domain == FUSED_DOMAIN]


def check_fused_nodes(model_proto) -> None:
    """Every fastmlr-domain node is a declared fused op's node, with its inputs, one output and its attributes."""
    for n in fused_nodes(model_proto):
        spec = by_onnx_type(n.op_type)
        if spec is None:
            raise ValueError(f"the fused graph has an unexpected {FUSED_DOMAIN} node {n.op_type!r} ({n.name})")
        node = spec.onnx
        attrs = {a.name for a in n.attribute}
        if len(n.input) != len(node.inputs) or len(n.output) != 1 or attrs != set(node.attributes):
            raise ValueError(f"{FUSED_DOMAIN}::{n.op_type} node {n.name}: expected inputs {node.inputs}, one output and "
                             f"attributes {sorted(node.attributes) or 'none'}, got {len(n.input)} inputs, "
                             f"{len(n.output)} outputs")


__all__ = ["OP_SETS", "DEFAULT_OP_SET", "FUSED_DOMAIN", "FUSED_VERSION", "fused_node_types", "TRACE_BACKEND",
           "check_op_set", "trace_backend", "translation_table", "register_schemas", "fused_nodes", "check_fused_nodes"]
