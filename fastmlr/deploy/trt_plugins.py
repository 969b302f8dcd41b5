"""TensorRT plugins for the fused ``fastmlr`` ONNX nodes, with fastmlr's Triton kernels compiled ahead of time.

One quickly deployable plugin (``tensorrt.plugin``) per op whose declaration
has a TensorRT contract (``OpSpec.trt``, fastmlr/ops/opspec.py), named as its
ONNX node (domain ``fastmlr``, the node's op type), so TensorRT's ONNX parser
maps each node to its plugin. This module names no op; one generic function
registers every plugin:

- a registration whose shape function gives the output's shape as
  expressions of the inputs' (the op's declared ``output_shape``) and whose
  output dtype is the first input's (fp32 or fp16);
- an ahead-of-time implementation that returns the op's Triton kernel
  (the declared entry of :mod:`fastmlr.kernels.trt_entry`, the kernel bodies
  the ``triton`` backend launches) compiled for the build GPU's compute
  capability, its launch grid and its integer arguments (sizes, strides) as
  expressions of the input shapes, all as the op declares them. TensorRT
  embeds the kernel in the engine: ``trtexec``, the C++
  runtime and Triton Inference Server run it without Python.

Everything but :func:`register_plugins` is plain Python over shapes that are
ints or TensorRT shape expressions, so it is tested without a GPU. This module
imports neither TensorRT nor Triton at import time; it is imported by
:mod:`fastmlr.deploy.trt` only.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the
registered functions' annotations as classes.
"""

import functools
import importlib
import inspect
import os
import re
import subprocess
import tempfile
from typing import NamedTuple

from ..artifact import probe
from ..artifact.probe import TRTUnavailable
from ..ops import FUSED_DOMAIN as DOMAIN
from ..ops import fused_specs
from ..ops.opspec import COSINE_EPS, by_onnx_type

ARCHS = (80, 86, 89, 90)  # the compute capabilities the kernels are compiled and checked for
MPC_EPS = COSINE_EPS  # the cosine's norm clamp, a compile-time constant of its entry (fastmlr/constants.py)
# "ptx" (what tensorrt.plugin documents) or "cubin" (assembled here with Triton's ptxas: no driver JIT).
KERNEL_FORMAT = os.environ.get("FASTMLR_TRT_KERNEL", "ptx")
_DTYPES = ("fp32", "fp16")


class FusedOp(NamedTuple):
    """A fused ONNX node and its plugin: input names and ranks, the output's rank, the Triton entry."""

    name: str
    inputs: tuple
    ranks: tuple
    out_rank: int
    kernel: str

    @property
    def plugin_id(self) -> str:
        return f"{DOMAIN}::{self.name}"


def plugin_ops() -> dict:
    """op type -> :class:`FusedOp`, for every declared op with a TensorRT plugin, in declaration order."""
    return {s.onnx.op_type: FusedOp(s.onnx.op_type, s.onnx.inputs, s.trt.ranks,
                                    len(s.output_shape([(0,) * r for r in s.trt.ranks])), s.trt.kernel)
            for s in fused_specs() if s.trt is not None}


OPS = plugin_ops()
PLUGIN_IDS = tuple(op.plugin_id for op in OPS.values())


def _plugin(op: str):
    """The declaration behind plugin ``op`` (an ONNX op type); KeyError for an op without a plugin."""
    spec = by_onnx_type(op)
    if spec is None or spec.trt is None:
        raise KeyError(op)
    return spec


# -- shapes, arguments and grids (ints or TensorRT shape expressions) -------------------------------------------
def output_shape(op: str, shapes) -> tuple:
    """The output's shape from the inputs' shapes (each a tuple of ints or shape expressions)."""
    return tuple(_plugin(op).output_shape(shapes))


def kernel_scalars(op: str, shapes) -> list:
    """The kernel's integer arguments in its order: sizes, then the strides of dense (row-major) tensors."""
    return list(_plugin(op).trt.scalars(shapes))


def launch_grid(op: str, shapes, blocks: dict, cdiv) -> tuple:
    """(grid_x, grid_y, grid_z) the Python launcher uses; ``cdiv`` is ceil division for the shape type."""
    return tuple(_plugin(op).trt.grid(shapes, blocks, cdiv))


def kernel_config(op: str, arch: int) -> tuple[dict, int]:
    """(block sizes, num_warps) of ``op``'s plugin kernel for compute capability ``arch``, as the op declares.

    One config serves sm_80/86/89/90 (each compiles for all four without
    spills, in the 48 KB of shared memory a launch gets without opting in);
    an engine carries one kernel per op.
    """
    if arch < 80:
        raise ValueError(f"TensorRT plugins: compute capability {arch // 10}.{arch % 10} is below 8.0, "
                         "which fastmlr's kernels do not target")
    blocks, warps = _plugin(op).trt.config(arch)
    return dict(blocks), warps


