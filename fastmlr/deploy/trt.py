"""Building TensorRT engines from fastmlr's ONNX graphs (running them is :mod:`fastmlr.runtime.trt`).

Two flavours build them (:mod:`fastmlr.artifact.probe`): enterprise TensorRT,
on a GPU host, for that GPU; and TensorRT-RTX, anywhere (no GPU needed), for
a list of RTX compute capabilities (:data:`RTX_DEFAULT_TARGETS` unless
``targets`` says otherwise), compiled just in time on the user's GPU.

The network is strongly typed: every tensor's type comes from the ONNX graph,
so "fp16" means the fp16 graph :func:`fastmlr.deploy.onnx.export_onnx` writes
(``fp16=True``), not a builder flag. TensorRT 11 (and TensorRT-RTX) removed
``BuilderFlag.FP16`` and make every network strongly typed (the
``STRONGLY_TYPED`` creation flag is kept, and ignored); TensorRT 10 needs the
flag. This module sets it when the enum has it and never touches
``BuilderFlag.FP16`` or ``EXPLICIT_BATCH``, so one code path serves all three.

A graph of the ``fused`` op set (nodes of the ``fastmlr`` domain) is built with
fastmlr's TensorRT plugins (:mod:`fastmlr.deploy.trt_plugins`, enterprise
TensorRT only): they are registered before parsing, the parser is told to take
their ahead-of-time implementations, and the engine embeds the compiled
kernels. Where they cannot be registered (TensorRT-RTX has no
``tensorrt.plugin``), a ``fallback_onnx`` graph of the standard op set is built
instead, and one line says so.

TensorRT is imported only through :func:`fastmlr.artifact.probe.import_tensorrt`
(enterprise: after a GPU has been found).
"""

from __future__ import annotations

import os
import sys
import time

from ..artifact import probe
from ..artifact.contract import INPUT_NAME, read_sidecar, write_sidecar
from ..files import atomic_write_bytes
from . import trt_plugins


def network_flags(trt) -> int:
    """Creation flags for ``Builder.create_network``: STRONGLY_TYPED where the enum still has it."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _aot_flag(trt) -> int:
    """``PREFER_AOT_PYTHON_PLUGINS`` as a creation-flag bit (0 where the enum lacks it)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS", None)
    return 0 if flag is None else 1 << int(flag)


# Why a fused graph is built from the standard graph on TensorRT-RTX (evidence: tools/rtx_plugin_probe.py,
# export/README.md): no tensorrt.plugin nor IPluginV3QuickAOTBuild to embed our kernels in the engine, no
# INetworkDefinition.add_plugin*, and a Python IPluginV3 aborts the process inside its ONNX parser.
RTX_NO_PLUGINS = ("TensorRT-RTX has no tensorrt.plugin or ahead-of-time plugin interface to embed fastmlr's kernels, "
                  "and its ONNX parser aborts on a Python IPluginV3 (tools/rtx_plugin_probe.py)")

# TensorRT-RTX's compute capabilities (its ComputeCapability enum: SM75 ... SM121) and its own default list.
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


def parse_targets(text: str | None) -> tuple[str, ...] | None:
    """``"8.6,8.9"`` -> ("8.6", "8.9") (also "86", "sm_86"); None for None. Raises ValueError naming the flag."""
    if text is None:
        return None
    out = []
    for item in filter(None, (t.strip().lower().removeprefix("sm_").removeprefix("sm") for t in text.split(","))):
        cc = item if "." in item else f"{item[:-1]}.{item[-1:]}"
        if cc not in RTX_TARGETS:
            raise ValueError(f"--trt-targets: {item!r} is not a compute capability TensorRT-RTX builds for; "
                             f"expected a comma-separated list of {', '.join(RTX_TARGETS)}")
        if cc not in out:
            out.append(cc)
    if not out:
        raise ValueError(f"--trt-targets: no compute capability in {text!r}; expected e.g. 8.6,8.9")
    return tuple(out)


