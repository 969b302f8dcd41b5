"""ONNX export (fp32, and fp16 with float32 I/O) and its checks: the full checker, TensorRT's op set, ORT vs PyTorch."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..artifact.contract import INPUT_NAME, OUTPUT_NAMES, make_sidecar, write_sidecar
from ..files import atomic_write_bytes
from .graph import InferenceGraph, batch_dim, check_batch_range, example_images, export_mode, quiet
from .onnx_ops import (
    DEFAULT_OP_SET,
    FUSED_DOMAIN,
    check_fused_nodes,
    check_op_set,
    fused_node_types,
    trace_backend,
    translation_table,
)
from .verify import FP16_MAP_POINTS, TOLERANCE, fp32_against_float64, max_abs_diff, torch_probs, within_fp32

DEFAULT_OPSET = 18

# ONNX operators TensorRT's ONNX parser supports, from the "Operator Support Matrix" of
# onnx/onnx-tensorrt docs/operators.md (the parser shipped with TensorRT 10.x; the TensorRT
# developer guide links to it). Only operators marked supported there, without a restriction
# that an exported model could trip over, are listed; anything else fails the export check.
TRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish
Identity If InstanceNormalization IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LRN
LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize Round Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze
Where Xor
""".split())


def _onnx_proto(model: nn.Module, image_size: int, fp16: bool, min_batch: int, opt_batch: int, max_batch: int,
                opset: int, onnx_ops: str = DEFAULT_OP_SET):
    check_batch_range(min_batch, opt_batch, max_batch)
    if int(opset) < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    backend = trace_backend(onnx_ops)
    table = translation_table() if onnx_ops == "fused" else None
    x = example_images(image_size, max(2, opt_batch))
    with export_mode(model, backend=backend), torch.no_grad(), quiet():
        graph = InferenceGraph(model, fp16=fp16).eval()
        prog = torch.onnx.export(
            graph, (x,), dynamo=True, opset_version=int(opset), input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_shapes={INPUT_NAME: {0: batch_dim(min_batch, max_batch)}},
            verbose=False, custom_translation_table=table,
        )
    proto = prog.model_proto
    if onnx_ops == "fused":
        check_fused_nodes(proto)
    # Name the batch dimension the same everywhere, so runtimes (and Triton) see one symbolic dim.
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "batch"
    return proto


