"""Mixed fp16 ONNX graphs that meet an error budget: which nodes stay fp32, found by measurement.

:func:`convert_fp16` rewrites an fp32 ONNX graph into fp16, except for the
nodes it is told to keep in fp32: float initializers are stored in the
precision of the nodes that read them, Cast nodes join fp32 and fp16 regions,
graph inputs and outputs stay float32 and a Sigmoid or Softmax that produces a
graph output always runs in fp32. Ops that only move or select values
(Reshape, Relu, MaxPool, ReduceMax, ...) take the precision of their input.

:func:`search_fp16` chooses those nodes. It groups the nodes by the module
scope torch.onnx records in each node's metadata (a backbone stage, a head
layer, or a single functional op of the model's own forward), measures on the
verification images the largest probability error each group causes when it
alone joins the mandatory fp16 convolutions, then moves the most sensitive
groups back to fp32 until the graph meets the budget and finally returns any
group whose return to fp16 keeps the budget. The backbone's convolutions stay
fp16; only when the budget cannot be met with them in fp16 does the search move
convolution groups too, and its report says so.

Errors are measured with ONNX Runtime's CPU provider, the runtime of the
export check. Where that provider has no fp16 kernel it computes the op in fp32
between casts, so its figures hold fp16 storage rounding at every node
boundary, not fp16 arithmetic inside an op.
"""

from __future__ import annotations

import ast
import time

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
def _load(model):
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

    m = _load(model)
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


class _Graph:
    """An fp32 graph ready to be converted: its float nodes, their groups and the forced fp32 nodes."""

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
def _convert(graph: _Graph, keep_fp32: set):
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
    graph = model if isinstance(model, _Graph) else _Graph(model)
    keep = set(keep_fp32)
    unknown = keep - {n.name for n in graph.model.graph.node}
    if unknown:
        raise ValueError(f"keep_fp32 names nodes the graph does not have: {sorted(unknown)[:5]}")
    return _convert(graph, keep)


def precision_of(model) -> dict:
    """{node name: "fp16" | "fp32" | None} of a converted graph: the type of each node's first float output."""
    m = _load(model)
    types = _elem_types(m)
    res = {}
    for n in m.graph.node:
        t = next((types.get(o) for o in n.output if o and types.get(o) in (FLOAT, FLOAT16)), None)
        res[n.name] = {FLOAT: "fp32", FLOAT16: "fp16"}.get(t)
    return res


# -- measurement ----------------------------------------------------------------------------------------------
def _session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # fp16 graphs make the CPU provider warn about every node it computes in fp32
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def run_probs(model, images: dict, output: str = "probs") -> dict:
    """{set name: probabilities} of an ONNX graph (path, bytes or ModelProto) on ONNX Runtime's CPU provider."""
    import onnx

    data = model if isinstance(model, (bytes, bytearray)) else \
        (model if isinstance(model, onnx.ModelProto) else _load(model)).SerializeToString()
    sess = _session(bytes(data))
    name = sess.get_inputs()[0].name
    return {k: sess.run([output], {name: np.ascontiguousarray(x, dtype=np.float32)})[0] for k, x in images.items()}


def max_error(probs: dict, reference: dict) -> dict:
    """{set name: max |p - p_ref|} and, under ``"max"``, the largest of them."""
    errs = {k: float(np.abs(np.asarray(p, np.float64) - np.asarray(reference[k], np.float64)).max())
            for k, p in probs.items()}
    errs["max"] = max(errs.values())
    return errs


def _as_sets(images) -> dict:
    if isinstance(images, dict):
        sets = {k: np.asarray(v, np.float32) for k, v in images.items()}
    else:
        sets = {"images": np.asarray(images, np.float32)}
    if not sets or any(v.ndim != 4 or len(v) == 0 for v in sets.values()):
        raise ValueError("images: expected one or more float32 arrays [n, 3, S, S] with n >= 1")
    return sets


