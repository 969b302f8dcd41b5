"""Checkpoints: written atomically, carrying everything needed to rebuild and check a model.

A checkpoint holds the model's registry name, its config, the class names and
its state dict (label embeddings included, as a buffer), plus, for training,
the optimiser, scheduler, epoch, RNG states and metric history.
"""

from __future__ import annotations

import os

import torch

from .files import atomic_write_bytes, atomic_write_json  # noqa: F401  (checkpoints are written with them)

FORMAT = "fastmlr-checkpoint-v1"


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit what it is being used for."""


def save_checkpoint(path: str, payload: dict) -> None:
    payload = {"format": FORMAT, **payload}
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointMismatch(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointMismatch(f"{path} is not a fastmlr checkpoint (expected format {FORMAT!r}, found {found!r})")
    for key in ("model", "num_classes", "config", "class_names", "state_dict"):
        if key not in ckpt:
            raise CheckpointMismatch(f"checkpoint {path} lacks {key!r}")
    ckpt["path"] = path
    return ckpt


def check_compatible(
    ckpt: dict, *, class_names: list[str] | None = None, model: str | None = None, config: dict | None = None
) -> None:
    """Refuse a checkpoint whose classes, model or config differ from the request, saying what differs."""
    where = ckpt.get("path", "checkpoint")
    if model is not None and model != ckpt["model"]:
        raise CheckpointMismatch(f"{where} holds model {ckpt['model']!r}, but {model!r} was requested")
    if class_names is not None and list(class_names) != list(ckpt["class_names"]):
        have, want = list(ckpt["class_names"]), list(class_names)
        if len(have) != len(want):
            detail = f"{len(have)} classes in the checkpoint, {len(want)} in the data"
        else:
            i = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
            detail = f"class {i} is {have[i]!r} in the checkpoint and {want[i]!r} in the data"
        only_ckpt = sorted(set(have) - set(want))[:5]
        only_data = sorted(set(want) - set(have))[:5]
        raise CheckpointMismatch(
            f"{where} was trained on other classes: {detail}"
            + (f"; only in the checkpoint: {only_ckpt}" if only_ckpt else "")
            + (f"; only in the data: {only_data}" if only_data else "")
        )
    if config is not None:
        diffs = [
            f"{k}: checkpoint {ckpt['config'].get(k)!r}, requested {v!r}"
            for k, v in config.items()
            if v is not None and ckpt["config"].get(k) != v
        ]
        if diffs:
            raise CheckpointMismatch(f"{where} has a different model configuration: " + "; ".join(diffs))


def model_from_checkpoint(ckpt: dict | str, backend: str | None = None) -> torch.nn.Module:
    """Rebuild the model a checkpoint holds (weights from the checkpoint, nothing loaded from elsewhere)."""
    from .models import create_model

    if isinstance(ckpt, str):
        ckpt = load_checkpoint(ckpt)
    cfg = dict(ckpt["config"])
    cfg["weights"] = "none"  # the state dict below replaces any initial weights
    cfg["backend"] = backend
    if "label_embeddings" in ckpt["state_dict"]:
        cfg["embeddings"] = ckpt["state_dict"]["label_embeddings"]
    model = create_model(ckpt["model"], ckpt["num_classes"], **cfg)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{ckpt.get('path', 'checkpoint')}: state dict does not fit model {ckpt['model']!r} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.class_names = list(ckpt["class_names"])
    model.image_size = ckpt.get("image_size")
    return model