def _set_targets(trt, config, targets: tuple[str, ...]) -> None:
    """Ask TensorRT-RTX for exactly ``targets`` (IBuilderConfig: a count, then one enum value per index)."""
    enum = trt.ComputeCapability
    missing = [t for t in targets if not hasattr(enum, "SM" + t.replace(".", ""))]
    if missing:
        raise ValueError(f"--trt-targets: TensorRT-RTX {getattr(trt, '__version__', '?')} cannot build for "
                         f"{', '.join(missing)} (its targets: {', '.join(n for n in enum.__members__ if n.startswith('SM'))})")
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        if not config.set_compute_capability(getattr(enum, "SM" + t.replace(".", "")), i):
            raise RuntimeError(f"TensorRT-RTX refused compute capability {t} as target {i}")


def _gpu_capability() -> str | None:
    """The build GPU's compute capability ("8.6"), what an enterprise engine is built for."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def _graph_for_parser(onnx_path: str, fallback_onnx: str | None, flavour: str) -> tuple[str, bytes, str, list[str]]:
    """(graph path, bytes to parse, op set, plugin ops) after registering the plugins a fused graph needs."""
    with open(onnx_path, "rb") as fh:
        data = fh.read()
    if trt_plugins.graph_op_set(data) == "standard":
        return onnx_path, data, "standard", []
    try:
        if flavour != "enterprise":
            raise probe.TRTUnavailable(RTX_NO_PLUGINS)
        trt_plugins.register_plugins()
    except probe.TRTUnavailable as e:
        if fallback_onnx is None:
            raise probe.TRTUnavailable(f"{onnx_path} has fastmlr's fused nodes, but their TensorRT plugins "
                                       f"are unavailable: {e}") from e
        print(f"{probe.LABELS[flavour]}: fused plugins unavailable ({e}); building from the standard graph "
              f"{fallback_onnx}", file=sys.stderr, flush=True)
        with open(fallback_onnx, "rb") as fh:
            return fallback_onnx, fh.read(), "standard", []
    data, ops = trt_plugins.prepare_fused_onnx(data, onnx_path)
    return onnx_path, data, "fused", ops


def _read(path: str) -> bytes | None:
    if path and os.path.exists(path):
        with open(path, "rb") as fh:
            return fh.read()
    return None


def trtexec_command(onnx_path: str, engine_path: str, image_size: int, min_batch: int, opt_batch: int,
                    max_batch: int) -> str:
    """The ``trtexec`` command that builds the same engine on a GPU host."""
    shape = f"x3x{image_size}x{image_size}"
    return (f"trtexec --onnx={onnx_path} --stronglyTyped --saveEngine={engine_path} "
            f"--minShapes={INPUT_NAME}:{min_batch}{shape} --optShapes={INPUT_NAME}:{opt_batch}{shape} "
            f"--maxShapes={INPUT_NAME}:{max_batch}{shape}")


def build_trt_engine(
    onnx_path: str,
    engine_path: str,
    *,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    sidecar: dict | None = None,
    input_name: str = INPUT_NAME,
    verbose: bool = False,
    fallback_onnx: str | None = None,
    flavour: str = "auto",
    targets: tuple[str, ...] | None = None,
) -> str:
    """Build a strongly typed TensorRT engine from ``onnx_path`` and write it to ``engine_path``.

    ``flavour``: ``auto`` (enterprise TensorRT where it is installed and a GPU
    is present, else TensorRT-RTX), ``enterprise`` or ``rtx``. ``targets``:
    TensorRT-RTX's compute capabilities (default :data:`RTX_DEFAULT_TARGETS`);
    enterprise TensorRT builds for the GPU it runs on and refuses ``targets``.
    One optimisation profile covers batch sizes ``min_batch..max_batch``
    (tuned for ``opt_batch``) at the graph's own C x H x W. ``timing_cache``
    (enterprise only: TensorRT-RTX's timing cache is a no-op) is read if it
    exists and rewritten after the build. ``workspace_gb`` limits the
    builder's scratch memory. The engine and its sidecar (``engine_path.json``,
    from ``sidecar`` or the ONNX graph's sidecar; ``tensorrt`` records flavour,
    version, targets, build time and size) are written atomically.
    The op set is the graph's own: a ``fused`` graph is built with fastmlr's
    plugins, or, when they cannot be registered here, from ``fallback_onnx``
    (a ``standard`` graph of the same model); the log line and the sidecar's
    ``onnx_ops`` say which. Returns ``engine_path``. Raises
    :class:`~fastmlr.artifact.probe.TRTUnavailable` without TensorRT (enterprise:
    or without a GPU; or without the plugins and a fallback), ``RuntimeError``
    when parsing or building fails.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    if workspace_gb <= 0:
        raise ValueError(f"--workspace-gb must be positive, got {workspace_gb}")
    for path in (onnx_path, fallback_onnx):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"ONNX graph {path} does not exist")
    flavour, _why = probe.choose_flavour(flavour)
    if flavour == "enterprise" and targets:
        raise ValueError("--trt-targets is for TensorRT-RTX (--trt-flavour rtx); enterprise TensorRT builds for the "
                         "GPU it runs on")
    if flavour == "rtx":
        targets = tuple(targets or RTX_DEFAULT_TARGETS)
        timing_cache = None
    trt = probe.import_tensorrt(flavour)
    label = f"{probe.LABELS[flavour]} {getattr(trt, '__version__', '?')}"
    onnx_path, data, op_set, plugin_ops = _graph_for_parser(onnx_path, fallback_onnx, flavour)
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt) | (_aot_flag(trt) if op_set == "fused" else 0))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(data)
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"{label} could not parse {onnx_path}: " + "; ".join(errors or ["no error reported"]))

    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if input_name not in inputs:
        raise RuntimeError(f"{onnx_path}: expected an input named {input_name!r}, found {sorted(inputs)}")
    chw = tuple(inputs[input_name].shape)[1:]
    if any(int(d) < 0 for d in chw):
        raise RuntimeError(f"{onnx_path}: input {input_name!r} must have a fixed C x H x W, found {tuple(inputs[input_name].shape)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    if flavour == "rtx":
        _set_targets(trt, config, targets)
    if timing_cache:
        cache = config.create_timing_cache(_read(timing_cache) or b"")
        config.set_timing_cache(cache, False)  # False: a cache from another GPU/version is refused, not silently used

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{label} failed to build an engine from {onnx_path} (see its log above)")
    blob = bytes(serialized)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(engine_path, lambda fh: fh.write(blob), publish=True)
    if timing_cache:
        new_cache = bytes(config.get_timing_cache().serialize())
        atomic_write_bytes(timing_cache, lambda fh: fh.write(new_cache))
    if flavour == "enterprise":
        targets = tuple(filter(None, [_gpu_capability()]))

    if sidecar is None:
        sidecar = read_sidecar(onnx_path)
    write_sidecar(
        engine_path, {k: v for k, v in sidecar.items() if k not in ("artifact", "opset")},
        artifact={"format": "tensorrt", "onnx": os.path.basename(onnx_path)}, precision="fp16",
        batch={"min": min_batch, "opt": opt_batch, "max": max_batch}, onnx_ops=op_set,
        tensorrt={"flavour": flavour, "version": getattr(trt, "__version__", None), "targets": list(targets),
                  "strongly_typed": True, "workspace_gb": workspace_gb, "timing_cache": timing_cache,
                  "build_seconds": round(seconds, 2), "engine_bytes": len(blob),
                  "plugins": [f"{trt_plugins.DOMAIN}::{op}" for op in plugin_ops],
                  "plugin_kernels": trt_plugins.KERNEL_FORMAT if plugin_ops else None},
    )
    used = f" with plugins {', '.join(plugin_ops)}" if plugin_ops else ""
    print(f"{label}: engine {engine_path} ({len(blob) / 1e6:.1f} MB) built in {seconds:.1f} s from the {op_set} "
          f"op set{used}, for compute capability {', '.join(targets) or 'unknown'}", file=sys.stderr, flush=True)
    return engine_path


__all__ = ["RTX_DEFAULT_TARGETS", "RTX_TARGETS", "build_trt_engine", "network_flags", "parse_targets", "trtexec_command"]
