"""TensorRT runner for ``.plan``/``.engine`` files built by :mod:`fastmlr.deploy.trt` (TensorRT 10/11 API).

The engine's sidecar names its flavour (``tensorrt.flavour``): enterprise
TensorRT (``import tensorrt``) or TensorRT-RTX (``import tensorrt_rtx``), and
the runner takes that library. A TensorRT-RTX engine is compiled just in time
for the GPU at hand; the compiled kernels are kept in a runtime cache beside
the engine (``ENGINE.runtime.cache``, :func:`runtime_cache_path`), loaded when
the runner starts and rewritten after each new input shape, so the compile is
paid once per GPU, driver and TensorRT-RTX version (the cache refuses any other).

I/O goes through one of three paths, each imported only when chosen:

- ``io="torch"`` (default when torch has CUDA): inputs and outputs are torch
  CUDA tensors, run on torch's current stream;
- ``io="cuda-python"``: NumPy in, NumPy out through cuda-python's runtime
  API, for services without torch;
- ``io="pycuda"``: the same through pycuda, where it is installed.

An enterprise TensorRT runtime created without a GPU crashes the process, so
the GPU is probed first and the runner refuses to start without one (for both
flavours; TensorRT-RTX itself would refuse to deserialize, after CUDA error 35).
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import torch

from ..artifact.contract import INPUT_NAME, OUTPUT_NAMES
from ..artifact.probe import LABELS, TRTUnavailable, import_tensorrt
from ..files import atomic_write_bytes
from .base import Runner

IO_PATHS = ("torch", "cuda-python", "pycuda")


def _check(result, what: str):
    """cuda-python returns (error, *values); raise on an error, else return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)} in {what}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


# The optimisation profile every engine of fastmlr.deploy.trt has, and the one the runner selects.
PROFILE = 0
RTX_MAGIC = b"vtrt"  # the first bytes of every TensorRT-RTX engine


def engine_flavour(path: str, sidecar: dict, head: bytes | None = None) -> str:
    """The engine's flavour from its sidecar (enterprise for sidecars older than the field), checked against the
    file's first bytes ``head`` when given (an RTX engine starts ``vtrt``)."""
    flavour = (sidecar.get("tensorrt") or {}).get("flavour", "enterprise")
    if flavour not in LABELS:
        raise RuntimeError(f"{path}: its sidecar names TensorRT flavour {flavour!r}; expected one of {', '.join(LABELS)}")
    if head is not None and (flavour == "rtx") != head.startswith(RTX_MAGIC):
        found = "a TensorRT-RTX engine" if head.startswith(RTX_MAGIC) else "not a TensorRT-RTX engine"
        raise RuntimeError(f"{path}: its sidecar says {LABELS[flavour]}, but the file is {found} "
                           f"(first bytes {head[:4]!r})")
    return flavour


def check_target(path: str, sidecar: dict, capability: tuple[int, int] | None) -> None:
    """Refuse a TensorRT-RTX engine on a GPU whose compute capability is not among its targets."""
    targets = (sidecar.get("tensorrt") or {}).get("targets") or []
    if capability is None or not targets:
        return
    cc = f"{capability[0]}.{capability[1]}"
    if cc not in targets:
        raise RuntimeError(f"{path}: TensorRT-RTX engine built for compute capability {', '.join(targets)}; this "
                           f"GPU is {cc} (rebuild with --trt-targets {cc}, or enterprise TensorRT on SM 9.0)")


def runtime_cache_path(engine_path: str) -> str:
    """Where a TensorRT-RTX engine's runtime cache (its just-in-time compiled kernels) is kept."""
    return engine_path + ".runtime.cache"


class RuntimeCache:
    """A TensorRT-RTX runtime cache backed by a file: loaded once, saved atomically after each new input shape.

    ``runtime_config`` is an ``IRuntimeConfig`` (``engine.create_runtime_config()``);
    the cache's own ``deserialize`` refuses a file from another GPU, driver or
    version (it returns False): then the kernels are compiled anew, one line says
    so, and the file is replaced at the next save.
    """

    def __init__(self, runtime_config, path: str):
        self.path, self._shapes = path, set()
        self.cache = runtime_config.create_runtime_cache()
        if os.path.exists(path):
            with open(path, "rb") as fh:
                if not self.cache.deserialize(fh.read()):
                    print(f"TensorRT-RTX: runtime cache {path} was written for another GPU, driver or version; "
                          "compiling the kernels anew", file=sys.stderr, flush=True)
        runtime_config.set_runtime_cache(self.cache)

    def after_run(self, shape: tuple) -> None:
        """Save the cache the first time ``shape`` runs (new shapes may compile new kernels)."""
        if tuple(shape) in self._shapes:
            return
        self._shapes.add(tuple(shape))
        blob = bytes(self.cache.serialize())
        try:
            atomic_write_bytes(self.path, lambda fh: fh.write(blob))
        except OSError as e:  # a read-only folder costs the next process a compile, not this run
            print(f"TensorRT-RTX: runtime cache not saved to {self.path} ({e}); the next run compiles again",
                  file=sys.stderr, flush=True)
            self._shapes.add(None)


