"""A training run's two data sets, rebuilt from its flags: what ``train`` reads and what export checks against.

``run_datasets(cfg)`` takes the run's recorded flags (``train``'s resolved arguments, or a
checkpoint's ``"args"``) and returns (training set, validation set, a line saying where the
validation images come from). A ``list`` run without ``val_data_root`` holds out
``val_fraction`` of its labels file for validation, chosen by ``seed``: the same flags
give the same split wherever they are read again.
"""

from __future__ import annotations

import torch

from . import build_dataset


def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training indices, validation indices) of ``n`` items: ``round(fraction * n)`` (>= 1) held out, by ``seed``."""
    if n < 2:
        raise ValueError(f"{n} image(s): too few to hold any out for validation; give a validation file")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return sorted(perm[k:]), sorted(perm[:k])


def splits(cfg) -> tuple[str, str]:
    data = _get(cfg, "data")
    return (_get(cfg, "train_split") or ("trainval" if data == "voc" else "train"),
            _get(cfg, "val_split") or ("test" if data == "voc" else "val"))


def run_datasets(cfg, image_size: int | None = None, train_only_val: bool = False, classes=None):
    """(train set or None, validation set, where the validation images come from) for the run ``cfg``.

    ``image_size`` defaults to the run's; ``train_only_val`` builds the validation set alone (export's
    checks); ``classes`` (a list run without a class-name file: the checkpoint's) fixes the classes.
    """
    data, root, seed = _get(cfg, "data"), _get(cfg, "data_root"), int(_get(cfg, "seed", 0) or 0)
    size = image_size or _get(cfg, "image_size")
    kw, train_kw, val_kw = {}, {}, {}
    if data in ("mosaics", "scenes"):
        train_kw = dict(num_images=_get(cfg, "train_size"), seed=seed)
        val_kw = dict(num_images=_get(cfg, "val_size"), seed=seed + 1)
    elif data == "list":
        kw["classes_file"] = _get(cfg, "classes_file")
    tsplit, vsplit = splits(cfg)
    vroot = _get(cfg, "val_data_root")
    if data == "list" and classes is not None:
        kw["classes"] = list(classes)
    if data == "list" and not vroot:
        fraction = float(_get(cfg, "val_fraction", 0.2) or 0.2)
        whole_val = build_dataset(data, root, split=vsplit, image_size=size, train=False, **kw)
        tr_idx, va_idx = held_out(len(whole_val), fraction, seed)
        val = whole_val.subset(va_idx)
        where = (f"validation: {len(va_idx)} of the {len(tr_idx) + len(va_idx)} images of {root} "
                 f"({fraction:g}, chosen by --seed {seed}; --val-data-root gives a file of your own)")
        if train_only_val:
            return None, val, where
        train = build_dataset(data, root, split=tsplit, image_size=size, train=True, **kw).subset(tr_idx)
        return train, val, where
    train = None
    if data == "list" and classes is None and kw["classes_file"] is None:
        classes = build_dataset(data, root, split=tsplit, image_size=size, train=True, **kw).classes
    if data == "list" and classes is not None:
        kw["classes"] = list(classes)
    if not train_only_val:
        train = build_dataset(data, root, split=tsplit, image_size=size, train=True, **kw, **train_kw)
    vroot = vroot if (data == "list" and vroot) else root
    val = build_dataset(data, vroot, split=vsplit, image_size=size, train=False, **kw, **val_kw)
    where = f"validation: {len(val)} images of {data} {vsplit!r}" + (f" ({vroot})" if vroot else " (built in)")
    return train, val, where


__all__ = ["held_out", "run_datasets", "splits"]
