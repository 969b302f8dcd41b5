"""python -m fastmlr.train: train a multi-label model, evaluating each epoch.

Defaults follow the SRDL paper's recipe (section 4.2): Adam, batch 16, lr 1e-5
divided by 10 every 10 epochs, 20 epochs, weight decay 5e-4, 448 px with the
multi-scale crop augmentation. Checkpoints are written atomically to
``OUT/last.pt`` (and ``OUT/best.pt``) and carry the config, class names and
label embeddings; ``--resume`` continues from ``OUT/last.pt`` to the same
result as an uninterrupted run (every epoch's randomness is derived from
``--seed`` and the epoch number, not from what ran before). Multi-GPU:
``torchrun --nproc_per_node=G -m fastmlr.train ...`` (rank 0 writes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from . import __version__
from .checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from .data import build_dataset, collate_skip
from .engine import predict_dataset, resolve_device
from .metrics import format_metrics_table, multilabel_metrics
from .models import create_model


class TrainingDiverged(RuntimeError):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.train", description=__doc__.splitlines()[0])
    a = p.add_argument_group("model")
    a.add_argument("--model", default="srdl", help="registered model name (fastmlr.models.list_models())")
    a.add_argument("--backbone", default="resnet101", help="resnet18 | resnet50 | resnet101 | mobilenet_v2")
    a.add_argument(
        "--weights", default=None,
        help="backbone ImageNet weights: a torchvision state-dict file, 'imagenet' for packaged ones "
        "(mobilenet_v2), or 'none' (default: 'imagenet' when packaged, else none)",
    )
    a.add_argument("--embeddings", default="random", help="label embedding source (see fastmlr.labels)")
    a.add_argument(
        "--ablation", default=None,
        help="ablation preset of the model (SRDL: car, car_no_gcn, car_no_ca, car_no_sa, car_oe; "
        "AAMN/MMDSR: see docs/models/)",
    )
    a.add_argument("--no-oe", action="store_true", help="SRDL without object erasing")
    a.add_argument("--oe-k", type=int, default=3)
    a.add_argument("--oe-alpha", type=float, default=0.5)
    a.add_argument(
        "--adjacency", default="learned",
        help="label graph of mlgcn / srdl: learned, cooccurrence (ML-GCN's correlation matrix from the "
        "training labels; SRDL: V's initialisation), or a file of python -m fastmlr.cooccurrence",
    )
    a.add_argument("--backend", default=None, help="fastmlr.ops backend (default: fastest for the device)")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="mosaics", help="mosaics | scenes | voc | coco | list")
    d.add_argument("--data-root", default=None, help="dataset folder (voc, coco), JSONL file (list), idx folder (mosaics)")
    d.add_argument("--classes-file", default=None, help="class names, one per line (list format)")
    d.add_argument("--train-split", default=None, help="default: trainval (voc), train (others)")
    d.add_argument("--val-split", default=None, help="default: test (voc), val (others)")
    d.add_argument("--val-data-root", default=None, help="JSONL for validation (list format)")
    d.add_argument("--train-size", type=int, default=4000, help="mosaics, scenes: number of training images")
    d.add_argument("--val-size", type=int, default=1000, help="mosaics, scenes: number of validation images")
    d.add_argument("--image-size", type=int, default=448)
    d.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    o = p.add_argument_group("optimisation (paper 4.2)")
    o.add_argument("--epochs", type=int, default=20)
    o.add_argument("--batch-size", type=int, default=16)
    o.add_argument("--lr", type=float, default=1e-5)
    o.add_argument("--lr-step", type=int, default=10, help="divide lr by --lr-gamma every this many epochs")
    o.add_argument("--lr-gamma", type=float, default=0.1)
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke runs)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="fp16 autocast (CUDA only); auto = on for CUDA")
    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/train", help="output folder: last.pt, best.pt, log.jsonl, metrics.json")
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    r.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--quiet", action="store_true", help="only the final table")
    return p


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
    try:
        return resolve_device(device_arg), 0, 1
    except ValueError as e:
        raise SystemExit(str(e)) from None


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
        raise SystemExit(f"training and validation data disagree on classes: {train.classes} vs {val.classes}")
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
    cfg = dict(backbone=args.backbone, weights=_resolve_weights(args), backend=args.backend)
    if info.label_embeddings:
        from .labels import load_embeddings

        cfg["embeddings"] = load_embeddings(list(classes), args.embeddings)
    if args.ablation is not None:
        if not info.ablations:
            raise SystemExit(f"--ablation {args.ablation}: model {args.model!r} has no ablation presets")
        cfg["ablation"] = args.ablation
    if args.model == "srdl":
        cfg.update(oe_k=args.oe_k, oe_alpha=args.oe_alpha)
        if args.no_oe:
            cfg["use_oe"] = False
    elif args.no_oe:
        raise SystemExit(f"--no-oe: object erasing is SRDL's; model {args.model!r} has none")
    if getattr(args, "adjacency", "learned") != "learned":
        if args.model not in ("mlgcn", "srdl"):
            raise SystemExit(f"--adjacency {args.adjacency}: model {args.model!r} has no label graph (mlgcn, srdl)")
        from .cooccurrence import dataset_cooccurrence, load_adjacency

        if args.adjacency == "cooccurrence":
            cfg["adjacency"] = dataset_cooccurrence(train_ds)
        else:
            cfg["adjacency"] = load_adjacency(args.adjacency, classes)
    return cfg


def train(args) -> dict:
    device, rank, world = _dist_setup(args.device)
    is_main = rank == 0
    log = (lambda *a: print(*a, flush=True)) if (is_main and not args.quiet) else (lambda *a: None)
    progress = is_main and not args.no_progress and not args.quiet
    _seed_everything(args.seed)
    train_ds, val_ds = _datasets(args)
    classes = list(train_ds.classes)

    last_path = os.path.join(args.out, "last.pt")
    ckpt = None
    if args.resume:
        if not os.path.exists(last_path):
            raise SystemExit(f"--resume: {last_path} does not exist (nothing to resume in --out {args.out})")
        ckpt = load_checkpoint(last_path)
        check_compatible(ckpt, class_names=classes, model=args.model, config={"backbone": args.backbone})

    torch.manual_seed(args.seed)  # same initial weights for the same seed, resumed or not
    model = create_model(args.model, len(classes), **_model_cfg(args, classes, train_ds)).to(device)
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.lr_step, gamma=args.lr_gamma)
    use_amp = device.type == "cuda" and args.amp != "off"
    if args.amp == "on" and device.type != "cuda":
        log("--amp on: mixed precision needs CUDA; training in fp32 on", device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, history, best = 0, [], -1.0
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and use_amp:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        history = list(ckpt.get("history", []))
        best = max([h["val"]["mAP"] for h in history if not math.isnan(h["val"]["mAP"])], default=-1.0)
        log(f"resuming {last_path} after epoch {ckpt['epoch'] + 1}")

    if is_main:
        os.makedirs(args.out, exist_ok=True)
        atomic_write_json(os.path.join(args.out, "args.json"), vars(args))
    log(
        f"fastmlr {__version__}: {args.model} ({args.backbone}) on {args.data}: {len(train_ds)} train / "
        f"{len(val_ds)} val images, {len(classes)} classes, device {device}"
        + (f" x{world}" if world > 1 else "")
    )

    from tqdm import tqdm

    log_path = os.path.join(args.out, "log.jsonl")
    for epoch in range(start_epoch, args.epochs):
        _seed_everything(_epoch_seed(args.seed, epoch) + rank)
        loader = _loader(train_ds, args, True, epoch, world, rank)
        train_model.train()
        total_steps = len(loader) if args.max_steps is None else min(len(loader), args.max_steps)
        bar = tqdm(total=total_steps, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not progress,
                   dynamic_ncols=True, leave=False)
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
            ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
            with ctx:
                out = model.forward_train(images) if world == 1 else _ddp_forward(train_model, images)
                loss = model.loss(out, y, ign)
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopping. "
                    f"The last good checkpoint ({last_path}, if any) is kept; try a lower --lr."
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
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

        if is_main:
            val_loader = _loader(val_ds, args, False, epoch, 1, 0)
            s, t, ig, vskip = predict_dataset(model, val_loader, device, progress, desc="validate")
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
            log(
                f"epoch {epoch + 1}/{args.epochs}: loss {rec['train_loss']:.4f}, "
                f"{rec['train_images_per_s']:.1f} img/s, val mAP {100 * m['mAP']:.2f}, CF1 {100 * m['CF1']:.2f}, "
                f"OF1 {100 * m['OF1']:.2f}" + (f", {rec['skipped_images']} unreadable images skipped" if rec["skipped_images"] else "")
            )
            payload = {
                "model": args.model,
                "num_classes": len(classes),
                "config": model.config,
                "class_names": classes,
                "image_size": args.image_size,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if use_amp else None,
                "epoch": epoch,
                "history": history,
                "args": vars(args),
                "versions": {"fastmlr": __version__, "torch": torch.__version__},
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


def _ddp_forward(ddp_model, images):
    # DDP wraps forward(); route forward_train through it so gradients are reduced.
    inner = ddp_model.module
    orig = inner.forward
    inner.forward = inner.forward_train
    try:
        return ddp_model(images)
    finally:
        inner.forward = orig


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = train(args)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["history"] and not args.quiet:
        last = result["history"][-1]
        print(format_metrics_table({f"{args.model} (epoch {last['epoch']})": last["val"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
