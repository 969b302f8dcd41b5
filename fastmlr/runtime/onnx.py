"""ONNX Runtime runner: TensorRT, CUDA or CPU execution provider, whichever this machine can use."""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..artifact.contract import INPUT_NAME, OUTPUT_NAMES
from ..artifact.probe import gpu_available
from .base import Runner

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def choose_providers(available: list[str], device: str | None, has_gpu: bool) -> list[str]:
    """Execution providers in preference order for ``device`` (None: best available; "cpu"; "cuda")."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    gpu = [p for p in _GPU_PROVIDERS if p in available] if has_gpu and device != "cpu" else []
    if device == "cuda" and not gpu:
        why = "no NVIDIA GPU is present" if not has_gpu else f"onnxruntime offers only {available}"
        raise RuntimeError(f"device='cuda' was asked for, but {why} (pip install onnxruntime-gpu on a GPU host)")
    return gpu + ["CPUExecutionProvider"]


SPIN_KEY = "session.intra_op.allow_spinning"


class OnnxRunner(Runner):
    """ONNX Runtime session of an exported graph. ``threads``: ONNX Runtime's intra-op threads. ``spin``: whether
    those threads spin while they wait for work (ONNX Runtime's ``session.intra_op.allow_spinning``); None is
    ONNX Runtime's default (on), except for a graph of the fused op set, whose PyOps run fastmlr's kernels on
    torch's own threads beside ONNX Runtime's: there spinning threads take the cores the kernels need
    (benchmarks/runtime_options.py, 2 threads on 2 cores, SRDL ResNet-101 at 448 px: 162-173 ms spinning,
    134-143 ms not)."""

    def __init__(self, path: str, sidecar: dict, device: str | None = None, threads: int | None = None,
                 spin: bool | None = None):
        super().__init__(path, sidecar)
        import onnxruntime as ort

        available = ort.get_available_providers()
        has_gpu = gpu_available()[0] if any(p in available for p in _GPU_PROVIDERS) else False
        providers = choose_providers(available, device, has_gpu)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        source, self.fused_ops = self._graph(path, opts)
        self.spin = not self.fused_ops if spin is None else bool(spin)
        if not self.spin:
            opts.add_session_config_entry(SPIN_KEY, "0")
        self.session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        used = self.session.get_providers()
        if used[0] != providers[0]:
            print(f"fastmlr.runtime: {providers[0]} could not start for {path}; running on {used[0]}", file=sys.stderr)
        self.provider = f"onnxruntime:{used[0]}" + ("+fastmlr-pyops" if self.fused_ops else "")
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise RuntimeError(f"{path}: expected one input {INPUT_NAME!r}, found {inputs}")

    @staticmethod
    def _graph(path: str, opts):
        """(what to open, fused op types): the file itself for a standard graph; for a graph of the fused op
        set, the graph with its fastmlr nodes as onnxruntime-extensions PyOps (fastmlr/runtime/onnx_fused.py)."""
        import onnx

        from .onnx_fused import fused_node_types, fused_session_input

        model = onnx.load(path)
        fused = fused_node_types(model)
        if not fused:
            return path, []
        source = fused_session_input(path, model, opts)
        print(f"fastmlr.runtime: {path}: fused nodes {', '.join(fused)} run as onnxruntime-extensions PyOps "
              "calling fastmlr's kernels (cpp for the CAR ops)", file=sys.stderr)
        return source, fused

    def run(self, x: torch.Tensor):
        self.check_input(x)
        logits, probs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x.numpy())})
        return torch.from_numpy(logits), torch.from_numpy(probs)