# -- search ---------------------------------------------------------------------------------------------------
def search_fp16(onnx_fp32, out_path: str | None, images, *, budget: float = 1e-2, reference=None,
                margin: float = 0.9, output: str = "probs", compare: dict | None = None) -> dict:
    """Choose the fp32 nodes of an fp16 graph so that it meets ``budget`` on ``images``; write it to ``out_path``.

    ``onnx_fp32``: the fp32 graph (path, bytes or ModelProto). ``images``: an array
    [n, 3, S, S] or {set name: array}, the verification images. ``reference``:
    {set name: probabilities} to measure against (e.g. PyTorch fp32), default the
    fp32 graph on ONNX Runtime. The search aims at ``margin * budget`` so the
    check passes with room; ``ok`` says whether ``budget`` itself is met.
    ``compare``: {label: {set name: probabilities}} of other fp16 routes (PyTorch's
    half forward), measured against the same reference and reported beside.

    Returns the report: kept_fp32 (groups moved back, with the error each caused
    alone and the nodes), forced_fp32, error_all_fp16, error_conv_only,
    error_final (each {set: err, "max": err}), budget, target, images (count),
    conv_fp16_fraction, convs_in_fp32, ok, message, path, evaluations, seconds;
    with ``out_path=None`` nothing is written and ``model`` holds the graph.
    """
    t0 = time.perf_counter()
    graph = _Graph(onnx_fp32)
    sets = _as_sets(images)
    if reference is None:
        reference = run_probs(graph.model, sets, output)
    target = float(budget) * float(margin)
    evals = [0]

    def error_with(fp16_groups) -> dict:
        keep = {n.name for g, nodes in graph.groups.items() if g not in fp16_groups for n in nodes}
        evals[0] += 1
        return max_error(run_probs(_convert(graph, keep), sets, output), reference)

    def error_keep(keep_groups) -> dict:
        return error_with(set(graph.groups) - set(keep_groups))

    conv_groups = {g for g, nodes in graph.groups.items() if any(n.name in graph.convs for n in nodes)}
    # Groups with a backbone conv are split: the convs form a protected group, the rest stays a candidate.
    for g in sorted(conv_groups):
        nodes = graph.groups.pop(g)
        convs = [n for n in nodes if n.name in graph.convs]
        rest = [n for n in nodes if n.name not in graph.convs]
        graph.groups[f"{g} [conv]"] = convs
        if rest:
            graph.groups[g] = rest
    protected = {g for g in graph.groups if g.endswith(" [conv]")}
    candidates = [g for g in graph.groups if g not in protected]

    err_all = error_keep(())
    err_conv, sens = None, {}
    kept: list[str] = []
    convs_fp32: list[str] = []
    err = err_all
    if err["max"] > target:
        err_conv = error_with(protected)
        sens = {g: error_with(protected | {g})["max"] for g in candidates}
        if err_conv["max"] <= target:  # head and glue ops explain the excess: move the worst back first
            for g in sorted(candidates, key=lambda g: -sens[g]):
                kept.append(g)
                err = error_keep(kept)
                if err["max"] <= target:
                    break
        else:  # the fp16 convolutions alone are over the target: the most sensitive conv groups follow
            kept = list(candidates)
            for g in protected:
                sens[g] = error_with({g})["max"]
            for g in sorted(protected, key=lambda g: -sens[g]):
                kept.append(g)
                convs_fp32.append(g)
                err = error_keep(kept)
                if err["max"] <= target:
                    break
        if err["max"] <= target:
            # Return to fp16 what the target allows: the non-conv groups at once if it can, then group by group,
            # least sensitive first.
            rest = [g for g in kept if g in protected]
            if len(rest) < len(kept):
                e = error_keep(rest)
                if e["max"] <= target:
                    kept, err = rest, e
            for g in sorted(kept, key=lambda g: sens[g]):
                trial = [k for k in kept if k != g]
                e = error_keep(trial)
                if e["max"] <= target:
                    kept, err = trial, e
                    if g in convs_fp32:
                        convs_fp32.remove(g)
    keep_nodes = {n.name for g in kept for n in graph.groups[g]}
    final = _convert(graph, keep_nodes)
    err_final = max_error(run_probs(final, sets, output), reference)
    data = final.SerializeToString()
    if out_path:
        import onnx

        from ..files import atomic_write_bytes
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        atomic_write_bytes(out_path, lambda fh: fh.write(data), publish=True)
    n_conv = len(graph.convs)
    conv_fp32 = sum(1 for c in graph.convs if c in keep_nodes)
    ok = err_final["max"] <= budget
    if ok and not kept:
        msg = f"all fp16 meets the budget: {err_final['max']:.2e} <= {budget:.3g}"
    elif ok:
        msg = f"{len(kept)} group(s) kept in fp32 bring {err_all['max']:.2e} to {err_final['max']:.2e} <= {budget:.3g}"
    else:
        msg = (f"budget {budget:.3g} unreachable: {err_final['max']:.2e} at best, with {len(kept)} of "
               f"{len(graph.groups)} groups in fp32")
    if err_conv is not None and err_conv["max"] > target:
        msg += (f"; the fp16 convolutions alone give {err_conv['max']:.2e} > target {target:.2e}, so "
                f"{conv_fp32}/{n_conv} backbone convolutions stay fp32")
    rep = {
        "method": "sensitivity search over node groups (fastmlr.deploy.fp16)",
        "budget": float(budget), "target": target, "ok": ok, "message": msg,
        "images": int(sum(len(v) for v in sets.values())), "image_sets": {k: len(v) for k, v in sets.items()},
        "error_all_fp16": err_all, "error_conv_only": err_conv, "error_final": err_final,
        "kept_fp32": [{"group": g, "error_alone": sens[g], "ops": sorted({n.op_type for n in graph.groups[g]}),
                       "measured": "the group alone in fp16" if g in protected
                       else "the group in fp16 beside the fp16 convolutions",
                       "nodes": [n.name for n in graph.groups[g]]} for g in kept],
        "forced_fp32": dict(sorted(graph.forced.items())),
        "convs_in_fp32": convs_fp32,
        "conv_fp16_fraction": (n_conv - conv_fp32) / n_conv if n_conv else 1.0,
        "path": out_path, "evaluations": evals[0], "seconds": time.perf_counter() - t0,
    }
    if compare:
        rep["compare"] = {label: max_error({k: p[k] for k in sets}, reference) for label, p in compare.items()}
    if out_path is None:
        rep["model"] = final
    return rep


