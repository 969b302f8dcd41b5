"""The one GPU / TensorRT probe that building and running engines both go through.

Two TensorRT flavours build fastmlr's engines (:data:`FLAVOURS`):

- ``enterprise``: NVIDIA's TensorRT (``import tensorrt``). Its builder and
  runtime need a GPU: one created on a machine without a usable GPU returns a
  bogus object and the process segfaults later, so ``tensorrt`` is imported
  only after :func:`gpu_available` has found a device.
- ``rtx``: TensorRT for RTX (``import tensorrt_rtx``, PyPI ``tensorrt-rtx``).
  Its builder needs no GPU (it compiles ahead of time for a list of compute
  capabilities; the runtime compiles just in time on the user's RTX GPU);
  without a GPU its runtime refuses to deserialize (CUDA error 35) instead of
  crashing. It targets SM 7.5-12.x RTX GPUs, not data-centre Hopper (SM 9.0).

:func:`choose_flavour` resolves ``auto``: enterprise where it is installed and
a GPU is present, else TensorRT-RTX. Nothing here creates a TensorRT object.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util

_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13_bindings", "tensorrt_cu12_bindings")
_RTX_DISTRIBUTIONS = ("tensorrt-rtx", "tensorrt_rtx_cu13_bindings", "tensorrt_rtx_cu12_bindings")
FLAVOURS = ("enterprise", "rtx")
MODULES = {"enterprise": "tensorrt", "rtx": "tensorrt_rtx"}
LABELS = {"enterprise": "TensorRT", "rtx": "TensorRT-RTX"}


class TRTUnavailable(RuntimeError):
    """No engine can be built or run here (no GPU, or TensorRT is not installed); the message says which."""


def _version(dists) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_version(flavour: str = "enterprise") -> str | None:
    """The installed TensorRT's (or TensorRT-RTX's) version from package metadata, without importing it."""
    return _version(_TRT_DISTRIBUTIONS if flavour == "enterprise" else _RTX_DISTRIBUTIONS)


def _installed(flavour: str) -> bool:
    """Whether the flavour's module can be found (a distribution without its module, e.g. bindings alone, counts)."""
    return importlib.util.find_spec(MODULES[flavour]) is not None


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


def choose_flavour(requested: str = "auto") -> tuple[str, str]:
    """(flavour, why) for ``requested`` in ``auto``/``enterprise``/``rtx``; never imports TensorRT.

    ``auto``: enterprise TensorRT where it is installed and a GPU is present
    (it builds for that GPU), else TensorRT-RTX (no GPU needed). Raises
    :class:`TRTUnavailable` when ``auto`` finds neither usable.
    """
    if requested in FLAVOURS:
        return requested, "asked for"
    if requested != "auto":
        raise ValueError(f"--trt-flavour must be auto, {' or '.join(FLAVOURS)}; got {requested!r}")
    have_trt = _installed("enterprise")
    ok, why = gpu_available() if have_trt else (False, "")
    if have_trt and ok:
        return "enterprise", f"TensorRT is installed and a GPU is present ({why})"
    reason = f"no GPU for TensorRT ({why})" if have_trt else "TensorRT (enterprise) is not installed"
    if _installed("rtx"):
        return "rtx", reason
    raise TRTUnavailable(f"{reason}, and TensorRT-RTX is not installed either (pip install tensorrt-rtx, "
                         "or pip install 'fastmlr[trt-rtx]')")


def import_tensorrt(flavour: str = "enterprise", *, need_gpu: bool | None = None):
    """Import the flavour's module; raises :class:`TRTUnavailable` saying what is missing.

    ``need_gpu`` (default: True for enterprise, False for TensorRT-RTX, whose
    builder runs anywhere) checks for a GPU first. Enterprise TensorRT is never
    imported without a GPU, whatever ``need_gpu`` says.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"TensorRT flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
    if need_gpu or flavour == "enterprise":
        ok, why = gpu_available()
        if not ok:
            what = "TensorRT engines must be built on a GPU host" if flavour == "enterprise" else \
                "TensorRT-RTX engines run only on an RTX GPU"
            raise TRTUnavailable(f"no NVIDIA GPU ({why}); {what}")
    try:
        return importlib.import_module(MODULES[flavour])
    except ImportError as e:
        where = ("install it from NVIDIA's index (pip install tensorrt --extra-index-url https://pypi.nvidia.com)"
                 if flavour == "enterprise" else "pip install tensorrt-rtx (or pip install 'fastmlr[trt-rtx]')")
        raise TRTUnavailable(f"{LABELS[flavour]} cannot be imported ({e}); {where}") from e


__all__ = ["FLAVOURS", "LABELS", "MODULES", "TRTUnavailable", "choose_flavour", "gpu_available", "import_tensorrt",
           "tensorrt_version"]
