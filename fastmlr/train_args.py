"""The flags of ``python -m fastmlr.train`` and their checks, done before any data is read.

Every check answers with a :class:`~fastmlr.engine.UsageError` that names the flag (or
file, or folder) and what was expected. Model options reach the model through the
registry: ``OPTION_FLAGS`` maps each option name a model may declare
(``register_model(..., options=...)``) to the flag that sets it, and a flag given for a
model that does not declare its option is refused; no model is named here.
"""

from __future__ import annotations

import argparse
import math
import os

from .engine import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, UsageError, check_image_size
from .files import creatable_folder_problem

# Optimisation defaults (SRDL paper, section 4.2). On --resume, a flag left out takes the
# checkpoint's value instead, so args.json always records what the run used.
OPTIM_DEFAULTS = {"lr": 1e-5, "lr_step": 10, "lr_gamma": 0.1, "weight_decay": 5e-4}

# Model option -> (flag, value from the parsed args or None when the flag was not given).
OPTION_FLAGS = {
    "oe_k": ("--oe-k", lambda a: a.oe_k),
    "oe_alpha": ("--oe-alpha", lambda a: a.oe_alpha),
    "use_oe": ("--no-oe", lambda a: False if a.no_oe else None),
}

# What a training run writes into --out.
RUN_FILES = ("last.pt", "best.pt", "log.jsonl", "metrics.json", "args.json")

# Adam's useful learning rates are far below this; above it the weights only overflow.
MAX_LR = 1.0


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.train", description=description)
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
    a.add_argument("--no-oe", action="store_true", help="without object erasing (models with option use_oe)")
    a.add_argument("--oe-k", type=int, default=None, help="object erasing's top-K (option oe_k; model default 3)")
    a.add_argument("--oe-alpha", type=float, default=None,
                   help="object erasing's threshold in (0, 1] (option oe_alpha; model default 0.5)")
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
    d.add_argument("--image-size", type=int, default=448, help=f"input side in pixels ({MIN_IMAGE_SIZE} .. {MAX_IMAGE_SIZE})")
    d.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    o = p.add_argument_group("optimisation (paper 4.2; on --resume, left-out flags keep the checkpoint's values)")
    o.add_argument("--epochs", type=int, default=20)
    o.add_argument("--batch-size", type=int, default=16)
    o.add_argument("--lr", type=float, default=None, help=f"default {OPTIM_DEFAULTS['lr']}")
    o.add_argument("--lr-step", type=int, default=None,
                   help=f"divide lr by --lr-gamma every this many epochs (default {OPTIM_DEFAULTS['lr_step']})")
    o.add_argument("--lr-gamma", type=float, default=None, help=f"default {OPTIM_DEFAULTS['lr_gamma']}")
    o.add_argument("--weight-decay", type=float, default=None, help=f"default {OPTIM_DEFAULTS['weight_decay']}")
    o.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke runs)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision: CUDA float16 autocast with loss scaling, CPU bfloat16 autocast; auto = on for CUDA only")
    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/train", help="output folder: " + ", ".join(RUN_FILES))
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    r.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    r.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--quiet", action="store_true", help="only the final table")
    r.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


