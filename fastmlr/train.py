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
    load_checkpoint,
    load_state,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import build_dataset, collate_skip
from .data.checks import check_dataset
from .engine import UsageError, backend_flag, predict_dataset, resolve_device, run_command
from .metrics import format_metrics_table, multilabel_metrics
from .models import create_model
from .runlock import run_lock


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
def _datasets(args):
    kw = {}
    if args.data in ("mosaics", "scenes"):
        train_kw = dict(num_images=args.train_size, seed=args.seed)
        val_kw = dict(num_images=args.val_size, seed=args.seed + 1)
    else:
        train_kw, val_kw = {}, {}
        if args.data == "list":
            kw["classes_file"] = args.classes_file
    tsplit = args.train_split or ("trainval" if args.data == "voc" else "train")
    vsplit = args.val_split or ("test" if args.data == "voc" else "val")
    root = args.data_root
    train = build_dataset(args.data, root, split=tsplit, image_size=args.image_size, train=True, **kw, **train_kw)
    vroot = args.val_data_root if (args.data == "list" and args.val_data_root) else root
    val = build_dataset(args.data, vroot, split=vsplit, image_size=args.image_size, train=False, **kw, **val_kw)
    if list(train.classes) != list(val.classes):
        raise UsageError(f"training and validation data disagree on classes: {train.classes} vs {val.classes}")
    for ds, what, split, where in ((train, "training", tsplit, root), (val, "validation", vsplit, vroot)):
        if len(ds) == 0:  # found now, not after a whole training epoch
            raise UsageError(f"the {what} data (--data {args.data}, split {split!r}, {where or 'built in'}) holds no images")
        check_dataset(ds, what, f"--data {args.data}, split {split!r}, {where}")  # readable, one label set per image
    return train, val


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
def _resolve_weights(args) -> str | None:
    if args.weights is not None:
        return args.weights
    from .models.backbones import offline_imagenet_weights

    return "imagenet" if offline_imagenet_weights(args.backbone) else None


def _model_cfg(args, classes, train_ds=None) -> dict:
    from .models import model_info

    info = model_info(args.model)
    cfg = dict(backbone=args.backbone, weights=_resolve_weights(args))
    if info.label_embeddings:
        from .labels import load_embeddings

        cfg["embeddings"] = load_embeddings(list(classes), args.embeddings)
    if args.ablation is not None:
        cfg["ablation"] = args.ablation
    # The model options its registry entry declares, from the flags that were given (checked in train_args).
    for option, (_flag, value) in train_args.OPTION_FLAGS.items():
        if option in info.options and value(args) is not None:
            cfg[option] = value(args)
    if args.adjacency != "learned":
        if "adjacency" not in info.options:
            raise UsageError(f"--adjacency {args.adjacency}: model {args.model!r} has no label graph to set")
        from .cooccurrence import dataset_cooccurrence, load_adjacency

        if args.adjacency == "cooccurrence":
            cfg["adjacency"] = dataset_cooccurrence(train_ds)
        else:
            cfg["adjacency"] = load_adjacency(args.adjacency, classes)
    return cfg


def _check_same_model(model, ckpt) -> None:
    """On --resume the flags must rebuild the checkpoint's model (ablation, options, embedding size)."""
    have, want = ckpt["config"], model.config
    diffs = [
        f"{k}: checkpoint {have[k]!r}, now {want[k]!r}"
        for k in sorted(set(have) & set(want) - {"backend", "weights"})
        if have[k] != want[k]
    ]
    if diffs:
        raise UsageError(
            f"--resume: {ckpt['path']} was trained with another model configuration ({'; '.join(diffs)}); "
            f"give the flags of that run (see its args.json)"
        )


