"""fp32 -> mixed fp16 ONNX graphs: the conversion that the fp16 search drives.

:func:`convert_fp16` rewrites an fp32 ONNX graph into fp16, except for the
nodes it is told to keep in fp32: float initializers are stored in the
precision of the nodes that read them, Cast nodes join fp32 and fp16 regions,
graph inputs and outputs stay float32 and a Sigmoid or Softmax that produces a
graph output always runs in fp32. Ops that only move or select values
(Reshape, Relu, MaxPool, ReduceMax, ...) take the precision of their input.
"""

from __future__ import annotations

import ast

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
FP16_MAX = 65504.0
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
# A Sigmoid/Softmax that writes a graph output is the op whose result a threshold reads: always fp32.
FINAL_FP32_OPS = frozenset({"Sigmoid", "Softmax"})
# Ops that move or select values and so round nothing in fp16: they take the precision of their first float input
# (no cast, no extra rounding) instead of being choices of their own.
FOLLOW_OPS = frozenset("""Reshape Unsqueeze Squeeze Transpose Flatten Identity Expand Slice Gather GatherElements
Concat Split Tile Relu MaxPool ReduceMax ReduceMin Clip Neg Abs Max Min""".split())
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


# -- graph analysis -------------------------------------------------------------------------------------------
def load_model(model):
    """A copy of an ONNX graph given as a path, bytes or a ModelProto -> onnx.ModelProto."""
    import onnx

    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    return onnx.load(str(model))


def _prepare(model):
    """A copy of the fp32 graph with local functions inlined and float Constant nodes turned into initializers."""
    import onnx
    from onnx import inliner

    m = load_model(model)
    if len(m.functions):
        m = inliner.inline_local_functions(m)
    for n in m.graph.node:
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ValueError(f"node {n.name!r} ({n.op_type}) has a subgraph; the fp16 conversion takes flat graphs")
    keep = []
    for n in m.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1 \
                and n.attribute[0].name == "value" and n.attribute[0].t.data_type == FLOAT:
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            m.graph.initializer.append(t)
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def _elem_types(m) -> dict:
    """Element type of every tensor of the graph, from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    types = {t.name: t.data_type for t in m.graph.initializer}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for n in m.graph.node:
        for o in n.output:
            if o and o not in types:
                raise ValueError(f"shape inference gave no type for {o!r} (output of {n.name!r}, {n.op_type})")
    return types


def _scopes(node) -> list[str]:
    for p in node.metadata_props:
        if p.key == _SCOPES_KEY:
            try:
                return [s for s in ast.literal_eval(p.value) if isinstance(s, str)]
            except (ValueError, SyntaxError):
                return []
    return []


def _group_of(node) -> str:
    """The node's group: its module scope cut at a backbone stage (``net.backbone.body.4``), a head layer
    (``net.f_ca``), or the node itself when it is a functional op of the model's forward or has no scope."""
    mods = [s for s in _scopes(node)[:-1] if s]  # the last scope names the aten op, not a module
    if len(mods) < 2:
        return node.name
    return mods[min(len(mods), 4) - 1]


def _is_backbone_conv(node) -> bool:
    if node.op_type not in CONV_OPS:
        return False
    scopes = _scopes(node)
    return not scopes or any(".backbone" in s or s.startswith("backbone") for s in scopes)


def _beyond_fp16(t) -> bool:
    from onnx import numpy_helper

    a = numpy_helper.to_array(t)
    return bool(a.size) and float(np.abs(a).max()) > FP16_MAX


class Fp16Graph:
    """An fp32 graph ready to be converted: its float nodes, their groups and the forced fp32 nodes.

    Prepared once (functions inlined, constants as initializers) and converted many times by
    :func:`convert_fp16` with different sets of fp32 nodes (the search of fastmlr/deploy/fp16.py).
    """

    def __init__(self, model):
        self.model = _prepare(model)
        self.types = _elem_types(self.model)
        g = self.model.graph
        self.outputs = {o.name for o in g.output}
        self.inits = {t.name: t for t in g.initializer}
        self.float_nodes = [n for n in g.node if any(self.types.get(o) == FLOAT for o in n.output if o)]
        self.forced = {}  # node name -> why it is always fp32
        for n in self.float_nodes:
            if n.op_type in FINAL_FP32_OPS and any(o in self.outputs for o in n.output):
                self.forced[n.name] = "writes a graph output: the probabilities a threshold reads"
            elif any(i in self.inits and self.inits[i].data_type == FLOAT and _beyond_fp16(self.inits[i])
                     for i in n.input):
                self.forced[n.name] = "an initializer beyond fp16's range"
        self.convs = [n.name for n in self.float_nodes if _is_backbone_conv(n)]
        self.groups: dict[str, list] = {}
        for n in self.float_nodes:
            if n.name not in self.forced and n.op_type not in FOLLOW_OPS:
                self.groups.setdefault(_group_of(n), []).append(n)
        names = [n.name for n in g.node]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError("every node of the graph needs a unique, non-empty name to be kept in fp32 by name")