def check_args(args) -> None:
    """Refuse flags that cannot give a meaningful run, before any data or model is built."""
    from .data import DATASETS
    from .models import BACKBONES, model_info

    try:
        info = model_info(args.model)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    _need(args.backbone in BACKBONES, f"--backbone {args.backbone}: unknown backbone; known: {', '.join(BACKBONES)}")
    if args.ablation is not None:
        _need(bool(info.ablations), f"--ablation {args.ablation}: model {args.model!r} has no ablation presets")
        _need(args.ablation in info.ablations,
              f"--ablation {args.ablation}: unknown for model {args.model!r}; known: {', '.join(info.ablations)}")
    for option, (flag, value) in OPTION_FLAGS.items():
        if value(args) is not None and option not in info.options:
            takes = ", ".join(info.options) or "none"
            raise UsageError(f"{flag}: model {args.model!r} takes no option {option!r} (its options: {takes})")
    if args.adjacency != "learned":
        _need("adjacency" in info.options, f"--adjacency {args.adjacency}: model {args.model!r} has no label graph to set")
        _need(args.adjacency == "cooccurrence" or os.path.isfile(args.adjacency),
              f"--adjacency {args.adjacency}: expected learned, cooccurrence or an existing file")
    _need(args.oe_k is None or args.oe_k >= 1, f"--oe-k {args.oe_k}: expected an integer >= 1")
    _need(args.oe_alpha is None or 0.0 < args.oe_alpha <= 1.0, f"--oe-alpha {args.oe_alpha}: expected a value in (0, 1]")
    _need(args.data in DATASETS, f"--data {args.data}: unknown dataset; known: {', '.join(DATASETS)}")
    if args.data in ("mosaics", "scenes"):
        _need(args.train_size >= 1, f"--train-size {args.train_size}: expected >= 1 image")
        _need(args.val_size >= 1, f"--val-size {args.val_size}: expected >= 1 image")
    elif args.data_root is None:
        raise UsageError(f"--data {args.data} needs --data-root (its folder, or the JSONL file for 'list')")
    _need(args.data != "list" or args.classes_file is not None, "--data list needs --classes-file (one class a line)")
    check_image_size(args.image_size)
    _need(args.batch_size >= 1, f"--batch-size {args.batch_size}: expected >= 1")
    _need(args.epochs >= 1, f"--epochs {args.epochs}: nothing would be trained; expected >= 1")
    _need(args.max_steps is None or args.max_steps >= 1, f"--max-steps {args.max_steps}: no step would run; expected >= 1")
    _need(args.workers >= 0, f"--workers {args.workers}: expected >= 0")
    if args.lr is not None:
        _need(math.isfinite(args.lr) and 0.0 < args.lr <= MAX_LR,
              f"--lr {args.lr}: expected a learning rate in (0, {MAX_LR}] (the paper's is 1e-5; "
              f"larger ones make Adam's weights overflow)")
    _need(args.lr_step is None or args.lr_step >= 1, f"--lr-step {args.lr_step}: expected >= 1 epoch")
    _need(args.lr_gamma is None or (math.isfinite(args.lr_gamma) and 0.0 < args.lr_gamma <= 1.0),
          f"--lr-gamma {args.lr_gamma}: expected a factor in (0, 1]")
    _need(args.weight_decay is None or (math.isfinite(args.weight_decay) and args.weight_decay >= 0.0),
          f"--weight-decay {args.weight_decay}: expected >= 0")
    if args.weights not in (None, "none", "imagenet"):
        _need(os.path.isfile(args.weights), f"--weights {args.weights}: no such file (or use 'imagenet' / 'none')")
    _need(not (args.resume and args.overwrite), "--resume and --overwrite contradict each other; give one")
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} is a file; expected a folder for {', '.join(RUN_FILES)}")
    problem = creatable_folder_problem(out)
    if problem:
        raise UsageError(f"--out {out}: {problem}, so the run's folder cannot be created")


def check_earlier_run(args) -> None:
    """--out holds no earlier run unless --resume or --overwrite asks for it (checked holding the folder's lock)."""
    out = args.out
    found = earlier_run(out)
    if found and not (args.resume or args.overwrite):
        raise UsageError(
            f"--out {out} holds an earlier run ({', '.join(found)}); pass --resume to continue it "
            f"or --overwrite to replace it"
        )


def earlier_run(out: str) -> list[str]:
    """The files of a training run that ``out`` holds."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]


def resolve_optim(args, ckpt: dict | None) -> list[str]:
    """Fill the optimisation flags left out: the defaults, or on --resume the checkpoint's values.

    Returns, for a resumed run, one line per flag given with a value other than the
    checkpoint's (the value the run continues with from now on).
    """
    before = dict(ckpt.get("args") or {}) if ckpt is not None else {}
    changed = []
    for key, default in OPTIM_DEFAULTS.items():
        given = getattr(args, key)
        recorded = before.get(key, default)
        if given is None:
            setattr(args, key, recorded if ckpt is not None else default)
        elif ckpt is not None and given != recorded:
            changed.append(f"--{key.replace('_', '-')} {given} (the checkpoint's run used {recorded})")
    return changed
