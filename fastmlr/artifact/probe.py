"""The one GPU / TensorRT probe that building and running engines both go through.

A TensorRT builder or runtime created on a machine without a usable GPU
returns a bogus object and the process segfaults later, so ``tensorrt`` is
imported only through :func:`import_tensorrt`, after :func:`gpu_available`
has found a device. Nothing here creates a TensorRT object.
"""

from __future__ import annotations

import importlib
import importlib.metadata

_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_bindings", "tensorrt_cu12_bindings")


class TRTUnavailable(RuntimeError):
    """No engine can be built or run here (no GPU, or TensorRT is not installed); the message says which."""


def tensorrt_version() -> str | None:
    """The installed TensorRT's version from package metadata, without importing it; None when absent."""
    for dist in _TRT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def gpu_available() -> tuple[bool, str]:
    """(True, device name) if a CUDA device can be used, else (False, why). Never creates a TensorRT object.

    Asks torch first; without torch's CUDA, cuda-python's ``cudaGetDeviceCount``
    (which returns an error code, 35 without a driver, instead of crashing).
    """
    try:
        import torch

        if torch.cuda.is_available():
            return True, torch.cuda.get_device_name(0)
        torch_reason = "torch sees no CUDA device"
    except ImportError:
        torch_reason = "torch is not installed"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.6 named the module so
        except ImportError:
            return False, f"{torch_reason}, and cuda-python is not installed"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0:
        return False, f"{torch_reason}; cudaGetDeviceCount returned CUDA error {int(err)}"
    if not count:
        return False, f"{torch_reason}; cudaGetDeviceCount found no device"
    return True, f"{count} CUDA device(s) via cuda-python"


def import_tensorrt():
    """Import TensorRT after checking for a GPU; raises :class:`TRTUnavailable` saying what is missing."""
    ok, why = gpu_available()
    if not ok:
        raise TRTUnavailable(f"no NVIDIA GPU ({why}); TensorRT engines must be built on a GPU host")
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise TRTUnavailable(
            f"TensorRT cannot be imported ({e}); install it from NVIDIA's index "
            "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)"
        ) from e


__all__ = ["TRTUnavailable", "gpu_available", "import_tensorrt", "tensorrt_version"]
