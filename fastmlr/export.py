"""python -m fastmlr.export: ONNX (fp32, fp16), TensorRT, AOTInductor and Triton artefacts of a model.

Every artefact ``X`` gets a JSON sidecar ``X.json`` (class names, input size,
mean/std, threshold, model config, batch range, versions and the artefact's
sha256) that :func:`fastmlr.runtime.load` checks before running it. After
writing each artefact the command checks it and prints a report: the ONNX
checker (full check), the graph's op types against TensorRT's ONNX parser,
and the largest probability difference from PyTorch on random and real
images.

The exported graph is the model's inference path: the fused ops run their
``reference`` implementation, which is plain PyTorch and so decomposes into
standard ONNX ops; object erasing is training-only and absent. The label
graph (SRDL steps 2-3) does not depend on the image, so it is computed once
in fp32 at export and stored as a constant ``Wc``.

Public API (used by ``fastmlr.bench`` and the demo): :func:`make_sidecar`,
:func:`export_onnx`, :func:`export_aoti`, :func:`build_trt_engine`
(from :mod:`fastmlr.export_trt`), :func:`verify_onnx`, :func:`verify_aoti`,
:func:`onnx_op_types`, :func:`fp16_map_check`, :func:`write_triton_repo`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import io
import os
import sys
import time
import types
import warnings

import torch
import torch.nn as nn

from . import __version__
from .checkpoint import CheckpointMismatch
from .files import atomic_write_bytes, atomic_write_json, file_sha256, publish_mode
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .export_trt import TRTUnavailable, build_trt_engine, gpu_available, tensorrt_version  # noqa: F401

SIDECAR_FORMAT = "fastmlr-artifact-v1"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
DEFAULT_OPSET = 18

# Tolerances of the export check: largest |p_onnx - p_torch| over all probabilities (the bounds).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
# fp16's mAP on the built-in validation set must stay within this many points of fp32's.
FP16_MAP_POINTS = 0.2

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


class ExportError(RuntimeError):
    """An artefact failed its check after being written (the report says which and by how much)."""


# -- sidecars -----------------------------------------------------------------------------------------
def _versions() -> dict:
    v = {"fastmlr": __version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    v["tensorrt"] = tensorrt_version()
    return v


def make_sidecar(model: nn.Module, image_size: int, class_names=None, threshold: float = 0.5) -> dict:
    """What a runner needs besides the graph: class names, preprocessing, threshold, model config, versions.

    ``class_names`` defaults to ``model.class_names`` (set by ``model_from_checkpoint``),
    else ``class_0 ... class_{C-1}``. The artefact-specific fields (format, file,
    sha256, precision, batch range) are added by the export functions.
    """
    num_classes = int(getattr(model, "num_classes"))
    names = list(class_names if class_names is not None else getattr(model, "class_names", None) or [])
    if not names:
        names = [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for a model with {num_classes} classes")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    return {
        "format": SIDECAR_FORMAT,
        "model": getattr(model, "model_name", type(model).__name__),
        "num_classes": num_classes,
        "config": dict(getattr(model, "config", {})),
        "class_names": names,
        "image_size": int(image_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "threshold": float(threshold),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "normalised": True},
        "outputs": {"logits": "float32 [N, C]", "probs": "float32 [N, C], sigmoid(logits)"},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sidecar_path(artifact: str) -> str:
    """The sidecar of ``artifact``: the same path with ``.json`` appended."""
    return os.fspath(artifact) + ".json"


def write_sidecar(artifact_path: str, sidecar: dict, **fields) -> dict:
    """Write the sidecar of ``artifact_path`` (atomically) with ``fields`` and the artefact's hash; returns it."""
    side = {**sidecar, **fields}
    side["artifact"] = {**fields.get("artifact", {}), "file": os.path.basename(artifact_path),
                        "sha256": file_sha256(artifact_path), "bytes": os.path.getsize(artifact_path)}
    side["versions"] = _versions()
    publish_mode(artifact_path)
    atomic_write_json(sidecar_path(artifact_path), side)
    publish_mode(sidecar_path(artifact_path))
    return side


# -- the graph that is exported -----------------------------------------------------------------------
def _set_backend(model: nn.Module, backend: str | None) -> dict:
    old = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "backend"):
            old[name] = mod.backend
            mod.backend = backend
    return old


