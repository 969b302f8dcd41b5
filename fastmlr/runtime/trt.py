"""TensorRT runner for ``.plan``/``.engine`` files built by :mod:`fastmlr.deploy.trt` (TensorRT 10/11 API).

I/O goes through one of three paths, each imported only when chosen:

- ``io="torch"`` (default when torch has CUDA): inputs and outputs are torch
  CUDA tensors, run on torch's current stream;
- ``io="cuda-python"``: NumPy in, NumPy out through cuda-python's runtime
  API, for services without torch;
- ``io="pycuda"``: the same through pycuda, where it is installed.

A TensorRT runtime created without a GPU crashes the process, so the GPU is
probed first and the runner refuses to start without one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..deploy.contract import INPUT_NAME, OUTPUT_NAMES
from ..deploy.probe import TRTUnavailable, import_tensorrt
from .base import Runner

IO_PATHS = ("torch", "cuda-python", "pycuda")


def _check(result, what: str):
    """cuda-python returns (error, *values); raise on an error, else return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)} in {what}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class _TorchIO:
    def __init__(self, device):
        self.device = torch.device(device or "cuda")

    def run(self, context, x: torch.Tensor, in_name: str, out_names: list[str]):
        x = x.to(self.device, torch.float32).contiguous()
        context.set_input_shape(in_name, tuple(x.shape))
        context.set_tensor_address(in_name, x.data_ptr())
        outs = {}
        for name in out_names:
            outs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return [outs[n] for n in out_names]


class _CudaPythonIO:
    """Device buffers and copies through cuda-python's runtime API (``cuda.bindings.runtime``)."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def run(self, context, x: torch.Tensor, in_name: str, out_names: list[str]):
        rt = self.cudart
        host_in = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        context.set_input_shape(in_name, tuple(host_in.shape))
        hosts = {n: np.empty(tuple(context.get_tensor_shape(n)), dtype=np.float32) for n in out_names}
        ptrs = {}
        try:
            for name, arr in [(in_name, host_in), *hosts.items()]:
                ptrs[name] = _check(rt.cudaMalloc(arr.nbytes), "cudaMalloc")
                context.set_tensor_address(name, int(ptrs[name]))
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
        context.set_input_shape(in_name, tuple(host_in.shape))
        hosts = {n: np.empty(tuple(context.get_tensor_shape(n)), dtype=np.float32) for n in out_names}
        bufs = {name: cuda.mem_alloc(arr.nbytes) for name, arr in [(in_name, host_in), *hosts.items()]}
        for name, buf in bufs.items():
            context.set_tensor_address(name, int(buf))
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
        try:
            trt = import_tensorrt()  # probes the GPU before touching TensorRT
        except TRTUnavailable as e:
            raise RuntimeError(f"cannot run TensorRT engine {path}: {e}. Use the ONNX graph on this machine.") from e
        if io is None:
            io = "torch" if torch.cuda.is_available() else "cuda-python"
        self._io = {"torch": lambda: _TorchIO(device), "cuda-python": _CudaPythonIO, "pycuda": _PyCudaIO}[io]()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(path, "rb") as fh:
            self.engine = self._runtime.deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME]:
            raise RuntimeError(f"{path}: expected one input {INPUT_NAME!r}, found {inputs}")
        self._outputs = list(OUTPUT_NAMES)
        missing = [n for n in self._outputs if n not in names]
        if missing:
            raise RuntimeError(f"{path}: engine lacks outputs {missing} (has {names})")
        self.provider = f"tensorrt:{io}"

    def run(self, x: torch.Tensor):
        logits, probs = self._io.run(self.context, x, INPUT_NAME, self._outputs)
        return logits, probs