class RecordingLogger:
    """An ``ILogger`` for ``trt``: keeps error messages (for the one-line refusal), prints warnings and worse."""

    def __new__(cls, trt):
        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(str(msg))
                elif severity == trt.ILogger.Severity.WARNING:
                    print(f"[TensorRT] {msg}", file=sys.stderr)

        return _Logger()


def deserialize(trt, runtime, logger, path: str, blob: bytes, flavour: str):
    """``runtime.deserialize_cuda_engine(blob)``, or a one-line RuntimeError with TensorRT's first error."""
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        why = (getattr(logger, "errors", None) or ["no error reported"])[0]
        raise RuntimeError(f"{LABELS[flavour]} {getattr(trt, '__version__', '?')} could not deserialize {path}: "
                           f"{' '.join(why.split())}")
    return engine


def check_engine(engine, trt, path: str, sidecar: dict) -> tuple[int, int]:
    """Check the engine's I/O against the artefact contract and its sidecar; return profile 0's (min, max) batch.

    One input :data:`INPUT_NAME` float32 ``[N, 3, S, S]``, outputs :data:`OUTPUT_NAMES`
    float32 ``[N, C]``, with S and C the sidecar's image size and class count.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if inputs != [INPUT_NAME]:
        raise RuntimeError(f"{path}: expected one input {INPUT_NAME!r}, found {inputs}")
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise RuntimeError(f"{path}: engine lacks outputs {missing} (has {names})")
    S, C = int(sidecar["image_size"]), len(sidecar["class_names"])
    want = {INPUT_NAME: (3, S, S), **{n: (C,) for n in OUTPUT_NAMES}}
    for name, tail in want.items():
        dtype = engine.get_tensor_dtype(name)
        if dtype != trt.DataType.FLOAT:
            raise RuntimeError(f"{path}: tensor {name!r} is {dtype} in the engine; the contract (and the sidecar) "
                               f"say float32")
        shape = tuple(engine.get_tensor_shape(name))
        if len(shape) != 1 + len(tail) or shape[1:] != tail:
            raise RuntimeError(f"{path}: tensor {name!r} has shape {shape} in the engine; its sidecar says "
                               f"(N, {', '.join(map(str, tail))})")
    if engine.num_optimization_profiles < 1:
        raise RuntimeError(f"{path}: the engine has no optimisation profile")
    lo, _opt, hi = (tuple(d) for d in engine.get_tensor_profile_shape(INPUT_NAME, PROFILE))
    return int(lo[0]), int(hi[0])


def check_batch(path: str, shape: tuple, batch: tuple[int, int]) -> None:
    """Refuse, before TensorRT is called, an input batch outside the engine's profile."""
    lo, hi = batch
    if not lo <= int(shape[0]) <= hi:
        raise ValueError(f"{path}: input {INPUT_NAME!r} batch {shape[0]} is outside the engine's optimisation "
                         f"profile {PROFILE} (batch {lo}..{hi}); split the images or rebuild with --max-batch")


def set_input_shape(context, name: str, shape: tuple) -> None:
    if not context.set_input_shape(name, tuple(shape)):
        raise RuntimeError(f"TensorRT refused shape {tuple(shape)} for input {name!r} (optimisation profile {PROFILE})")


def set_tensor_address(context, name: str, ptr: int) -> None:
    if not context.set_tensor_address(name, int(ptr)):
        raise RuntimeError(f"TensorRT refused the device address of tensor {name!r} (optimisation profile {PROFILE})")


def output_shape(context, name: str) -> tuple:
    shape = tuple(context.get_tensor_shape(name))
    if any(int(d) < 0 for d in shape):
        raise RuntimeError(f"TensorRT left output {name!r} with an unresolved shape {shape} "
                           f"(optimisation profile {PROFILE})")
    return shape


