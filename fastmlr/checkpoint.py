"""Checkpoints: written atomically, carrying everything needed to rebuild and check a model.

A checkpoint holds the model's registry name, its config, the class names and
its state dict (label embeddings included, as a buffer), plus, for training,
the optimiser, scheduler, epoch, RNG states (:func:`rng_state`) and metric history,
and optionally per-class decision thresholds (:func:`store_thresholds`:
``"thresholds"``, a list of floats, and ``"thresholds_fit"``, where they were fitted).

Checkpoints are read with ``torch.load(weights_only=True)``: only tensors, plain
containers, numbers, strings and the few types listed in ``SAFE_GLOBALS`` are
rebuilt, so a file whose pickle names anything else (a function to call, a class
to construct) is refused without running it.
"""

from __future__ import annotations

import os
import pickle
import random
import re

import numpy as np
import torch
from torch.torch_version import TorchVersion

from .files import atomic_write_bytes, atomic_write_json, remove_stale_temps  # noqa: F401  (re-exported)

FORMAT = "fastmlr-checkpoint-v1"

# Types checkpoints may hold besides tensors and plain data: torch.__version__ (a str subclass),
# which checkpoints written before versions were stored as plain strings carry.
SAFE_GLOBALS = [TorchVersion]


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit what it is being used for."""


def save_checkpoint(path: str, payload: dict) -> None:
    payload = {"format": FORMAT, **payload}
    remove_stale_temps(path)
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh))


def store_thresholds(path: str, thresholds, fit: dict) -> dict:
    """Write per-class ``thresholds`` (and ``fit``: data, split, images... plain values) into checkpoint ``path``.

    The file is rewritten atomically with everything else unchanged; returns the stored checkpoint.
    """
    ckpt = load_checkpoint(path)
    values = [float(t) for t in thresholds]
    if len(values) != ckpt["num_classes"]:
        raise CheckpointMismatch(f"{path}: {len(values)} thresholds for a model with {ckpt['num_classes']} classes")
    ckpt.pop("path")
    ckpt.pop("format")
    ckpt["thresholds"], ckpt["thresholds_fit"] = values, dict(fit)
    save_checkpoint(path, ckpt)
    ckpt["path"] = path
    return ckpt


def checkpoint_thresholds(ckpt: dict) -> list[float] | None:
    """The checkpoint's per-class thresholds, or None when it has none (one threshold then applies to all)."""
    values = ckpt.get("thresholds")
    if values is None:
        return None
    if len(values) != ckpt["num_classes"] or not all(0.0 < float(t) < 1.0 for t in values):
        raise CheckpointMismatch(
            f"{ckpt.get('path', 'checkpoint')}: 'thresholds' holds {len(values)} values, expected "
            f"{ckpt['num_classes']} in (0, 1)"
        )
    return [float(t) for t in values]


def _refused_global(msg: str) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL (\S+)", msg) or re.search(r"GLOBAL (\S+) was not an allowed", msg)
    return m.group(1) if m else None


def load_checkpoint(path: str) -> dict:
    """Read and check a checkpoint; every failure is a one-line :class:`CheckpointMismatch` naming ``path``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointMismatch(f"checkpoint {path} is a folder; expected a .pt file (for example {path}/last.pt)")
    if not os.path.isfile(path):  # a FIFO or a device: reading it would block or never end
        raise CheckpointMismatch(f"checkpoint {path} is not a regular file; expected a .pt file")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(str(e))
        what = f"names {name}" if name else "holds objects that are not tensors or plain data"
        raise CheckpointMismatch(
            f"checkpoint {path} {what}, which a fastmlr checkpoint never does; refused without loading it "
            f"(it could run code)"
        ) from None
    except Exception as e:  # truncated, corrupted or not a torch file
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointMismatch(
            f"checkpoint {path} cannot be read: truncated, corrupted or not a torch file ({type(e).__name__}: {first})"
        ) from None
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
            if v is not None and k != "backend" and ckpt["config"].get(k) != v
        ]
        if diffs:
            raise CheckpointMismatch(f"{where} has a different model configuration: " + "; ".join(diffs))


def load_state(model: torch.nn.Module, ckpt: dict) -> None:
    """Load ``ckpt["state_dict"]`` into ``model``, or say in one line what does not fit."""
    try:
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # shape mismatches: torch lists every one, on many lines
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointMismatch(
            f"{ckpt.get('path', 'checkpoint')}: state dict does not fit model {ckpt['model']!r}: "
            + ("; ".join(lines[:3]) or str(e).splitlines()[0])
        ) from None
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{ckpt.get('path', 'checkpoint')}: state dict does not fit model {ckpt['model']!r} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def model_from_checkpoint(ckpt: dict | str) -> torch.nn.Module:
    """Rebuild the model a checkpoint holds (weights from the checkpoint, nothing loaded from elsewhere).

    The ops backend is not part of a model: choose it with ``fastmlr.ops.use_backend`` around the calls.
    """
    from .models import create_model, model_info

    if isinstance(ckpt, str):
        ckpt = load_checkpoint(ckpt)
    # Options added after a checkpoint was saved take the value its model was trained with.
    cfg = {**model_info(ckpt["model"]).legacy, **ckpt["config"]}
    cfg["weights"] = "none"  # the state dict below replaces any initial weights
    if "label_embeddings" in ckpt["state_dict"]:
        cfg["embeddings"] = ckpt["state_dict"]["label_embeddings"]
    model = create_model(ckpt["model"], ckpt["num_classes"], **cfg)
    load_state(model, ckpt)
    model.class_names = list(ckpt["class_names"])
    model.image_size = ckpt.get("image_size")
    model.train_args = dict(ckpt.get("args") or {})  # the run's flags: where its data came from (export's checks)
    return model


# -- random number generators ----------------------------------------------------------------------
def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch, every CUDA device) as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only for the devices both sides have)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        n = min(len(state["cuda"]), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(list(state["cuda"])[:n])