@contextlib.contextmanager
def export_mode(model: nn.Module, backend: str = "reference"):
    """Eval mode with every ``backend`` attribute (SRDL's) set to ``backend``; both restored after."""
    was_training = model.training
    old = _set_backend(model, backend)
    model.eval()
    try:
        yield model
    finally:
        mods = dict(model.named_modules())
        for name, b in old.items():
            mods[name].backend = b
        model.train(was_training)


class InferenceGraph(nn.Module):
    """images (float32 Tensor[N, 3, S, S], normalised) -> (logits, probs), both float32 Tensor[N, C].

    ``fp16``: the network runs in half precision between a cast of the input
    and a cast of the logits; the sigmoid, the one op whose output the
    threshold reads, runs in fp32. Models with an input-independent label
    graph (``category_embeddings()``) get it folded into an fp32-computed constant.
    """

    def __init__(self, model: nn.Module, fp16: bool = False, backend: str | None = "reference"):
        super().__init__()
        net = copy.deepcopy(model).eval()
        _set_backend(net, backend)
        if callable(getattr(net, "category_embeddings", None)):
            with torch.no_grad():
                wc = net.category_embeddings().detach().float()
            net.register_buffer("folded_category_embeddings", wc, persistent=False)
            net.category_embeddings = types.MethodType(lambda self: self.folded_category_embeddings, net)
        self.fp16 = bool(fp16)
        self.net = net.half() if self.fp16 else net.float()

    def forward(self, images: torch.Tensor):
        x = images.half() if self.fp16 else images
        logits = self.net(x).float()
        return logits, torch.sigmoid(logits)


def _check_batch_range(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch, "
            f"got {min_batch}, {opt_batch}, {max_batch}"
        )


def _example(image_size: int, batch: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, image_size, image_size, generator=g, dtype=dtype)


def _batch_dim(min_batch: int, max_batch: int):
    # torch.export specialises sizes 0 and 1; a range starting at 1 is still symbolic with Dim's min=1.
    return torch.export.Dim("batch", min=max(1, min_batch), max=max(max_batch, 2))


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress chatter; errors still raise."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield


# -- ONNX ---------------------------------------------------------------------------------------------
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
) -> str:
    """Export ``model`` to an ONNX file at ``path`` with a dynamic batch; returns ``path``.

    Input ``images`` float32 [N, 3, S, S]; outputs ``logits`` and ``probs``
    float32 [N, C]. ``fp16``: half-precision graph, float32 I/O (see
    :class:`InferenceGraph`). Written atomically with its sidecar ``path.json``
    (``sidecar`` defaults to :func:`make_sidecar` of the model).
    """
    import onnx

    _check_batch_range(min_batch, opt_batch, max_batch)
    if int(opset) < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    graph = InferenceGraph(model, fp16=fp16).eval()
    x = _example(image_size, max(2, opt_batch))
    with torch.no_grad(), _quiet():
        prog = torch.onnx.export(
            graph, (x,), dynamo=True, opset_version=int(opset), input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_shapes={"images": {0: _batch_dim(min_batch, max_batch)}},
            verbose=False,
        )
    proto = prog.model_proto
    # Name the batch dimension the same everywhere, so runtimes (and Triton) see one symbolic dim.
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = "batch"
    data = proto.SerializeToString()
    if len(data) > 2**31 - 1:  # protobuf's limit; larger graphs need external data, which a sidecar can't hash
        raise ValueError(f"the ONNX graph is {len(data)} bytes, beyond protobuf's 2 GiB; export a smaller model")
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    atomic_write_bytes(path, lambda fh: fh.write(data))
    write_sidecar(
        path, side, artifact={"format": "onnx"}, precision="fp16" if fp16 else "fp32", opset=int(opset),
        batch={"min": min_batch, "opt": opt_batch, "max": max_batch},
    )
    return path


def onnx_op_types(path_or_model) -> list[str]:
    """Sorted op types of an ONNX graph, subgraphs and local functions included, as ``domain::Op`` off the default domain."""
    import onnx

    m = onnx.load(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else path_or_model
    ops: set[str] = set()

    def visit(nodes):
        for n in nodes:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g.node)
                for g in a.graphs:
                    visit(g.node)

    visit(m.graph.node)
    for f in m.functions:
        visit(f.node)
    return sorted(ops)


def unsupported_by_tensorrt(path_or_model) -> list[str]:
    """Op types of the graph that are not in :data:`TRT_ONNX_OPS` (custom domains always are)."""
    return [op for op in onnx_op_types(path_or_model) if op not in TRT_ONNX_OPS]


