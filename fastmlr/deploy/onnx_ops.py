"""The two ONNX op sets of an exported graph, and the fused set's node contract.

- ``standard`` (the default): only ops of TensorRT's ONNX parser set. The graph
  is traced through the ops' ``decomposed`` backend, whose chunks of categories
  bound the largest intermediate independently of the number of categories
  (fastmlr/ops/decomposed.py). Runs in any ONNX runtime.
- ``fused``: each inference op is one node of the ``fastmlr`` domain (version
  1), traced through the ``nodes`` backend (the extension's ``fastmlr::`` ops)
  and translated here. A runtime needs an implementation of the nodes: in
  Python, :mod:`fastmlr.runtime.onnx_fused` (onnxruntime-extensions calling
  the ``cpp`` kernels); in TensorRT, plugins.

The fused nodes (no attributes; float32 or float16, like their inputs; shapes
as in :mod:`fastmlr.ops`)::

    CarSpatialAttention(u[N,P,D], wc[C,D], s[D], b[]) -> sa[N,C,P]
    CarPool(f[N,D,P], sa[N,C,P], ca[N,C,D])           -> feat[N,C,D]
    SecondOrderPool(x[N,D,P])                         -> cov[N,D,D]
    MultiPerspectiveCosine(v[N,C,D], w[K,D])          -> s[N,C,C]
"""

from __future__ import annotations

OP_SETS = ("standard", "fused")
DEFAULT_OP_SET = "standard"
FUSED_DOMAIN = "fastmlr"
FUSED_VERSION = 1
# op type -> (fastmlr.ops function, input names, output name); the order of inputs is the contract.
FUSED_NODES = {
    "CarSpatialAttention": ("car_spatial_attention", ("u", "wc", "s", "b"), "sa"),
    "CarPool": ("car_pool", ("f", "sa", "ca"), "feat"),
    "SecondOrderPool": ("second_order_pool", ("x",), "cov"),
    "MultiPerspectiveCosine": ("multi_perspective_cosine", ("v", "w"), "s"),
}
# The fastmlr.ops backend each op set is traced through.
TRACE_BACKEND = {"standard": "decomposed", "fused": "nodes"}


def check_op_set(name: str, flag: str = "--onnx-ops") -> str:
    if name not in OP_SETS:
        raise ValueError(f"{flag} must be one of {', '.join(OP_SETS)}, got {name!r}")
    return name


def trace_backend(op_set: str) -> str:
    """The backend to trace ``op_set`` through; refuses ``fused`` where the extension is missing, saying why."""
    from .. import ops

    backend = TRACE_BACKEND[check_op_set(op_set)]
    rows = {r.name: r for r in ops.backend_status("cpu")}
    if not rows[backend].runs:
        raise ValueError(f"--onnx-ops {op_set} traces through the {backend!r} ops backend, which cannot run here: "
                         f"{rows[backend].reason}; export with --onnx-ops standard")
    return backend


def translation_table() -> dict:
    """``torch.onnx.export(custom_translation_table=...)`` for the fused op set: fastmlr:: ops -> fastmlr-domain nodes."""
    import torch
    from onnxscript import values
    from onnxscript.onnx_types import FLOAT

    from onnxscript import opset18 as std

    register_schemas()
    dom = values.Opset(FUSED_DOMAIN, FUSED_VERSION)

    def car_spatial_attention(u: FLOAT, wc: FLOAT, s: FLOAT, b: FLOAT) -> FLOAT:
        return dom.CarSpatialAttention(u, wc, s, b)

    def car_pool(f: FLOAT, sa: FLOAT, ca: FLOAT):
        feat = dom.CarPool(f, sa, ca)
        # The C++ op also returns the argmax index its backward uses; inference graphs never read it,
        # and the exporter drops the node below as unused.
        return feat, std.Cast(feat, to=7)  # 7: INT64

    def second_order_pool(x: FLOAT) -> FLOAT:
        return dom.SecondOrderPool(x)

    def multi_perspective_cosine(v: FLOAT, w: FLOAT) -> FLOAT:
        return dom.MultiPerspectiveCosine(v, w)

    f = torch.ops.fastmlr
    return {
        f.car_spatial_attention.default: car_spatial_attention,
        f.car_pool.default: car_pool,
        f.second_order_pool.default: second_order_pool,
        f.multi_perspective_cosine.default: multi_perspective_cosine,
    }


def register_schemas() -> None:
    """Declare the fused nodes to onnx (once per process), so onnxscript can emit them and the checker knows them.

    Type inference follows the schema (the output's type is the inputs'); the exporter
    records every output's shape in the graph's value_info.
    """
    import onnx
    from onnx.defs import OpSchema

    for op_type, (fn, inputs, output) in FUSED_NODES.items():
        if onnx.defs.has(op_type, FUSED_DOMAIN):
            continue
        schema = OpSchema(
            op_type, FUSED_DOMAIN, FUSED_VERSION, doc=f"fastmlr.ops.{fn}",
            inputs=[OpSchema.FormalParameter(name, "T") for name in inputs],
            outputs=[OpSchema.FormalParameter(output, "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16, like the inputs")],
        )
        onnx.defs.register_schema(schema)


def fused_nodes(model_proto) -> list:
    """The graph's nodes of the fastmlr domain (top level; the exporter inlines functions)."""
    return [n for n in model_proto.graph.node if n.domain == FUSED_DOMAIN]


def check_fused_nodes(model_proto) -> None:
    """Every fastmlr-domain node is one of :data:`FUSED_NODES` with its number of inputs and one output."""
    for n in fused_nodes(model_proto):
        if n.op_type not in FUSED_NODES:
            raise ValueError(f"the fused graph has an unexpected {FUSED_DOMAIN} node {n.op_type!r} ({n.name})")
        _, inputs, _ = FUSED_NODES[n.op_type]
        if len(n.input) != len(inputs) or len(n.output) != 1 or len(n.attribute):
            raise ValueError(f"{FUSED_DOMAIN}::{n.op_type} node {n.name}: expected inputs {inputs}, one output and "
                             f"no attributes, got {len(n.input)} inputs, {len(n.output)} outputs")


__all__ = ["OP_SETS", "DEFAULT_OP_SET", "FUSED_DOMAIN", "FUSED_VERSION", "FUSED_NODES", "TRACE_BACKEND",
           "check_op_set", "trace_backend", "translation_table", "register_schemas", "fused_nodes", "check_fused_nodes"]