# -- conversion -----------------------------------------------------------------------------------------------
def _convert(graph: Fp16Graph, keep_fp32: set):
    import onnx
    from onnx import helper, numpy_helper

    src = graph.model
    m = onnx.ModelProto()
    m.CopyFrom(src)
    g = m.graph
    del g.node[:]
    del g.value_info[:]
    del g.initializer[:]
    types = graph.types
    variants: dict[str, dict[int, str]] = {}  # tensor -> {elem type: name holding it}
    for vi in src.graph.input:
        variants[vi.name] = {types.get(vi.name, vi.type.tensor_type.elem_type): vi.name}
    inits = {}
    for t in src.graph.initializer:
        inits[t.name] = t
        variants[t.name] = {t.data_type: t.name}
    used_inits: set[str] = set()
    new_nodes = []

    def want(name: str, dtype: int) -> str:
        have = variants[name]
        if dtype in have:
            if name in inits and have[dtype] == name:
                used_inits.add(name)
            return have[dtype]
        alias = f"{name}__{'fp16' if dtype == FLOAT16 else 'fp32'}"
        if name in inits:
            arr = numpy_helper.to_array(inits[name]).astype(np.float16 if dtype == FLOAT16 else np.float32)
            g.initializer.append(numpy_helper.from_array(arr, alias))
        else:
            new_nodes.append(helper.make_node("Cast", [have.get(FLOAT, have.get(FLOAT16))], [alias], to=dtype,
                                              name=f"{alias}_cast"))
        have[dtype] = alias
        return alias

    for n in src.graph.node:
        out = onnx.NodeProto()
        out.CopyFrom(n)
        float_out = any(types.get(o) == FLOAT for o in n.output if o)
        float_in = [i for i in n.input if i and types.get(i) in (FLOAT, FLOAT16)]
        if float_out and (n.name in keep_fp32 or n.name in graph.forced):
            prec = FLOAT
        elif float_out and not (n.op_type in FOLLOW_OPS and float_in):
            prec = FLOAT16
        elif float_in:  # a FOLLOW op, or one making no floats (Shape, Greater, ...): its first float input as it is
            first = variants[float_in[0]]
            prec = FLOAT16 if FLOAT16 in first else FLOAT
        else:
            prec = None
        for k, i in enumerate(n.input):
            if not i:
                continue
            if prec is not None and types.get(i) == FLOAT:
                out.input[k] = want(i, prec)
            elif i in inits:
                used_inits.add(i)
        if prec == FLOAT16:
            for a in out.attribute:
                if a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == FLOAT:
                    a.i = FLOAT16
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        new_nodes.append(out)
        for k, o in enumerate(n.output):
            if not o:
                continue
            if types.get(o) != FLOAT:
                variants[o] = {types.get(o): o}
            elif prec == FLOAT16 and o in graph.outputs:
                out.output[k] = o + "__fp16"
                variants[o] = {FLOAT16: o + "__fp16"}
                new_nodes.append(helper.make_node("Cast", [o + "__fp16"], [o], to=FLOAT, name=f"{o}_to_fp32"))
                variants[o][FLOAT] = o
            else:
                variants[o] = {prec: o}
    for name in sorted(used_inits):
        g.initializer.append(inits[name])
    g.node.extend(new_nodes)
    return m


def convert_fp16(model, keep_fp32=()):
    """An fp16 copy of the fp32 ONNX graph ``model`` (path, bytes or ModelProto) -> onnx.ModelProto.

    ``keep_fp32``: node names that stay fp32 (a final Sigmoid/Softmax always does).
    Graph inputs and outputs stay float32. Raises ValueError on an unknown node name.
    """
    graph = model if isinstance(model, Fp16Graph) else Fp16Graph(model)
    keep = set(keep_fp32)
    unknown = keep - {n.name for n in graph.model.graph.node}
    if unknown:
        raise ValueError(f"keep_fp32 names nodes the graph does not have: {sorted(unknown)[:5]}")
    return _convert(graph, keep)


def precision_of(model) -> dict:
    """{node name: "fp16" | "fp32" | None} of a converted graph: the type of each node's first float output."""
    m = load_model(model)
    types = _elem_types(m)
    res = {}
    for n in m.graph.node:
        t = next((types.get(o) for o in n.output if o and types.get(o) in (FLOAT, FLOAT16)), None)
        res[n.name] = {FLOAT: "fp32", FLOAT16: "fp16"}.get(t)
    return res


# -- measurement ----------------------------------------------------------------------------------------------