def _ort_session(path: str, providers=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: fp16 graphs make the CPU provider warn about every unfoldable node
    return ort.InferenceSession(path, sess_options=opts, providers=providers or ["CPUExecutionProvider"])


def real_images(image_size: int, n: int = 8, paths=None) -> tuple[torch.Tensor | None, str]:
    """Real images for the checks: ``paths`` if given, else the built-in validation mosaics.

    Returns (Tensor[n, 3, S, S] or None, a description or the reason there are none).
    """
    if paths:
        from .data import load_image

        return torch.stack([load_image(p, image_size)[0] for p in paths]), f"{len(paths)} image file(s)"
    try:
        from .data import FashionMosaics

        ds = FashionMosaics("val", num_images=n, image_size=image_size, seed=1)
        return torch.stack([ds[i][0] for i in range(n)]), f"{n} validation mosaics"
    except (OSError, FileNotFoundError, ValueError) as e:
        return None, f"no real images ({e}); pass --verify-images"


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a).float() - torch.as_tensor(b).float()).abs().max())


@torch.no_grad()
def _torch_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with export_mode(model):
        return torch.sigmoid(model(images).float())


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
    rep["not_in_tensorrt"] = [op for op in rep["ops"] if op not in TRT_ONNX_OPS]
    sess = _ort_session(path)
    diffs = {}
    sets = {"random": _example(image_size, min(3, max_batch))}
    if real is not None:
        sets["real"] = real[:max_batch]
    torch_half = InferenceGraph(model, fp16=True) if fp16 else None
    own = {}
    for name, x in sets.items():
        logits, probs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        ref = _torch_probs(model, x)
        diffs[name] = _max_diff(probs, ref)
        if torch_half is not None:
            # PyTorch's own fp16 error on the same images: what fp16 costs this network, whatever the runtime.
            with torch.no_grad():
                own[name] = _max_diff(torch_half(x)[1].numpy(), ref)
    rep["max_abs_diff"] = diffs
    if own:
        rep["torch_fp16_max_abs_diff"] = own
    rep["ok"] = (rep["checker"] == "passed" and not rep["not_in_tensorrt"]
                 and rep["opset"] is not None and rep["opset"] >= 17
                 and all(d <= rep["tolerance"] for d in diffs.values()))
    return rep


def fp16_map_check(model: nn.Module, onnx_fp32: str, onnx_fp16: str, image_size: int, num_images: int = 200,
                   batch_size: int = 16, seed: int = 1) -> dict:
    """mAP of the fp32 and fp16 ONNX graphs (and PyTorch) on the built-in validation mosaics.

    ``seed=1`` is the validation split ``fastmlr.train`` uses with its default
    seed. Returns {"mAP": {"torch", "onnx fp32", "onnx fp16"} in points,
    "fp16_minus_fp32" points, "ok": within :data:`FP16_MAP_POINTS`}.
    """
    from .data import FASHION_CLASSES, FashionMosaics
    from .metrics import multilabel_metrics

    names = list(getattr(model, "class_names", None) or [])
    if names and names != list(FASHION_CLASSES):
        raise ValueError(
            f"--validate-mosaics: the model's classes {names[:3]}... are not the mosaics' {FASHION_CLASSES[:3]}..."
        )
    if model.num_classes != len(FASHION_CLASSES):
        raise ValueError(f"--validate-mosaics needs a {len(FASHION_CLASSES)}-class model, got {model.num_classes}")
    ds = FashionMosaics("val", num_images=num_images, image_size=image_size, seed=seed)
    sessions = {"onnx fp32": _ort_session(onnx_fp32), "onnx fp16": _ort_session(onnx_fp16)}
    scores = {k: [] for k in ("torch", *sessions)}
    targets = []
    for start in range(0, num_images, batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, num_images))]
        x = torch.stack([it[0] for it in items])
        targets.append(torch.stack([it[1] for it in items]))
        scores["torch"].append(_torch_probs(model, x))
        for k, s in sessions.items():
            scores[k].append(torch.from_numpy(s.run(["probs"], {INPUT_NAME: x.numpy()})[0]))
    t = torch.cat(targets)
    maps = {k: 100 * float(multilabel_metrics(torch.cat(v), t)["mAP"]) for k, v in scores.items()}
    delta = maps["onnx fp16"] - maps["onnx fp32"]
    return {"images": num_images, "mAP": maps, "fp16_minus_fp32": delta, "ok": abs(delta) <= FP16_MAP_POINTS}


