"""Frozen-backbone training: the backbone's maps computed once per dataset, heads trained on them.

On a few CPU cores the backbone is most of a training step (MobileNetV2 at
224 px: about 16 images a second per core, forward only), so comparing heads
over many epochs and seeds is out of reach if every step runs it. Here the
backbone is frozen (ImageNet weights, BatchNorm in eval mode): its stride-8,
-16 and -32 maps (``Backbone.forward_stages``) are computed once per
(dataset, backbone, weights, image size), stored in fp16 in one file written
atomically, and every model's head (MMDSR's fusion layers included) trains on
them. No augmentation: each image is seen as the dataset renders it.

A model trained this way is a complete model: its backbone holds the frozen
weights the maps came from, so its checkpoint predicts from images like any other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import torch
import torch.nn as nn
from torch import Tensor

from .files import atomic_write_bytes, file_sha256

CACHE_FORMAT = "fastmlr-feature-cache-v1"


def dataset_fingerprint(ds) -> dict:
    """What identifies a dataset's images and labels (type, classes, size, and its own parameters)."""
    fp = {"type": type(ds).__name__, "classes": list(ds.classes), "len": len(ds)}
    for key in ("split", "seed", "num_images", "grid", "canvas", "image_size", "root", "train"):
        if hasattr(ds, key):
            fp[key] = getattr(ds, key) if not isinstance(getattr(ds, key), os.PathLike) else os.fspath(getattr(ds, key))
    items = getattr(ds, "_items", None)
    if items:  # file datasets: the image list and the targets
        h = hashlib.sha256()
        for path, target, ignore in items:
            h.update(os.fspath(path).encode())
            h.update(target.numpy().tobytes())
            h.update(ignore.numpy().tobytes())
        fp["items_sha256"] = h.hexdigest()
    return fp


def cache_key(ds, backbone_name: str, weights: str | None) -> str:
    wid = file_sha256(weights) if weights and os.path.exists(weights) else str(weights)
    blob = json.dumps({"data": dataset_fingerprint(ds), "backbone": backbone_name, "weights": wid}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def compute_features(ds, backbone: nn.Module, batch_size: int = 32, log=print) -> dict:
    """Every image's [F8, F16, F32] (fp16), targets and ignore masks, in dataset order."""
    from torch.utils.data import DataLoader

    from .data import collate_skip

    backbone.eval()
    stages: list[list[Tensor]] = [[], [], []]
    targets, ignores = [], []
    t0 = time.perf_counter()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_skip)
    for batch in loader:
        if batch is None:
            continue
        images, y, ign, _ = batch
        for acc, f in zip(stages, backbone.forward_stages(images)):
            acc.append(f.half())
        targets.append(y)
        ignores.append(ign)
    n = sum(t.shape[0] for t in targets)
    log(f"featcache: {n} images through {getattr(backbone, 'name', 'backbone')} in {time.perf_counter() - t0:.0f} s")
    return {"stages": [torch.cat(s) for s in stages], "targets": torch.cat(targets), "ignore": torch.cat(ignores)}


def load_or_compute(ds, backbone: nn.Module, weights: str | None, cache_dir: str, log=print) -> dict:
    """The dataset's cached maps from ``cache_dir`` (computed and written atomically when absent)."""
    key = cache_key(ds, getattr(backbone, "name", "?"), weights)
    path = os.path.join(cache_dir, f"features-{key}.pt")
    if os.path.exists(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") == CACHE_FORMAT and blob.get("key") == key:
            return blob
        log(f"featcache: {path} is not a cache of this dataset; recomputing it")
    blob = {"format": CACHE_FORMAT, "key": key, **compute_features(ds, backbone, log=log)}
    atomic_write_bytes(path, lambda fh: torch.save(blob, fh))
    return blob


class CachedBackbone(nn.Module):
    """Stands in for a model's backbone while it trains on cached maps: its input is already the map.

    ``forward(F32) -> F32``; ``forward_stages([F8, F16, F32]) -> [F8, F16, F32]``.
    """

    def __init__(self, real: nn.Module):
        super().__init__()
        self.out_channels, self.stride = real.out_channels, real.stride
        self.stage_channels, self.name = real.stage_channels, real.name

    def forward(self, x):
        return x[-1] if isinstance(x, (list, tuple)) else x

    def forward_stages(self, x):
        return list(x)


def _batch(blob: dict, idx: Tensor, all_stages: bool):
    stages = [s[idx].float() for s in blob["stages"]]
    return (stages if all_stages else stages[-1]), blob["targets"][idx], blob["ignore"][idx]


def train_head(model, train_blob: dict, val_blob: dict, *, epochs: int, lr: float, batch_size: int = 32,
               weight_decay: float = 1e-4, lr_step: int | None = None, seed: int = 0, eval_every: int = 1,
               log=print) -> dict:
    """Train ``model``'s head (everything but ``model.backbone``) on cached maps; returns the history.

    The optimiser is Adam over the head's parameters; lr divided by 10 every ``lr_step`` epochs.
    Each epoch's order comes from ``seed`` and the epoch number; validation runs every
    ``eval_every`` epochs and after the last (it changes nothing in training). After training the real
    backbone is back in place, so ``model`` is whole again.
    """
    from .metrics import multilabel_metrics

    real = model.backbone
    for p in real.parameters():
        p.requires_grad_(False)
    all_stages = type(model).__name__ == "MMDSR"  # the one head that reads all three stages
    model.backbone = CachedBackbone(real)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=lr_step or max(epochs, 1), gamma=0.1)
        n = train_blob["targets"].shape[0]
        history = []
        for epoch in range(epochs):
            model.train()
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g)
            t0, loss_sum, steps = time.perf_counter(), 0.0, 0
            for s in range(math.ceil(n / batch_size)):
                x, y, ign = _batch(train_blob, order[s * batch_size : (s + 1) * batch_size], all_stages)
                out = model.forward_train(x)
                loss = model.loss(out, y, ign)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"loss became {loss.item()} at epoch {epoch + 1}; try a lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum, steps = loss_sum + loss.item(), steps + 1
            sched.step()
            rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(steps, 1), "seconds": time.perf_counter() - t0}
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                scores = predict_cached(model, val_blob, all_stages)
                m = multilabel_metrics(scores, val_blob["targets"], val_blob["ignore"])
                rec["val"] = {k: float(m[k]) for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")}
                log(f"  epoch {epoch + 1}/{epochs}: loss {rec['train_loss']:.4f}, val mAP {100 * m['mAP']:.2f}, "
                    f"CF1 {100 * m['CF1']:.2f} ({rec['seconds']:.0f} s)")
            history.append(rec)
    finally:
        model.backbone = real
    model.eval()
    return {"history": history}


@torch.no_grad()
def predict_cached(model, blob: dict, all_stages: bool | None = None, batch_size: int = 128) -> Tensor:
    """Sigmoid scores (Tensor[N, C]) of a model whose backbone is a :class:`CachedBackbone`."""
    if all_stages is None:
        all_stages = type(model).__name__ == "MMDSR"
    model.eval()
    n = blob["targets"].shape[0]
    out = []
    for s in range(0, n, batch_size):
        x, _, _ = _batch(blob, torch.arange(s, min(s + batch_size, n)), all_stages)
        out.append(torch.sigmoid(model(x).float()))
    return torch.cat(out)
