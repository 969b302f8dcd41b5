"""Checks of a data set before a model is trained on it: readable images, one label set per image.

A data set whose images are all missing or unreadable would "train" to exit 0 (every batch
skipped, loss 0) and write the checkpoints of an untrained model; an image listed twice with
different labels would be learnt both ways. :func:`check_dataset` refuses the first and the
second (ValueError naming the data and an example), and says in one line how many listed
images are missing or listed twice with the same labels. Synthetic sets (mosaics, scenes)
have no file list and pass unchecked.
"""

from __future__ import annotations

import os
import warnings

import torch

from .transforms import IMAGE_ERRORS, open_rgb


def _label_names(ds, target: torch.Tensor) -> list[str]:
    return [ds.classes[k] for k in target.nonzero().flatten().tolist()]


def check_dataset(ds, what: str, source: str = "") -> None:
    """Refuse ``ds`` (the ``what`` data, read from ``source``) with no readable image or with conflicting labels."""
    items = getattr(ds, "_items", None)
    if items is None:
        return
    where = f"the {what} data" + (f" ({source})" if source else "")
    by_path: dict[str, int] = {}
    repeats = 0
    for i, (path, target, ignore) in enumerate(items):
        key = os.path.realpath(path)
        if key not in by_path:
            by_path[key] = i
            continue
        _, t0, ig0 = items[by_path[key]]
        if not (torch.equal(t0, target) and torch.equal(ig0, ignore)):
            raise ValueError(f"{where}: image {path} is listed more than once with different labels "
                             f"({_label_names(ds, t0)} and {_label_names(ds, target)}); give each image one entry")
        repeats += 1
    if repeats:
        warnings.warn(f"{where}: {repeats} entr{'y repeats' if repeats == 1 else 'ies repeat'} an image already listed "
                      "with the same labels; it is seen more often than the others", stacklevel=2)
    present = [p for p, _, _ in items if os.path.isfile(p)]
    if not present:
        raise ValueError(f"{where}: none of its {len(items)} images exists (the first listed: {items[0][0]}); "
                         "check --data-root")
    if len(present) < len(items):
        warnings.warn(f"{where}: {len(items) - len(present)} of its {len(items)} images do not exist and will be "
                      "skipped", stacklevel=2)
    errors = []
    for path in present:  # until the first readable one (one decode in the usual case)
        try:
            open_rgb(path)
            return
        except IMAGE_ERRORS as e:
            errors.append(f"{path}: {type(e).__name__}: {e}")
    raise ValueError(f"{where}: none of its {len(items)} images can be read ({len(present)} exist; the first: "
                     f"{errors[0]})")