# -- AOTInductor --------------------------------------------------------------------------------------
def export_aoti(model: nn.Module, path: str, image_size: int, *, max_batch: int = 16, sidecar: dict | None = None,
                min_batch: int = 1, backend: str = "reference") -> str:
    """Compile ``model`` ahead of time with AOTInductor into a ``.pt2`` package at ``path``; returns ``path``.

    Same I/O as the ONNX graph (``images`` -> ``logits``, ``probs``), dynamic
    batch in [min_batch, max_batch]. Loadable from Python
    (``torch._inductor.aoti_load_package``, :func:`fastmlr.runtime.load`) and C++
    (``torch::inductor::AOTIModelPackageLoader``, export/cpp). ``backend``:
    the fused ops' implementation traced into the graph; "reference" needs only
    libtorch, "cpp" keeps ``fastmlr::`` custom ops that the C++ program must link.
    """
    from torch._inductor import aoti_compile_and_package

    _check_batch_range(min_batch, min_batch, max_batch)
    if not str(path).endswith(".pt2"):
        raise ValueError(f"--aoti: the package path must end in .pt2, got {path!r}")
    side = sidecar if sidecar is not None else make_sidecar(model, image_size)
    graph = InferenceGraph(model, fp16=False, backend=backend).eval()
    x = _example(image_size, 2)
    with torch.no_grad(), _quiet():
        ep = torch.export.export(graph, (x,), dynamic_shapes={"images": {0: _batch_dim(min_batch, max_batch)}})
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp.pt2")
        try:
            aoti_compile_and_package(ep, package_path=tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    write_sidecar(path, side, artifact={"format": "aoti"}, precision="fp32", backend=backend,
                  batch={"min": min_batch, "opt": min_batch, "max": max_batch},
                  device="cpu", outputs_order=list(OUTPUT_NAMES))
    return path


def verify_aoti(path: str, model: nn.Module, image_size: int, *, real=None, max_batch: int = 16) -> dict:
    """Load the ``.pt2`` and compare its probabilities with PyTorch's (fp32 tolerance)."""
    from torch._inductor import aoti_load_package

    rep = {"artifact": path, "kind": "aoti", "tolerance": TOLERANCE["fp32"]}
    runner = aoti_load_package(path)
    sets = {"random": _example(image_size, min(3, max_batch))}
    if real is not None:
        sets["real"] = real[:max_batch]
    diffs = {}
    with torch.no_grad():
        for name, x in sets.items():
            logits, probs = runner(x)
            diffs[name] = _max_diff(probs, _torch_probs(model, x))
    rep["max_abs_diff"] = diffs
    rep["ok"] = all(d <= rep["tolerance"] for d in diffs.values())
    return rep


# -- Triton model repository --------------------------------------------------------------------------
def triton_config(name: str, platform: str, num_classes: int, image_size: int, max_batch: int,
                  opt_batch: int = 1, fp16_io: bool = False) -> str:
    """``config.pbtxt`` (protobuf text format) for Triton: dynamic batching, float32 I/O."""
    preferred = sorted({b for b in (opt_batch, max_batch) if 1 <= b <= max_batch})
    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {int(max_batch)}",
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ 3, {int(image_size)}, {int(image_size)} ]",
        "  }",
        "]",
        "output [",
        *[
            line
            for i, out in enumerate(OUTPUT_NAMES)
            for line in ("  {", f'    name: "{out}"', "    data_type: TYPE_FP32", f"    dims: [ {int(num_classes)} ]",
                         "  }" + ("," if i < len(OUTPUT_NAMES) - 1 else ""))
        ],
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]",
        "  max_queue_delay_microseconds: 100",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        "    kind: KIND_GPU" if platform == "tensorrt_plan" else "    kind: KIND_AUTO",
        "  }",
        "]",
        "",
    ])


