"""python -m fastmlr.train: train a multi-label model, evaluating each epoch.

Defaults follow the SRDL paper's recipe (section 4.2): Adam, batch 16, lr 1e-5
divided by 10 every 10 epochs, 20 epochs, weight decay 5e-4, 448 px with the
multi-scale crop augmentation. Checkpoints are written atomically to
``OUT/last.pt`` (and ``OUT/best.pt``) and carry the config, class names and
label embeddings; ``--resume`` continues from ``OUT/last.pt`` to the same
result as an uninterrupted run (``last.pt`` holds every RNG state, of every
rank, so the resumed run continues the same random streams). A folder that
holds an earlier run is only written with ``--resume`` or ``--overwrite``.
Flags and data are checked before any work: a mistake ends with one line
``error: ...`` and exit status 2 (``--debug`` shows the traceback). Multi-GPU:
``torchrun --nproc_per_node=G -m fastmlr.train ...`` (rank 0 writes). Mixed precision
(``--amp``, fastmlr/amp.py): float16 autocast with loss scaling on CUDA (the default
there), bfloat16 autocast on the CPU with ``--amp on``; one training step for both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import __version__, train_args
from .amp import forward_loss, load_scaler_state, optimizer_step, resolve_amp, scaler_state
from .checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    check_compatible,
    load_state,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import collate_skip, data_fingerprint
from .data.checks import check_dataset
from .engine import UsageError, backend_flag, predict_dataset, resolve_device, run_command
from .metrics import format_metrics_table, multilabel_metrics
from .models import create_model
from .runlock import run_lock
from .train_model import check_same_model, model_cfg


class TrainingDiverged(RuntimeError):
    pass


def build_parser() -> argparse.ArgumentParser:
    return train_args.build_parser(__doc__.splitlines()[0])


# -- distributed --------------------------------------------------------------------------------------
def _dist_setup(device_arg: str | None) -> tuple[torch.device, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local), rank, world
        return torch.device("cpu"), rank, world
    return resolve_device(device_arg), 0, 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


# -- data ---------------------------------------------------------------------------------------------
def _datasets(args, ckpt, log):
    """The run's training and validation sets; on --resume, refused unless they are the run's own."""
    from .data.splits import run_datasets

    train, val, where = run_datasets(args)
    if list(train.classes) != list(val.classes):
        raise UsageError(f"training and validation data disagree on classes: {train.classes} vs {val.classes}")
    tsplit, vsplit = (args.train_split or "default", args.val_split or "default")
    for ds, what, split in ((train, "training", tsplit), (val, "validation", vsplit)):
        if len(ds) == 0:  # found now, not after a whole training epoch
            raise UsageError(f"the {what} data (--data {args.data}, split {split!r}, "
                             f"{args.data_root or 'built in'}) holds no images")
        # readable, one label set per image
        check_dataset(ds, what, f"--data {args.data}, split {split!r}, {args.data_root or 'built in'}")
    log(where)
    prints = {"train": data_fingerprint(train), "val": data_fingerprint(val)}
    recorded = (ckpt or {}).get("data") or {}
    for key, what in (("train", "trained"), ("val", "validated")):
        if recorded.get(key) not in (None, prints[key]):
            raise UsageError(
                f"--resume: the data this run {what} on changed since (--data {args.data} {args.data_root or ''}: "
                f"its image list or labels differ, fingerprint {recorded[key][:12]} then, {prints[key][:12]} now); "
                f"restore those files, or start a new run in another --out"
            )
    return train, val, prints


def _loader(ds, args, train: bool, epoch: int, world: int, rank: int) -> DataLoader:
    g = torch.Generator().manual_seed(_epoch_seed(args.seed, epoch))
    if world > 1:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=args.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(ds, generator=g) if train else SequentialSampler(ds)
    return DataLoader(
        ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, collate_fn=collate_skip,
        generator=g, drop_last=False, persistent_workers=False, pin_memory=False,
    )


# -- the run ------------------------------------------------------------------------------------------
def _gather_rng(world: int) -> list:
    """Every rank's RNG states, in rank order (collected on every rank; rank 0 saves them)."""
    mine = rng_state()
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def train(args) -> dict:
    """Resolve and check the flags, then train under ``--backend`` (a ``fastmlr.ops.use_backend`` block),
    holding --out's lock."""
    ckpt, changed, note = train_args.resolve(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    # One process of a distributed run (rank 0) holds the lock for all of them.
    lock = run_lock(args.out, log) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        train_args.check_earlier_run(args)
        with backend_flag(args.backend):
            return _train(args, ckpt, changed, note)


class _Run:
    """What one training run holds while it trains: model, optimiser, data, where it writes."""

    def __init__(self, args, ckpt, device, rank, world, log):
        self.args, self.ckpt, self.device, self.rank, self.world, self.log = args, ckpt, device, rank, world, log
        self.is_main = rank == 0
        self.last_path = os.path.join(args.out, "last.pt")
        self.history, self.best, self.start_epoch = [], -1.0, 0
        self.thresholds = train_args.kept_thresholds(ckpt, args.out)


def _build(run, changed):
    """Data, model, optimiser, schedule and loss scaler, restored from the checkpoint on --resume."""
    args, ckpt, log = run.args, run.ckpt, run.log
    _seed_everything(args.seed)
    run.train_ds, run.val_ds, run.fingerprints = _datasets(args, ckpt, log if run.is_main else (lambda *a: None))
    run.classes = list(run.train_ds.classes)
    if ckpt is not None:
        check_compatible(ckpt, class_names=run.classes)
    torch.manual_seed(args.seed)  # same initial weights for the same seed, resumed or not
    model = create_model(args.model, len(run.classes), **model_cfg(args, run.classes, run.train_ds, log))
    run.model = model.to(run.device)
    if ckpt is not None:
        check_same_model(run.model, ckpt)
        load_state(run.model, ckpt)
    run.train_model = run.model
    if run.world > 1:
        run.train_model = torch.nn.parallel.DistributedDataParallel(
            _TrainForward(run.model), device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    run.opt = torch.optim.Adam(run.model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    run.sched = torch.optim.lr_scheduler.StepLR(run.opt, step_size=args.lr_step, gamma=args.lr_gamma)
    try:
        run.amp = resolve_amp(args.amp, run.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    run.scaler = run.amp.scaler()
    if ckpt is not None:
        _restore_training(run, changed)


def _restore_training(run, changed):
    args, ckpt, opt, sched = run.args, run.ckpt, run.opt, run.sched
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    note = load_scaler_state(run.scaler, ckpt.get("scaler"))
    if note:
        run.log(f"--resume: {note}")
    run.start_epoch = ckpt["epoch"] + 1
    run.history = list(ckpt.get("history", []))
    run.best = max([h["val"]["mAP"] for h in run.history if not math.isnan(h["val"]["mAP"])], default=-1.0)
    run.log(f"resuming {run.last_path} after epoch {ckpt['epoch'] + 1}")
    if run.thresholds:
        run.log(f"--resume: keeping the calibrated per-class thresholds (fitted on "
                f"{run.thresholds['thresholds_fit'].get('data', '?')}); calibrate again after training")
    if any(c.startswith(tuple(f"--{k.replace('_', '-')} " for k in train_args.OPTIM_FLAGS)) for c in changed):
        # The flags given win over the checkpoint's optimiser and schedule, from this epoch on.
        sched.base_lrs = [args.lr for _ in opt.param_groups]
        sched.step_size, sched.gamma = args.lr_step, args.lr_gamma
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = args.lr, args.weight_decay
            g["lr"] = args.lr * args.lr_gamma ** (sched.last_epoch // args.lr_step)
    if changed:
        run.log("resumed with " + ", ".join(changed) + "; args.json records the new values")


def _prepare_out(run):
    args, log = run.args, run.log
    os.makedirs(args.out, exist_ok=True)
    old = train_args.earlier_run(args.out) if args.overwrite else []
    for name in old:
        os.unlink(os.path.join(args.out, name))
    if old:
        log(f"--overwrite: removed the earlier run's {', '.join(old)} in {args.out}")
    for name in train_args.RUN_FILES:
        for tmp in remove_stale_temps(os.path.join(args.out, name)):
            log(f"removed {tmp}, left by a write that was killed")
    atomic_write_json(os.path.join(args.out, "args.json"), vars(args))


def _train_epoch(run, epoch, progress):
    """One pass over the training data; returns (loss sum, steps, images seen, images skipped, seconds)."""
    from .progress import progress_bar

    args, model, device = run.args, run.model, run.device
    loader = _loader(run.train_ds, args, True, epoch, run.world, run.rank)
    run.train_model.train()
    total_steps = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
    bar = progress_bar(total=total_steps, desc=f"epoch {epoch + 1}/{args.epochs}", enabled=progress, leave=False)
    t0, seen, loss_sum, steps, skipped = time.perf_counter(), 0, 0.0, 0, 0
    for step, batch in enumerate(loader):
        if args.max_steps is not None and step >= args.max_steps:
            break
        if batch is None:
            skipped += args.batch_size
            continue
        images, y, ign, n_skip = batch
        skipped += n_skip
        images, y, ign = images.to(device), y.to(device), ign.to(device)
        loss = forward_loss(model, model.forward_train if run.world == 1 else run.train_model, images, y, ign, run.amp)
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopping. "
                f"The last good checkpoint ({run.last_path}, if any) is kept; try a lower --lr."
            )
        optimizer_step(loss, run.opt, run.scaler)
        if not torch.isfinite(torch.nn.utils.get_total_norm(list(model.parameters()))):
            bar.close()
            raise TrainingDiverged(
                f"the weights overflowed at epoch {epoch + 1}, step {step + 1} (--lr {args.lr}); stopping. "
                f"The last good checkpoint ({run.last_path}, if any) is kept; try a lower --lr."
            )
        loss_sum += loss.item()
        steps += 1
        seen += images.shape[0]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / steps:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
    bar.close()
    run.sched.step()
    if run.world > 1:
        stats = torch.tensor([loss_sum, steps, seen, skipped], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        loss_sum, steps, seen, skipped = stats.tolist()
    return loss_sum, steps, seen, skipped, t0


def _validate_and_save(run, epoch, stats, rng, progress):
    """Rank 0: validate, append to the history, write last.pt (and best.pt), log.jsonl and metrics.json."""
    args, model = run.args, run.model
    loss_sum, steps, seen, skipped, t0 = stats
    train_time = time.perf_counter() - t0
    val_loader = _loader(run.val_ds, args, False, epoch, 1, 0)
    s, t, ig, vskip = predict_dataset(model, val_loader, run.device, progress, desc="validate")
    if not torch.isfinite(s).all():
        raise TrainingDiverged(
            f"validation scores are not finite after epoch {epoch + 1} (the weights overflowed); stopping. "
            f"The last good checkpoint ({run.last_path}, if any) is kept; try a lower --lr."
        )
    m = multilabel_metrics(s, t, ig)
    rec = {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(steps, 1),
        "train_images": int(seen),
        "train_images_per_s": seen / max(train_time, 1e-9),
        "skipped_images": int(skipped + vskip),
        "lr": run.opt.param_groups[0]["lr"],
        "val": {k: m[k] for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")},
    }
    run.history.append(rec)
    rec["epoch_seconds"] = time.perf_counter() - t0
    run.log(epoch_summary(rec, args.epochs))
    payload = {
        "model": args.model,
        "num_classes": len(run.classes),
        "config": model.config,
        "class_names": run.classes,
        "image_size": args.image_size,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict(),
        "scaler": scaler_state(run.scaler),
        "epoch": epoch,
        "history": run.history,
        "args": vars(args),
        "data": {**run.fingerprints, "train_images": len(run.train_ds), "val_images": len(run.val_ds)},
        "rng": rng,
        "versions": {"fastmlr": __version__, "torch": str(torch.__version__)},
        **run.thresholds,
    }
    save_checkpoint(run.last_path, payload)
    if not math.isnan(m["mAP"]) and m["mAP"] > run.best:
        run.best = m["mAP"]
        save_checkpoint(os.path.join(args.out, "best.pt"), payload)
    log_path = os.path.join(args.out, "log.jsonl")
    line = (json.dumps(rec) + "\n").encode()
    old = open(log_path, "rb").read() if os.path.exists(log_path) else b""
    # Rewritten whole so a resumed run's log never duplicates epochs.
    kept = b"".join(ln + b"\n" for ln in old.splitlines() if ln.strip() and json.loads(ln)["epoch"] < epoch + 1)
    atomic_write_bytes(log_path, lambda fh: fh.write(kept + line))
    atomic_write_json(os.path.join(args.out, "metrics.json"), {**m, "epoch": epoch + 1, "class_names": run.classes})


def _train(args, ckpt, changed, note) -> dict:
    device, rank, world = _dist_setup(args.device)
    is_main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if (is_main and not args.quiet) else (lambda *a: None)
    progress = is_main and not args.no_progress and not args.quiet
    if note:
        log(note)
    run = _Run(args, ckpt, device, rank, world, log)
    _build(run, changed)
    _start_rng(args, ckpt, run.start_epoch, rank, world, log)
    if is_main:
        _prepare_out(run)
    log(
        f"fastmlr {__version__}: {args.model} ({args.backbone}) on {args.data}: {len(run.train_ds)} train / "
        f"{len(run.val_ds)} val images, {len(run.classes)} classes, device {device}, {run.amp.describe()}"
        + (f" x{world}" if world > 1 else "")
    )
    for epoch in range(run.start_epoch, args.epochs):
        stats = _train_epoch(run, epoch, progress)
        rng = _gather_rng(world)
        if is_main:
            _validate_and_save(run, epoch, stats, rng, progress)
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return {"history": run.history, "classes": run.classes, "out": args.out}


def epoch_summary(rec: dict, epochs: int) -> str:
    """The one line printed after each epoch: loss, validation mAP/CF1/OF1, time and speed."""
    skipped = f", {rec['skipped_images']} unreadable images skipped" if rec["skipped_images"] else ""
    return (f"epoch {rec['epoch']}/{epochs}: loss {rec['train_loss']:.4f}, val mAP {100 * rec['val']['mAP']:.2f} "
            f"CF1 {100 * rec['val']['CF1']:.2f} OF1 {100 * rec['val']['OF1']:.2f}, "
            f"{rec['epoch_seconds']:.1f} s ({rec['train_images_per_s']:.1f} img/s){skipped}")


class _TrainForward(torch.nn.Module):
    """``forward`` = the model's ``forward_train``: what DistributedDataParallel wraps, so gradients are reduced.

    (Swapping the model's own ``forward`` would recurse: ``forward_train`` calls ``self(images)``.)
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.forward_train(images)


def _start_rng(args, ckpt, start_epoch: int, rank: int, world: int, log) -> None:
    """Random streams at the first epoch: the checkpoint's (resumed), else seeded from --seed and the rank."""
    saved = (ckpt or {}).get("rng")
    if saved is not None and len(saved) == world:
        set_rng_state(saved[rank])
        return
    if ckpt is not None:
        have = "no RNG states" if saved is None else f"RNG states of {len(saved)} processes"
        log(f"--resume: the checkpoint holds {have}, not {world}; random streams are seeded from --seed instead")
    _seed_everything(_epoch_seed(args.seed, start_epoch) + rank)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        result = train(args)
        if result["history"]:  # --quiet too: the final table is what it keeps
            last = result["history"][-1]
            print(format_metrics_table({f"{args.model} (epoch {last['epoch']})": last["val"]}))
        return 0

    return run_command(work, debug=args.debug, extra=(TrainingDiverged,))


if __name__ == "__main__":
    sys.exit(main())
