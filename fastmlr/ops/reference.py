"""The reference implementations of fastmlr's ops, by name: ``reference.<op>_ref`` is ``spec(<op>).reference``.

The references are plain PyTorch, the definitions every other backend (C++/CUDA,
Triton) is held to. Each is written with its op's declaration (fastmlr/ops/car.py,
oe.py, second_order.py, cosine.py) and follows docs/srdl.md and docs/models/. They
are written for clarity, not memory: the CAR references materialise
``N x C x P x D`` tensors, which is exactly what the fused backends exist to avoid.
This module only names them (``from fastmlr.ops.reference import <op>_ref``).
"""

from __future__ import annotations

from . import opspec as _spec


def __getattr__(name: str):
    if name.endswith("_ref"):
        try:
            return _spec.spec(name[: -len("_ref")]).reference
        except ValueError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(f"{s.name}_ref" for s in _spec.specs())