class _TorchIO:
    def __init__(self, device):
        self.device = torch.device(device or "cuda")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def guard(self):
        """Everything on the runner's GPU (cuda:N), not on whichever device is current."""
        return torch.cuda.device(self.device)

    def run(self, context, x: torch.Tensor, in_name: str, out_names: list[str]):
        with self.guard():
            x = x.to(self.device, torch.float32).contiguous()
            set_input_shape(context, in_name, tuple(x.shape))
            set_tensor_address(context, in_name, x.data_ptr())
            outs = {}
            for name in out_names:
                outs[name] = torch.empty(output_shape(context, name), dtype=torch.float32, device=self.device)
                set_tensor_address(context, name, outs[name].data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            stream.synchronize()
        return [outs[n] for n in out_names]


class _CudaPythonIO:
    """Device buffers and copies through cuda-python's runtime API (``cuda.bindings.runtime``)."""

    def __init__(self, device=None):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart
        self.index = torch.device(device).index if device is not None else None
        with self.guard():
            self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def guard(self):
        """Make cuda:N current (cudaSetDevice) for what follows, when a device index was given."""
        if self.index is not None:
            _check(self.cudart.cudaSetDevice(self.index), f"cudaSetDevice({self.index})")
        return contextlib.nullcontext()

    def run(self, context, x: torch.Tensor, in_name: str, out_names: list[str]):
        rt = self.cudart
        host_in = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        self.guard()
        set_input_shape(context, in_name, tuple(host_in.shape))
        hosts = {n: np.empty(output_shape(context, n), dtype=np.float32) for n in out_names}
        ptrs = {}
        try:
            for name, arr in [(in_name, host_in), *hosts.items()]:
                ptrs[name] = _check(rt.cudaMalloc(arr.nbytes), "cudaMalloc")
                set_tensor_address(context, name, int(ptrs[name]))
            H2D, D2H = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(rt.cudaMemcpyAsync(ptrs[in_name], host_in.ctypes.data, host_in.nbytes, H2D, self.stream), "copy in")
            if not context.execute_async_v3(int(self.stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            for name, arr in hosts.items():
                _check(rt.cudaMemcpyAsync(arr.ctypes.data, ptrs[name], arr.nbytes, D2H, self.stream), "copy out")
            _check(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            for p in ptrs.values():
                rt.cudaFree(p)
        return [torch.from_numpy(hosts[n]) for n in out_names]


class _PyCudaIO:
    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()

    def run(self, context, x: torch.Tensor, in_name: str, out_names: list[str]):
        cuda = self.cuda
        host_in = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        set_input_shape(context, in_name, tuple(host_in.shape))
        hosts = {n: np.empty(output_shape(context, n), dtype=np.float32) for n in out_names}
        bufs = {name: cuda.mem_alloc(arr.nbytes) for name, arr in [(in_name, host_in), *hosts.items()]}
        for name, buf in bufs.items():
            set_tensor_address(context, name, int(buf))
        cuda.memcpy_htod_async(bufs[in_name], host_in, self.stream)
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        for name, arr in hosts.items():
            cuda.memcpy_dtoh_async(arr, bufs[name], self.stream)
        self.stream.synchronize()
        return [torch.from_numpy(hosts[n]) for n in out_names]


class TensorRTRunner(Runner):
    def __init__(self, path: str, sidecar: dict, device: str | None = None, io: str | None = None):
        super().__init__(path, sidecar)
        if device == "cpu":
            raise RuntimeError(f"{path} is a TensorRT engine: it runs only on an NVIDIA GPU, not on device='cpu'")
        if io is not None and io not in IO_PATHS:
            raise ValueError(f"io must be one of {IO_PATHS}, got {io!r}")
        self.flavour = engine_flavour(path, sidecar)
        try:
            trt = import_tensorrt(self.flavour, need_gpu=True)  # probes the GPU before touching TensorRT
        except TRTUnavailable as e:
            raise RuntimeError(f"cannot run {LABELS[self.flavour]} engine {path}: {e}. Use the ONNX graph on this "
                               "machine.") from e
        with open(path, "rb") as fh:
            blob = fh.read()
        engine_flavour(path, sidecar, blob[:16])
        if self.flavour == "rtx" and torch.cuda.is_available():
            check_target(path, sidecar, torch.cuda.get_device_capability(torch.device(device or "cuda")))
        if io is None:
            io = "torch" if torch.cuda.is_available() else "cuda-python"
        self._io = {"torch": lambda: _TorchIO(device), "cuda-python": lambda: _CudaPythonIO(device),
                    "pycuda": _PyCudaIO}[io]()
        self._logger = RecordingLogger(trt)
        self._cache = None
        guard = getattr(self._io, "guard", contextlib.nullcontext)
        with guard():  # the engine's memory and the context live on the runner's GPU
            self._runtime = trt.Runtime(self._logger)
            self.engine = deserialize(trt, self._runtime, self._logger, path, blob, self.flavour)
            self._batch = check_engine(self.engine, trt, path, sidecar)
            if self.flavour == "rtx":
                config = self.engine.create_runtime_config()
                self._cache = RuntimeCache(config, runtime_cache_path(path))
                self.context = self.engine.create_execution_context(config)
            else:
                self.context = self.engine.create_execution_context()
        self._outputs = list(OUTPUT_NAMES)
        self.provider = f"{'tensorrt-rtx' if self.flavour == 'rtx' else 'tensorrt'}:{io}"

    def run(self, x: torch.Tensor):
        check_batch(self.path, tuple(x.shape), self._batch)
        self.check_input(x, device_types=("cpu", "cuda"))
        logits, probs = self._io.run(self.context, x, INPUT_NAME, self._outputs)
        if self._cache is not None:
            self._cache.after_run(tuple(x.shape))
        return logits, probs
