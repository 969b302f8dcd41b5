"""The "cpp" backend: fastmlr's C++/CUDA extension ``fastmlr._C``.

Loading ``fastmlr._C`` registers the ops ``torch.ops.fastmlr.*`` (schemas in
csrc/fastmlr.cpp, kernels in csrc/cpu and csrc/cuda). Each op that has a C++
kernel says so in its declaration (``OpSpec.impls["cpp"]``, e.g.
fastmlr/ops/car.py, which also registers what torch.compile and autograd need
for it); this module loads the extension, registers the ops' autocast rule as
the Autocast kernel of their ``torch.ops.fastmlr`` op (for direct callers), and
registers the backend. It names no op. If the extension is missing the import
fails and fastmlr.ops marks "cpp" unavailable with the reason. It never imports Triton.
"""

from __future__ import annotations

import torch

try:
    import fastmlr._C  # noqa: F401  (runs the TORCH_LIBRARY initialisers)
except ImportError as e:
    raise ImportError(
        f"fastmlr._C, the C++/CUDA extension, cannot be loaded ({e}); "
        "build it with `pip install --no-build-isolation -e .` in the repository"
    ) from e

from . import opspec as _spec
from ._autocast import register_for_library
from ._registry import PRIORITY, Backend

_AUTOCAST_LIB = torch.library.Library("fastmlr", "IMPL")


def has_cuda_kernels() -> bool:
    """Whether fastmlr._C was built with its CUDA kernels."""
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(s.qualified_name, "CUDA")
               for s in _spec.specs() if "cpp" in s.impls)


def _why_not_device(device_type: str) -> str | None:
    if device_type == "cuda" and not has_cuda_kernels():
        return "fastmlr._C was built without CUDA (no nvcc at build time, or FASTMLR_WITH_CUDA=0)"
    return None


def _why_not(op: str, device_type: str, tensors: tuple) -> str | None:
    impl = _spec.spec(op).impls["cpp"]
    allowed = (impl.dtypes or {}).get(device_type)
    dtype = tensors[0].dtype
    if allowed is not None and dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        return f"{op} on {device_type} supports {names}, got {str(dtype).removeprefix('torch.')}"
    return impl.why_not(device_type, tensors)


def _derive(op: _spec.OpSpec):
    if "cpp" not in op.impls:
        return None
    fn = op.impls["cpp"].load()
    # The rule of fastmlr/ops/_autocast.py, for callers of torch.ops.fastmlr.<op>.
    register_for_library(_AUTOCAST_LIB, [op.name])
    return fn


def make_backend(call) -> Backend:
    """The backend the dispatcher registers when it loads this module (``call`` is unused here)."""
    return Backend(name="cpp", priority=dict(PRIORITY["cpp"]), why_not=_why_not, why_not_device=_why_not_device,
                   derive=_derive)