def format_report(rep: dict) -> list[str]:
    """Lines for the export log: the errors before and after, what stayed fp32 and why."""
    lines = [f"  fp16 search: {rep['message']} (target {rep['target']:.2e}, {rep['images']} images, "
             f"{rep['evaluations']} evaluations, {rep['seconds']:.1f} s)",
             f"    max |p - p_fp32|: all fp16 {rep['error_all_fp16']['max']:.2e}, "
             + (f"fp16 convolutions only {rep['error_conv_only']['max']:.2e}, " if rep["error_conv_only"] else "")
             + f"final {rep['error_final']['max']:.2e}"]
    for label, e in rep.get("compare", {}).items():
        lines.append(f"    for comparison, {label}: {e['max']:.2e}")
    lines.append(f"    backbone convolutions in fp16: {100 * rep['conv_fp16_fraction']:.0f}%; always fp32: "
                 + (", ".join(f"{k} ({v})" for k, v in rep["forced_fp32"].items()) or "none"))
    for k in rep["kept_fp32"]:
        lines.append(f"    kept fp32: {k['group']} ({'/'.join(k['ops'])}, {len(k['nodes'])} node(s)): "
                     f"{k['error_alone']:.2e} with {k['measured']}")
    return lines


def sidecar_fields(rep: dict) -> dict:
    """The search's summary for the fp16 artefact's sidecar (JSON-serialisable)."""
    return {"budget": rep["budget"], "error": rep["error_final"]["max"], "error_all_fp16": rep["error_all_fp16"]["max"],
            "images": rep["images"], "conv_fp16_fraction": rep["conv_fp16_fraction"],
            "kept_fp32": [{"group": k["group"], "error_alone": k["error_alone"], "nodes": k["nodes"]}
                          for k in rep["kept_fp32"]],
            "forced_fp32": rep["forced_fp32"], "method": rep["method"]}