# -- compiling a kernel ---------------------------------------------------------------------------------------
class CompiledKernel(NamedTuple):
    """One op's kernel for one arch and dtypes: entry name, PTX (TensorRT's argument list), launch facts."""

    op: str
    arch: int
    name: str
    ptx: str
    shared: int
    num_warps: int
    blocks: dict
    num_args: int

    def code(self, fmt: str | None = None) -> bytes:
        """The kernel as TensorRT gets it: PTX text, or a cubin assembled for ``self.arch``."""
        fmt = fmt or KERNEL_FORMAT
        if fmt == "ptx":
            return self.ptx.encode()
        if fmt == "cubin":
            return assemble_cubin(self.ptx, self.arch)[0]
        raise ValueError(f"FASTMLR_TRT_KERNEL must be ptx or cubin, got {fmt!r}")


def entry_params(ptx: str, name: str) -> list[tuple[str, str]]:
    """The ``.entry name(...)`` parameters of ``ptx`` as (type, name), e.g. ("u64", "k_param_0")."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.DOTALL)
    if m is None:
        raise ValueError(f"no .entry {name} in the PTX")
    out = []
    for p in filter(None, (s.strip() for s in m.group(1).split(","))):
        words = p.split()
        out.append((words[1].lstrip("."), words[-1]))
    return out


def strip_trailing_params(ptx: str, name: str, keep: int) -> str:
    """Drop the entry's parameters after the first ``keep`` ones, which must be unused.

    Triton appends scratch-buffer pointers (global, profile) to every kernel's
    parameters; TensorRT passes exactly inputs, extra arguments and outputs.
    When a kernel needs no scratch memory those pointers are never read, and
    the entry is declared with TensorRT's argument list alone.
    """
    m = re.search(rf"(\.entry\s+{re.escape(name)}\s*\()(.*?)(\))", ptx, re.DOTALL)
    params = [s.strip() for s in m.group(2).split(",") if s.strip()]
    body = ptx[m.end():]
    for p in params[keep:]:
        pname = p.split()[-1]
        if re.search(rf"\b{re.escape(pname)}\b", body):
            raise RuntimeError(f"{name}: parameter {pname} beyond TensorRT's {keep} arguments is used by the kernel")
    kept = ",\n".join("\t" + p for p in params[:keep])
    return ptx[:m.start(2)] + "\n" + kept + "\n" + ptx[m.end(2):]


def _sm(arch: int) -> str:
    """ptxas's --gpu-name for ``arch``, as Triton names it (sm_90a: Hopper's arch-specific features)."""
    try:
        from triton.backends.nvidia.compiler import sm_arch_from_capability

        return sm_arch_from_capability(arch)
    except ImportError:
        return f"sm_{arch}a" if arch == 90 else f"sm_{arch}"


def _ptxas_path(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        tool = get_ptxas(arch)
    except TypeError:  # Triton releases whose get_ptxas takes no arch
        tool = get_ptxas()
    return getattr(tool, "path", tool)


def assemble_cubin(ptx: str, arch: int) -> tuple[bytes, str]:
    """Assemble ``ptx`` for ``arch`` with Triton's bundled ptxas; returns (cubin, ptxas -v report)."""
    ptxas = _ptxas_path(arch)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as fh:
            fh.write(ptx)
        run = subprocess.run([ptxas, "-v", f"--gpu-name={_sm(arch)}", src, "-o", out], capture_output=True, text=True,
                             check=False)
        if run.returncode != 0:
            raise RuntimeError(f"ptxas failed for {_sm(arch)}: {run.stderr.strip()}")
        with open(out, "rb") as fh:
            return fh.read(), run.stderr