def write_triton_repo(repo: str, sidecar: dict, *, engine: str | None = None, onnx_path: str | None = None,
                      max_batch: int = 16, opt_batch: int = 1, name: str | None = None) -> str:
    """Write ``REPO/fastmlr_<model>/{config.pbtxt, 1/model.plan | 1/model.onnx, fastmlr.json}``.

    The TensorRT engine is used when given, else the ONNX graph (ONNX Runtime
    backend). Returns the model folder. Files are written atomically.
    """
    if engine is None and onnx_path is None:
        raise ValueError("--triton-repo needs an engine (--trt) or an ONNX graph to serve")
    name = name or f"fastmlr_{sidecar['model']}"
    folder = os.path.join(repo, name)
    src, platform, fname = (engine, "tensorrt_plan", "model.plan") if engine else (onnx_path, "onnxruntime_onnx", "model.onnx")
    with open(src, "rb") as fh:
        blob = fh.read()
    atomic_write_bytes(os.path.join(folder, "1", fname), lambda fh: fh.write(blob))
    cfg = triton_config(name, platform, sidecar["num_classes"], sidecar["image_size"], max_batch, opt_batch)
    atomic_write_bytes(os.path.join(folder, "config.pbtxt"), lambda fh: fh.write(cfg.encode()))
    publish_mode(os.path.join(folder, "1", fname))
    publish_mode(os.path.join(folder, "config.pbtxt"))
    # Triton ignores extra files in the model folder; clients read class names and preprocessing here.
    src_side = sidecar_path(src)
    side = dict(sidecar)
    if os.path.exists(src_side):
        import json

        with open(src_side) as fh:
            side = json.load(fh)
    atomic_write_json(os.path.join(folder, "fastmlr.json"), {**side, "triton": {"name": name, "platform": platform}})
    publish_mode(os.path.join(folder, "fastmlr.json"))
    return folder