def export_onnx(
    model: nn.Module,
    path: str,
    image_size: int,
    *,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 16,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    sidecar: dict | None = None,
    onnx_ops: str = DEFAULT_OP_SET,
) -> str:
    """Export ``model`` to an ONNX file at ``path`` with a dynamic batch; returns ``path``.

    Input ``images`` float32 [N, 3, S, S]; outputs ``logits`` and ``probs``
    float32 [N, C]. ``fp16``: half-precision graph, float32 I/O (see
    :class:`~fastmlr.deploy.graph.InferenceGraph`). ``onnx_ops``: ``standard``
    (TensorRT's ONNX op set, memory bounded in the number of categories) or
    ``fused`` (fastmlr-domain nodes; :mod:`fastmlr.deploy.onnx_ops`), recorded
    in the sidecar as ``onnx_ops``. Written atomically with its sidecar
    ``path.json`` (``sidecar`` defaults to ``make_sidecar`` of the model).
    """
    import onnx

    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    proto = _onnx_proto(model, image_size, fp16, min_batch, opt_batch, max_batch, opset, onnx_ops)
    data = proto.SerializeToString()
    if len(data) > 2**31 - 1:  # protobuf's limit; larger graphs need external data, which a sidecar can't hash
        raise ValueError(f"the ONNX graph is {len(data)} bytes, beyond protobuf's 2 GiB; export a smaller model")
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    atomic_write_bytes(path, lambda fh: fh.write(data), publish=True)
    write_sidecar(
        path, side, artifact={"format": "onnx"}, precision="fp16" if fp16 else "fp32", opset=int(opset),
        batch={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_ops=onnx_ops,
    )
    return path


def export_onnx_fp16(
    model: nn.Module,
    path: str,
    image_size: int,
    *,
    images=None,
    budget: float = TOLERANCE["fp16"],
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 16,
    opset: int = DEFAULT_OPSET,
    sidecar: dict | None = None,
    onnx_ops: str = DEFAULT_OP_SET,
) -> dict:
    """The fp16 graph that meets its own budget: fp16 everywhere the verification images allow.

    Plain fp16 is not accurate enough for every network (PyTorch's own half forward
    of a trained MobileNetV2 SRDL is 3e-2 off fp32), so the fp32 graph is exported
    and :func:`fastmlr.deploy.fp16.search_fp16` chooses which node groups stay fp32
    until ``max |p - p_torch|`` on ``images`` (Tensor[n, 3, S, S]; default: the
    built-in validation mosaics plus random images, as the export check uses) is
    within ``budget``. Writes ``path`` and its sidecar (with the search's summary
    under ``"fp16"``); returns the search's report (``ok`` False when no choice
    meets the budget; the graph is still written, and its check will say so).
    """
    from . import fp16 as mixed
    from .verify import real_images

    check_batch_range(min_batch, opt_batch, max_batch)
    if check_op_set(onnx_ops) != "standard":
        raise ValueError("--fp16 builds its graph in the standard op set only (the mixed-precision search runs it in "
                         "ONNX Runtime, whose fused-node PyOps are float32): drop --onnx-ops fused or --fp16")
    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    sets = {"random": example_images(image_size, min(3, max_batch))}
    if images is None:
        images, _ = real_images(image_size, model=model)
    if images is not None:
        sets["real"] = images[:max_batch]
    reference = {k: torch_probs(model, v).numpy() for k, v in sets.items()}
    half = InferenceGraph(model, fp16=True).eval()
    with export_mode(half), torch.no_grad():
        own = {k: half(v)[1].float().numpy() for k, v in sets.items()}
    proto = _onnx_proto(model, image_size, False, min_batch, opt_batch, max_batch, opset)
    rep = mixed.search_fp16(proto, path, {k: v.numpy() for k, v in sets.items()}, budget=budget,
                            reference=reference, compare={"PyTorch's own fp16 forward": own})
    write_sidecar(
        path, side, artifact={"format": "onnx"}, precision="fp16", opset=int(opset),
        batch={"min": min_batch, "opt": opt_batch, "max": max_batch}, fp16=mixed.sidecar_fields(rep),
        onnx_ops=onnx_ops,
    )
    return rep


def onnx_op_types(path_or_model) -> list[str]:
    """Sorted op types of an ONNX graph, subgraphs and local functions included, as ``domain::Op`` off the default domain."""
    import onnx

    m = onnx.load(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else path_or_model
    found: set[str] = set()

    def visit(nodes):
        for n in nodes:
            found.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g.node)
                for g in a.graphs:
                    visit(g.node)

    visit(m.graph.node)
    for f in m.functions:
        visit(f.node)
    return sorted(found)


def unsupported_by_tensorrt(path_or_model, plugins: bool = False) -> list[str]:
    """Op types of the graph that are not in :data:`TRT_ONNX_OPS` (custom domains never are).

    ``plugins``: the fused op set's fastmlr nodes count as supported (TensorRT runs them as plugins).
    """
    ok = TRT_ONNX_OPS | ({f"{FUSED_DOMAIN}::{op}" for op in fused_node_types()} if plugins else frozenset())
    return [op for op in onnx_op_types(path_or_model) if op not in ok]


def ort_session(path: str, providers=None):
    """An ONNX Runtime session that logs errors only (fp16 graphs make the CPU provider warn about every unfoldable node)."""
    import onnx
    import onnxruntime as ort

    from ..runtime.onnx_fused import fused_node_types, fused_session_input

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    model = onnx.load(path)
    # A fused graph's fastmlr nodes run as onnxruntime-extensions PyOps (ValueError without it).
    source = fused_session_input(path, model, opts) if fused_node_types(model) else path
    return ort.InferenceSession(source, sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def verify_onnx(path: str, model: nn.Module, image_size: int, *, fp16: bool = False, real=None,
                max_batch: int = 16) -> dict:
    """Check an exported ONNX file: full ``onnx.checker``, TensorRT op support, ORT vs PyTorch probabilities.

    ``real``: Tensor[n, 3, S, S] of real images (None: random only). Returns a
    report dict with ``ok`` and the numbers; never raises on a mismatch.
    """
    import onnx

    rep = {"artifact": path, "kind": "onnx fp16" if fp16 else "onnx fp32", "tolerance": TOLERANCE["fp16" if fp16 else "fp32"]}
    try:
        onnx.checker.check_model(path, full_check=True)
        rep["checker"] = "passed"
    except Exception as e:  # onnx raises ValidationError and friends
        rep["checker"] = f"FAILED: {e}"
    g = onnx.load(path)
    rep["opset"] = max((o.version for o in g.opset_import if o.domain in ("", "ai.onnx")), default=None)
    rep["ops"] = onnx_op_types(g)
    fused = any(n.domain == FUSED_DOMAIN for n in g.graph.node)
    rep["onnx_ops"] = "fused" if fused else "standard"
    rep["not_in_tensorrt"] = unsupported_by_tensorrt(g, plugins=fused)
    try:
        sess = ort_session(path)
    except ValueError as e:  # a fused graph without onnxruntime-extensions
        rep.update(ort=str(e), max_abs_diff={}, ok=False)
        return rep
    diffs, past = {}, {}
    sets = {"random": example_images(image_size, min(3, max_batch))}
    if real is not None:
        sets["real"] = real[:max_batch]
    own = {}
    with export_mode(model):
        torch_half = InferenceGraph(model, fp16=True) if fp16 else None
        for name, x in sets.items():
            logits, probs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
            ref = torch_probs(model, x)
            diffs[name] = max_abs_diff(probs, ref)
            if not fp16 and diffs[name] > rep["tolerance"]:
                past[name] = fp32_against_float64(model, x, probs, ref, rep["tolerance"])
            if torch_half is not None:
                # PyTorch's own fp16 error on the same images: what fp16 costs this network, whatever the runtime.
                with torch.no_grad():
                    own[name] = max_abs_diff(torch_half(x)[1].numpy(), ref)
    rep["max_abs_diff"] = diffs
    if own:
        rep["torch_fp16_max_abs_diff"] = own
    if past:
        rep["against_float64"] = past
    rep["ok"] = (rep["checker"] == "passed" and not rep["not_in_tensorrt"]
                 and rep["opset"] is not None and rep["opset"] >= 17
                 and all(within_fp32(rep, k) for k in diffs))
    return rep


def fp16_map_check(model: nn.Module, onnx_fp32: str, onnx_fp16: str, image_size: int, num_images: int = 200,
                   batch_size: int = 16, seed: int = 1) -> dict:
    """mAP of the fp32 and fp16 ONNX graphs (and PyTorch) on the built-in validation mosaics.

    ``seed=1`` is the validation split ``fastmlr.train`` uses with its default
    seed. Returns {"mAP": {"torch", "onnx fp32", "onnx fp16"} in points,
    "fp16_minus_fp32" points, "ok": within ``FP16_MAP_POINTS``}.
    """
    from ..data import FASHION_CLASSES, FashionMosaics
    from ..metrics import multilabel_metrics

    names = list(getattr(model, "class_names", None) or [])
    if names and names != list(FASHION_CLASSES):
        raise ValueError(
            f"--validate-mosaics: the model's classes {names[:3]}... are not the mosaics' {FASHION_CLASSES[:3]}..."
        )
    if model.num_classes != len(FASHION_CLASSES):
        raise ValueError(f"--validate-mosaics needs a {len(FASHION_CLASSES)}-class model, got {model.num_classes}")
    ds = FashionMosaics("val", num_images=num_images, image_size=image_size, seed=seed)
    sessions = {"onnx fp32": ort_session(onnx_fp32), "onnx fp16": ort_session(onnx_fp16)}
    scores = {k: [] for k in ("torch", *sessions)}
    targets = []
    for start in range(0, num_images, batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, num_images))]
        x = torch.stack([it[0] for it in items])
        targets.append(torch.stack([it[1] for it in items]))
        scores["torch"].append(torch_probs(model, x))
        for k, s in sessions.items():
            scores[k].append(torch.from_numpy(s.run([OUTPUT_NAMES[1]], {INPUT_NAME: x.numpy()})[0]))
    t = torch.cat(targets)
    maps = {k: 100 * float(multilabel_metrics(torch.cat(v), t)["mAP"]) for k, v in scores.items()}
    delta = maps["onnx fp16"] - maps["onnx fp32"]
    return {"images": num_images, "mAP": maps, "fp16_minus_fp32": delta, "ok": abs(delta) <= FP16_MAP_POINTS}


__all__ = ["DEFAULT_OPSET", "TRT_ONNX_OPS", "export_onnx", "onnx_op_types", "unsupported_by_tensorrt", "ort_session",
           "verify_onnx", "fp16_map_check", "export_onnx_fp16"]