@functools.cache
def compile_kernel(op: str, dtypes: tuple, arch: int) -> CompiledKernel:
    """Compile ``op``'s Triton entry for compute capability ``arch``.

    ``dtypes``: "fp32"/"fp16" of each input, then of the output. Accumulation
    is fp32 for both; tanh is libdevice's, as on the ``triton`` backend.
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..kernels import trt_entry

    spec = _plugin(op)
    if len(dtypes) != len(spec.onnx.inputs) + 1 or any(d not in _DTYPES for d in dtypes):
        raise ValueError(f"fastmlr::{op}: tensors must be fp32 or fp16, got {dtypes}")
    fn = getattr(trt_entry, spec.trt.kernel)
    blocks, num_warps = kernel_config(op, arch)
    consts = dict(blocks, ACC=tl.float32, **spec.trt.constants)
    pointers = [a for a in fn.arg_names if a.endswith("_ptr")]
    ptr_types = dict(zip(pointers, (f"*{d}" for d in dtypes)))
    sig = {a: "constexpr" if a in consts else ptr_types.get(a, "i32") for a in fn.arg_names}
    compiled = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps))
    md = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, scratch, 0):
            raise RuntimeError(f"fastmlr::{op}: the kernel needs {scratch}={getattr(md, scratch)}, "
                               "which a TensorRT plugin launch cannot provide")
    num_args = len(fn.arg_names) - len(consts)
    ptx = strip_trailing_params(compiled.asm["ptx"], md.name, num_args)
    return CompiledKernel(op, arch, md.name, ptx, int(md.shared), int(md.num_warps), blocks, num_args)


def target_arch() -> int:
    """Compute capability of the GPU the engine is built on (major * 10 + minor)."""
    import torch

    if not torch.cuda.is_available():
        raise TRTUnavailable("no CUDA device to compile the plugin kernels for")
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


# -- TensorRT registration --------------------------------------------------------------------------------------
_REGISTERED: list = []


def _dtype_name(trt, dtype) -> str:
    if dtype == trt.float32:
        return "fp32"
    if dtype == trt.float16:
        return "fp16"
    raise ValueError(f"fastmlr TensorRT plugins take fp32 or fp16 tensors, got {dtype}")


def _shapes(descs) -> list:
    return [tuple(d.shape_expr[i] for i in range(len(d.shape_expr))) for d in descs]


def describe(trt, trtp, op: str, descs):
    """The registration's body: checks ranks and dtypes, returns the output's TensorDesc."""
    spec = _plugin(op)
    for name, d, rank in zip(spec.onnx.inputs, descs, spec.trt.ranks):
        if len(d.shape_expr) != rank:
            raise ValueError(f"fastmlr::{op}: input {name} must have rank {rank}, got {len(d.shape_expr)}")
        _dtype_name(trt, d.dtype)
    return trtp.from_shape_expr(output_shape(op, _shapes(descs)), dtype=descs[0].dtype)


def aot_launch(trt, trtp, op: str, descs, outputs, arch: int | None = None):
    """The ahead-of-time implementation's body: (kernel name, code, launch params, extra args)."""
    dtypes = tuple(_dtype_name(trt, d.dtype) for d in (*descs, outputs[0]))
    k = compile_kernel(op, dtypes, target_arch() if arch is None else arch)
    shapes = _shapes(descs)
    launch = trtp.KernelLaunchParams()
    launch.grid_x, launch.grid_y, launch.grid_z = launch_grid(op, shapes, k.blocks, trtp.cdiv)
    launch.block_x = k.num_warps * 32
    launch.shared_mem = k.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in kernel_scalars(op, shapes)])
    return k.name.encode(), k.code(), launch, extra


def _define(trt, trtp, op: str, aot_only: bool = False) -> None:
    """Register ``op``'s shape function and AOT implementation, with the signatures tensorrt.plugin checks.

    tensorrt.plugin reads the parameter names (the op's inputs, then
    ``outputs, tactic``) and the annotations from the signatures
    (``tensorrt/plugin/_validate.py``): the shape function's inputs and return
    are ``TensorDesc``; the AOT implementation's return annotation is required
    and must be ``tuple[str | bytes, str | bytes, KernelLaunchParams, SymExprs]``
    (kernel name, kernel code, launch parameters, extra arguments). ``aot_only``: add the AOT
    implementation alone (completing a registration whose AOT implementation was refused).
    """
    node = _plugin(op).onnx
    plugin_id = f"{DOMAIN}::{node.op_type}"
    P = inspect.Parameter
    tensors = [P(n, P.POSITIONAL_OR_KEYWORD, annotation=trtp.TensorDesc) for n in node.inputs]

    def shape_fn(*descs):
        return describe(trt, trtp, op, descs)

    def aot_fn(*args):
        *descs, outputs, _tactic = args
        return aot_launch(trt, trtp, op, descs, outputs)

    shape_fn.__signature__ = inspect.Signature(tensors, return_annotation=trtp.TensorDesc)
    aot_fn.__signature__ = inspect.Signature(
        tensors + [P("outputs", P.POSITIONAL_OR_KEYWORD, annotation=tuple[trtp.TensorDesc]),
                   P("tactic", P.POSITIONAL_OR_KEYWORD, annotation=int)],
        return_annotation=tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs])
    shape_fn.__name__, aot_fn.__name__ = f"{op}_shape", f"{op}_aot"
    if not aot_only:
        trtp.register(plugin_id)(shape_fn)
    trtp.aot_impl(plugin_id)(aot_fn)