# -- latency, for the demo -------------------------------------------------------------------------------
def measure_latency(fn, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn(x)`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]


def demo_deployment(checkpoint: str, out_dir: str, image_size: int | None = None, batches=(1, 8),
                    repeats: int = 10) -> dict:
    """Export a checkpoint to ONNX (fp32, fp16) and AOTInductor, check each, and time them beside PyTorch eager.

    Used by ``make demo``. Returns {"reports": [...], "latency_ms": {runner: {batch: ms}}}; prints both.
    """
    from . import runtime
    from .checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    size = int(image_size or ckpt.get("image_size") or 448)
    model = model_from_checkpoint(ckpt).eval()
    side = make_sidecar(model, size)
    max_batch = max(batches)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"onnx fp32": os.path.join(out_dir, "srdl.onnx"), "onnx fp16": os.path.join(out_dir, "srdl.fp16.onnx"),
             "aoti": os.path.join(out_dir, "srdl.pt2")}
    real, _ = real_images(size, n=max_batch)
    print(f"\n== deployment: exporting {checkpoint} ({size} px) to {out_dir} ==", flush=True)
    reports = []
    for kind, path in paths.items():
        t0 = time.perf_counter()
        if kind == "aoti":
            export_aoti(model, path, size, max_batch=max_batch, sidecar=side)
            reports.append(verify_aoti(path, model, size, real=real, max_batch=max_batch))
        else:
            fp16 = kind.endswith("fp16")
            export_onnx(model, path, size, opt_batch=min(batches), max_batch=max_batch, fp16=fp16, sidecar=side)
            reports.append(verify_onnx(path, model, size, fp16=fp16, real=real, max_batch=max_batch))
        print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
        print(format_report(reports[-1]), flush=True)
    fns = {"pytorch eager": lambda x: torch.sigmoid(model(x))}
    for kind, path in paths.items():
        fns[kind] = runtime.load(path).predict
    g = torch.Generator().manual_seed(0)
    lat = {}
    with torch.no_grad():
        for name, fn in fns.items():
            lat[name] = {b: measure_latency(fn, torch.randn(b, 3, size, size, generator=g), repeats) for b in batches}
    header = "| runner (CPU, %d threads) | " % torch.get_num_threads() + " | ".join(f"batch {b} (ms)" for b in batches) + " |"
    print("\n" + header + "\n|---|" + "---:|" * len(batches))
    for name, row in lat.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.1f}" for b in batches) + " |")
    return {"reports": reports, "latency_ms": lat, "paths": paths}


# -- the command --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.export", description=__doc__.splitlines()[0])
    src = p.add_argument_group("model (a checkpoint, or a randomly initialised model for latency work)")
    src.add_argument("--checkpoint", default=None)
    src.add_argument("--model", default=None, help="registered model name, with --num-classes and --backbone")
    src.add_argument("--num-classes", type=int, default=None)
    src.add_argument("--backbone", default=None)
    src.add_argument("--seed", type=int, default=0, help="initialisation seed of a random model")
    out = p.add_argument_group("artefacts (any combination)")
    out.add_argument("--onnx", default=None, metavar="PATH", help="fp32 ONNX graph")
    out.add_argument("--fp16", action="store_true", help="also an fp16 graph (float32 I/O) at <onnx stem>.fp16.onnx")
    out.add_argument("--trt", default=None, metavar="PATH", help="TensorRT engine (.plan) from the fp16 graph; needs a GPU")
    out.add_argument("--aoti", default=None, metavar="PATH", help="AOTInductor package (.pt2), CPU")
    out.add_argument("--triton-repo", default=None, metavar="DIR", help="Triton model repository")
    out.add_argument("--triton-name", default=None, help="model name in the repository (default fastmlr_<model>)")
    shp = p.add_argument_group("shapes")
    shp.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's, else 448")
    shp.add_argument("--min-batch", type=int, default=1)
    shp.add_argument("--opt-batch", type=int, default=8)
    shp.add_argument("--max-batch", type=int, default=16)
    o = p.add_argument_group("options")
    o.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    o.add_argument("--threshold", type=float, default=0.5, help="decision threshold written to the sidecar")
    o.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit")
    o.add_argument("--timing-cache", default=None, help="TensorRT timing cache (default: beside the engine)")
    o.add_argument("--verify-images", nargs="*", default=None, metavar="IMAGE",
                   help="real images for the checks (default: 8 validation mosaics)")
    o.add_argument("--validate-mosaics", type=int, default=0, metavar="N",
                   help="with --fp16: mAP of fp32 vs fp16 on N validation mosaics (10-class models)")
    o.add_argument("--no-verify", action="store_true", help="skip the checks (not recommended)")
    return p


def load_model(args) -> tuple[nn.Module, int]:
    """The model the flags name and its input size."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .models import create_model

    if args.checkpoint:
        if args.model or args.num_classes or args.backbone:
            raise ValueError("give either --checkpoint or --model/--num-classes/--backbone, not both")
        ckpt = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(ckpt, backend="reference")
        size = args.image_size or ckpt.get("image_size") or 448
        return model.eval(), int(size)
    missing = [f for f, v in (("--model", args.model), ("--num-classes", args.num_classes), ("--backbone", args.backbone))
               if v is None]
    if missing:
        raise ValueError(f"without --checkpoint, {', '.join(missing)} must be given")
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights and embeddings are the point here
        cfg = {"backbone": args.backbone, "weights": "none", "backend": "reference"}
        model = create_model(args.model, args.num_classes, **cfg)
    return model.eval(), int(args.image_size or 448)


def format_report(rep: dict) -> str:
    lines = [f"  {rep['kind']}: {rep['artifact']}  -> {'OK' if rep['ok'] else 'FAILED'}"]
    if "checker" in rep:
        lines.append(f"    onnx.checker (full): {rep['checker']}; opset {rep['opset']}")
        bad = rep["not_in_tensorrt"]
        lines.append(f"    ops ({len(rep['ops'])}): {' '.join(rep['ops'])}")
        lines.append("    all in TensorRT's ONNX parser set" if not bad else f"    NOT supported by TensorRT: {bad}")
    if "max_abs_diff" in rep:
        d = ", ".join(f"{k} {v:.2e}" for k, v in rep["max_abs_diff"].items())
        lines.append(f"    max |p - p_torch|: {d} (tolerance {rep['tolerance']:.0e})")
    if "torch_fp16_max_abs_diff" in rep:
        d = ", ".join(f"{k} {v:.2e}" for k, v in rep["torch_fp16_max_abs_diff"].items())
        lines.append(f"    for comparison, PyTorch's own fp16 forward vs fp32: {d}")
    if "mAP" in rep:
        m = rep["mAP"]
        lines.append("    mAP on %d validation mosaics: %s; fp16 - fp32 = %+.3f points (limit %.1f)" % (
            rep["images"], ", ".join(f"{k} {v:.2f}" for k, v in m.items()), rep["fp16_minus_fp32"], FP16_MAP_POINTS))
    return "\n".join(lines)


def _stem(path: str) -> str:
    for ext in (".onnx", ".plan", ".engine"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def run(args) -> int:
    if not (args.onnx or args.trt or args.aoti or args.triton_repo):
        raise ValueError("nothing to export: give --onnx, --trt, --aoti and/or --triton-repo")
    if args.validate_mosaics and not args.fp16:
        raise ValueError("--validate-mosaics compares the fp16 graph with fp32: it needs --fp16")
    _check_batch_range(args.min_batch, args.opt_batch, args.max_batch)
    model, size = load_model(args)
    side = make_sidecar(model, size, threshold=args.threshold)
    reports, written = [], []
    verify = not args.no_verify
    real, real_desc = (None, "not checked")
    if verify:
        real, real_desc = real_images(size, paths=args.verify_images)
    stem = _stem(args.onnx or args.trt or os.path.join(args.triton_repo or ".", f"fastmlr_{side['model']}"))
    # TensorRT builds from the fp16 graph; Triton serves ONNX when no engine can be built.
    need_fp32 = bool(args.onnx or args.triton_repo)
    need_fp16 = bool(args.fp16 or args.trt)
    onnx32 = args.onnx or stem + ".onnx"
    onnx16 = stem + ".fp16.onnx"
    kw = dict(min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch, opset=args.opset, sidecar=side)

    def step(label, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        print(f"wrote {label}: {out} ({time.perf_counter() - t0:.1f} s)", flush=True)
        written.append(out)
        return out

    print(f"fastmlr export: {side['model']} ({side['config'].get('backbone')}), {side['num_classes']} classes, "
          f"{size} px, batch {args.min_batch}..{args.max_batch} (opt {args.opt_batch}); real images: {real_desc}",
          flush=True)
    if need_fp32:
        step("ONNX fp32", export_onnx, model, onnx32, size, fp16=False, **kw)
        if verify:
            reports.append(verify_onnx(onnx32, model, size, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    if need_fp16:
        step("ONNX fp16", export_onnx, model, onnx16, size, fp16=True, **kw)
        if verify:
            reports.append(verify_onnx(onnx16, model, size, fp16=True, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    if args.validate_mosaics:
        if not need_fp32:
            step("ONNX fp32 (for the mAP check)", export_onnx, model, onnx32, size, fp16=False, **kw)
        rep = fp16_map_check(model, onnx32, onnx16, size, num_images=args.validate_mosaics)
        rep.update(artifact=onnx16, kind="fp16 mAP check")
        reports.append(rep)
        print(format_report(rep), flush=True)
    if args.aoti:
        step("AOTInductor package", export_aoti, model, args.aoti, size, max_batch=args.max_batch,
             min_batch=args.min_batch, sidecar=side)
        if verify:
            reports.append(verify_aoti(args.aoti, model, size, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    engine, trt_error = None, None
    if args.trt:
        cache = args.timing_cache or os.path.join(os.path.dirname(os.path.abspath(args.trt)), "fastmlr.timing.cache")
        try:
            engine = step("TensorRT engine", build_trt_engine, onnx16, args.trt, min_batch=args.min_batch,
                          opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_gb=args.workspace_gb,
                          timing_cache=cache, sidecar=side)
        except TRTUnavailable as e:
            trt_error = e
            print(f"TensorRT engine NOT built: {e}\n  The ONNX graph it needs is written: {onnx16}\n"
                  f"  On a host with an NVIDIA GPU and TensorRT, run the same command, or:\n"
                  f"    trtexec --onnx={onnx16} --stronglyTyped --saveEngine={args.trt} "
                  f"--minShapes={INPUT_NAME}:{args.min_batch}x3x{size}x{size} "
                  f"--optShapes={INPUT_NAME}:{args.opt_batch}x3x{size}x{size} "
                  f"--maxShapes={INPUT_NAME}:{args.max_batch}x3x{size}x{size}", file=sys.stderr, flush=True)
    if args.triton_repo:
        if not os.path.exists(onnx32):
            step("ONNX fp32 (for Triton)", export_onnx, model, onnx32, size, fp16=False, **kw)
        folder = write_triton_repo(args.triton_repo, side, engine=engine, onnx_path=None if engine else onnx32,
                                   max_batch=args.max_batch, opt_batch=args.opt_batch, name=args.triton_name)
        print(f"wrote Triton model {folder} ({'TensorRT plan' if engine else 'ONNX Runtime backend'})")
    failed = [r for r in reports if not r["ok"]]
    print(f"export: {len(written)} artefact(s) written; {len(reports) - len(failed)}/{len(reports)} checks passed")
    if failed:
        print("export: FAILED checks: " + "; ".join(f"{r['kind']} ({r['artifact']})" for r in failed), file=sys.stderr)
        return 3
    if trt_error is not None:
        return 4
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
