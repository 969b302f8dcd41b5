"""Argument checks the ops' public functions share: one line naming the argument, its shape and what was expected."""

from __future__ import annotations

from torch import Tensor


def check(cond: bool, msg: str) -> None:
    """ValueError(``msg``) unless ``cond``."""
    if not cond:
        raise ValueError(msg)


def same_device_dtype(op: str, names: tuple[str, ...], tensors: tuple) -> None:
    """The named tensors are floating point, on one device, in one dtype (after autocast has cast them)."""
    first_name, first = names[0], tensors[0]
    for name, t in zip(names, tensors):
        if not isinstance(t, Tensor):
            continue
        check(t.device == first.device, f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
        check(t.is_floating_point(), f"{op}: {name} must be floating point, got {t.dtype}")
        check(t.dtype == first.dtype, f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}")