def _gather_rng(world: int) -> list:
    """Every rank's RNG states, in rank order (collected on every rank; rank 0 saves them)."""
    mine = rng_state()
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def train(args) -> dict:
    """Check the flags, then train under ``--backend`` (a ``fastmlr.ops.use_backend`` block), holding --out's lock."""
    train_args.check_args(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    # One process of a distributed run (rank 0) holds the lock for all of them.
    lock = run_lock(args.out, log) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext()
    with lock:
        train_args.check_earlier_run(args)
        with backend_flag(args.backend):
            return _train(args)


def _train(args) -> dict:
    device, rank, world = _dist_setup(args.device)
    is_main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if (is_main and not args.quiet) else (lambda *a: None)
    progress = is_main and not args.no_progress and not args.quiet
    last_path = os.path.join(args.out, "last.pt")
    ckpt = None
    if args.resume:
        if not os.path.exists(last_path):
            raise UsageError(f"--resume: {last_path} does not exist (nothing to resume in --out {args.out})")
        ckpt = load_checkpoint(last_path)
        check_compatible(ckpt, model=args.model, config={"backbone": args.backbone})
        if ckpt.get("epoch") is None or "optimizer" not in ckpt:
            raise UsageError(f"--resume: {last_path} holds a model but no training state (optimizer, epoch)")
        if ckpt["epoch"] + 1 >= args.epochs:
            raise UsageError(
                f"--resume: {last_path} already holds {ckpt['epoch'] + 1} epochs; --epochs {args.epochs} "
                f"leaves nothing to train (raise --epochs)"
            )
    changed = train_args.resolve_optim(args, ckpt)
    _seed_everything(args.seed)
    train_ds, val_ds = _datasets(args)
    classes = list(train_ds.classes)
    if ckpt is not None:
        check_compatible(ckpt, class_names=classes)

    torch.manual_seed(args.seed)  # same initial weights for the same seed, resumed or not
    model = create_model(args.model, len(classes), **_model_cfg(args, classes, train_ds)).to(device)
    if ckpt is not None:
        _check_same_model(model, ckpt)
        load_state(model, ckpt)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            _TrainForward(model), device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=args.lr_gamma)
    try:
        amp = resolve_amp(args.amp, device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    scaler = amp.scaler()
    start_epoch, history, best = 0, [], -1.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        note = load_scaler_state(scaler, ckpt.get("scaler"))
        if note:
            log(f"--resume: {note}")
        start_epoch = ckpt["epoch"] + 1
        history = list(ckpt.get("history", []))
        best = max([h["val"]["mAP"] for h in history if not math.isnan(h["val"]["mAP"])], default=-1.0)
        log(f"resuming {last_path} after epoch {ckpt['epoch'] + 1}")
        if changed:
            # The flags given win over the checkpoint's optimiser and schedule, from this epoch on.
            sched.base_lrs = [args.lr for _ in opt.param_groups]
            sched.step_size, sched.gamma = args.lr_step, args.lr_gamma
            for g in opt.param_groups:
                g["initial_lr"], g["weight_decay"] = args.lr, args.weight_decay
                g["lr"] = args.lr * args.lr_gamma ** (sched.last_epoch // args.lr_step)
            log("resumed with " + ", ".join(changed) + "; args.json records the new values")
    _start_rng(args, ckpt, start_epoch, rank, world, log)

    if is_main:
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
    log(
        f"fastmlr {__version__}: {args.model} ({args.backbone}) on {args.data}: {len(train_ds)} train / "
        f"{len(val_ds)} val images, {len(classes)} classes, device {device}, {amp.describe()}"
        + (f" x{world}" if world > 1 else "")
    )

    from .progress import progress_bar

    log_path = os.path.join(args.out, "log.jsonl")
    for epoch in range(start_epoch, args.epochs):
        loader = _loader(train_ds, args, True, epoch, world, rank)
        train_model.train()
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
            loss = forward_loss(model, model.forward_train if world == 1 else train_model, images, y, ign, amp)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopping. "
                    f"The last good checkpoint ({last_path}, if any) is kept; try a lower --lr."
                )
            optimizer_step(loss, opt, scaler)
            if not torch.isfinite(torch.nn.utils.get_total_norm(list(model.parameters()))):
                bar.close()
                raise TrainingDiverged(
                    f"the weights overflowed at epoch {epoch + 1}, step {step + 1} (--lr {args.lr}); stopping. "
                    f"The last good checkpoint ({last_path}, if any) is kept; try a lower --lr."
                )
            loss_sum += loss.item()
            steps += 1
            seen += images.shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / steps:.4f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        bar.close()
        sched.step()
        train_time = time.perf_counter() - t0
        if world > 1:
            stats = torch.tensor([loss_sum, steps, seen, skipped], dtype=torch.float64, device=device)
            dist.all_reduce(stats)
            loss_sum, steps, seen, skipped = stats.tolist()

        rng = _gather_rng(world)
        if is_main:
            val_loader = _loader(val_ds, args, False, epoch, 1, 0)
            s, t, ig, vskip = predict_dataset(model, val_loader, device, progress, desc="validate")
            if not torch.isfinite(s).all():
                raise TrainingDiverged(
                    f"validation scores are not finite after epoch {epoch + 1} (the weights overflowed); stopping. "
                    f"The last good checkpoint ({last_path}, if any) is kept; try a lower --lr."
                )
            m = multilabel_metrics(s, t, ig)
            rec = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(steps, 1),
                "train_images": int(seen),
                "train_images_per_s": seen / max(train_time, 1e-9),
                "skipped_images": int(skipped + vskip),
                "lr": opt.param_groups[0]["lr"],
                "val": {k: m[k] for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")},
            }
            history.append(rec)
            rec["epoch_seconds"] = time.perf_counter() - t0
            log(epoch_summary(rec, args.epochs))
            payload = {
                "model": args.model,
                "num_classes": len(classes),
                "config": model.config,
                "class_names": classes,
                "image_size": args.image_size,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler_state(scaler),
                "epoch": epoch,
                "history": history,
                "args": vars(args),
                "rng": rng,
                "versions": {"fastmlr": __version__, "torch": str(torch.__version__)},
            }
            save_checkpoint(last_path, payload)
            if not math.isnan(m["mAP"]) and m["mAP"] > best:
                best = m["mAP"]
                save_checkpoint(os.path.join(args.out, "best.pt"), payload)
            line = (json.dumps(rec) + "\n").encode()
            old = open(log_path, "rb").read() if os.path.exists(log_path) else b""
            # Rewritten whole so a resumed run's log never duplicates epochs.
            kept = b"".join(
                ln + b"\n" for ln in old.splitlines() if ln.strip() and json.loads(ln)["epoch"] < epoch + 1
            )
            atomic_write_bytes(log_path, lambda fh: fh.write(kept + line))
            atomic_write_json(os.path.join(args.out, "metrics.json"), {**m, "epoch": epoch + 1, "class_names": classes})
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return {"history": history, "classes": classes, "out": args.out}


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
        if result["history"] and not args.quiet:
            last = result["history"][-1]
            print(format_metrics_table({f"{args.model} (epoch {last['epoch']})": last["val"]}))
        return 0

    return run_command(work, debug=args.debug, extra=(TrainingDiverged,))


if __name__ == "__main__":
    sys.exit(main())