def register_plugins() -> list[str]:
    """Register every fused op's plugin with TensorRT (once per process); returns the plugin ids.

    Probes for a GPU before importing TensorRT (a TensorRT runtime made
    without one crashes the process). Raises :class:`TRTUnavailable` saying
    what is missing: a GPU, TensorRT, ``tensorrt.plugin`` with ahead-of-time
    implementations, or Triton.
    """
    if _REGISTERED:
        return list(_REGISTERED)
    trt = probe.import_tensorrt()
    try:
        trtp = importlib.import_module("tensorrt.plugin")
    except ImportError as e:
        raise TRTUnavailable(f"TensorRT {getattr(trt, '__version__', '?')} has no tensorrt.plugin ({e}); "
                             "fused plugins need TensorRT 10.9 or newer (aot_impl)") from e
    if not hasattr(trtp, "aot_impl"):
        raise TRTUnavailable(f"TensorRT {getattr(trt, '__version__', '?')}'s tensorrt.plugin has no aot_impl; "
                             "fused plugins need TensorRT 10.9 or newer (aot_impl)")
    try:
        importlib.import_module("triton")
    except ImportError as e:
        raise TRTUnavailable(f"Triton is not installed ({e}); it compiles the plugin kernels") from e
    namespace = getattr(trtp.op, DOMAIN, None) if hasattr(trtp, "op") else None
    ops = plugin_ops()
    for op, plugin in ops.items():
        defined = getattr(namespace, op, None) if namespace is not None else None
        try:
            if defined is None:
                _define(trt, trtp, op)
            elif getattr(defined, "aot_impl_func", True) is None:
                # Registered by an attempt whose AOT implementation was refused: complete it rather than skip it.
                _define(trt, trtp, op, aot_only=True)
        except (ValueError, TypeError) as e:  # tensorrt.plugin's validation of our signatures
            raise TRTUnavailable(f"tensorrt.plugin refused {plugin.plugin_id}: {e}") from e
    _REGISTERED[:] = [o.plugin_id for o in ops.values()]
    return list(_REGISTERED)


def plugins_available() -> tuple[bool, str]:
    """(True, plugin ids) when the fused plugins can be registered here, else (False, why)."""
    try:
        return True, ", ".join(register_plugins())
    except TRTUnavailable as e:
        return False, str(e)


# -- the ONNX side ----------------------------------------------------------------------------------------------
def fused_nodes(model) -> list:
    """The graph's nodes in the ``fastmlr`` domain."""
    return [n for n in model.graph.node if n.domain == DOMAIN]


def graph_op_set(data: bytes) -> str:
    """``"fused"`` if the serialized ONNX graph has ``fastmlr`` nodes, else ``"standard"``."""
    import onnx

    return "fused" if fused_nodes(onnx.load_from_string(data)) else "standard"


def prepare_fused_onnx(data: bytes, path: str = "graph") -> tuple[bytes, list[str]]:
    """The graph as TensorRT's parser is given it, and the plugin ops it uses.

    Each ``fastmlr`` node gets ``plugin_namespace="fastmlr"`` (parsers that do
    not fall back to the node's domain need it) and ``aot=1`` (the parser then
    asks for the ahead-of-time implementation, never a Python one). The file
    itself keeps the documented attribute-free nodes.
    """
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    used = []
    ops = plugin_ops()
    for node in fused_nodes(model):
        spec = ops.get(node.op_type)
        if spec is None:
            raise ValueError(f"{path}: node {node.name!r} is {DOMAIN}::{node.op_type}, which has no TensorRT "
                             f"plugin (plugins: {', '.join(ops)})")
        if len(node.input) != len(spec.inputs) or len(node.output) != 1:
            raise ValueError(f"{path}: node {node.name!r} ({DOMAIN}::{node.op_type}) has {len(node.input)} inputs "
                             f"and {len(node.output)} outputs; expected {len(spec.inputs)} ({', '.join(spec.inputs)}) "
                             "and 1")
        keep = [a for a in node.attribute if a.name not in ("plugin_namespace", "aot")]
        del node.attribute[:]
        node.attribute.extend(keep + [helper.make_attribute("plugin_namespace", DOMAIN),
                                      helper.make_attribute("aot", 1)])
        used.append(node.op_type)
    return model.SerializeToString(), sorted(set(used))


__all__ = ["ARCHS", "DOMAIN", "OPS", "PLUGIN_IDS", "CompiledKernel", "FusedOp", "aot_launch", "assemble_cubin",
           "compile_kernel", "describe", "entry_params", "graph_op_set", "kernel_config", "kernel_scalars",
           "launch_grid", "output_shape", "plugin_ops", "plugins_available", "prepare_fused_onnx", "register_plugins",
           "strip_trailing_params", "target_arch"]
