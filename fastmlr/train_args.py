"""The flags of ``python -m fastmlr.train`` and their checks, done before any data is read.

Every check answers with a :class:`~fastmlr.engine.UsageError` that names the flag (or
file, or folder) and what was expected. Model options reach the model through the
registry: ``OPTION_FLAGS`` maps each option name a model may declare
(``register_model(..., options=...)``) to the flag that sets it, and a flag given for a
model that does not declare its option is refused; no model is named here.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from .checkpoint import check_compatible, load_checkpoint
from .engine import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, UsageError, check_image_size
from .files import creatable_folder_problem

# Every flag that shapes the run, with its default. Left out, a flag takes its default, or on
# --resume the run's recorded value. DEFINING flags fix the data and the model: on --resume a
# different value is refused (the checkpoint's weights and random streams belong to the recorded
# one); the location flags among them may name the same data in another place (checked by the
# data's fingerprint). CHANGEABLE flags may differ on --resume: the new value is applied and recorded.
# The defaults follow the SRDL paper (section 4.2).
DEFINING = {
    "model": "srdl", "backbone": "resnet101", "weights": None, "embeddings": None, "ablation": None,
    "no_oe": False, "oe_k": None, "oe_alpha": None, "adjacency": None,
    "data": "mosaics", "data_root": None, "classes_file": None, "val_data_root": None,
    "train_split": None, "val_split": None, "val_fraction": 0.2,
    "train_size": 4000, "val_size": 1000, "image_size": 448, "seed": 0,
}  # fmt: skip
LOCATIONS = ("data_root", "classes_file", "val_data_root")
CHANGEABLE = {
    "epochs": 20, "batch_size": 16, "lr": 1e-5, "lr_step": 10, "lr_gamma": 0.1, "weight_decay": 5e-4,
    "max_steps": None, "amp": "auto", "workers": min(4, os.cpu_count() or 1), "backend": None, "device": None,
}  # fmt: skip
# The optimiser's flags: a change on --resume is carried into the restored optimiser and schedule.
OPTIM_FLAGS = ("lr", "lr_step", "lr_gamma", "weight_decay")

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
    # The run's flags are left out of the namespace when not given (SUPPRESS); resolve_flags fills them
    # from DEFINING / CHANGEABLE, or on --resume from the run, so a given flag is told from a default.
    p = argparse.ArgumentParser(prog="python -m fastmlr.train", description=description,
                                argument_default=argparse.SUPPRESS)
    a = p.add_argument_group("model (on --resume, the run's values; a different one is refused)")
    a.add_argument("--model", help="registered model name (fastmlr.models.list_models()); default srdl")
    a.add_argument("--backbone", help="resnet18 | resnet50 | resnet101 | mobilenet_v2; default resnet101")
    a.add_argument(
        "--weights",
        help="backbone ImageNet weights: a torchvision state-dict file, 'imagenet' for packaged ones "
        "(mobilenet_v2), or 'none' (default: 'imagenet' when packaged, else none)",
    )
    a.add_argument("--embeddings",
                   help="label embedding source (see fastmlr.labels); default glove50 (the packaged GloVe) "
                   "where installed, else random, said in one line")
    a.add_argument(
        "--ablation",
        help="ablation preset of the model (SRDL: car, car_no_gcn, car_no_ca, car_no_sa, car_oe; "
        "AAMN/MMDSR: see docs/models/)",
    )
    a.add_argument("--no-oe", action="store_true", help="without object erasing (models with option use_oe)")
    a.add_argument("--oe-k", type=int, help="object erasing's top-K (option oe_k; model default 3)")
    a.add_argument("--oe-alpha", type=float, help="object erasing's threshold in (0, 1] (option oe_alpha; model default 0.5)")
    a.add_argument(
        "--adjacency",
        help="label graph of mlgcn / srdl: learned, cooccurrence (ML-GCN's correlation matrix from the "
        "training labels; SRDL: V's initialisation), or a file of python -m fastmlr.cooccurrence; "
        "default: the model's own (mlgcn: cooccurrence, as published; srdl: learned)",
    )
    a.add_argument("--backend", help="fastmlr.ops backend (default: fastest for the device)")
    d = p.add_argument_group("data (on --resume, the run's values; a different one is refused)")
    d.add_argument("--data", help="mosaics | scenes | voc | coco | list (default mosaics)")
    d.add_argument("--data-root",
                   help="dataset folder (voc, coco), labels file (list: JSON Lines; image paths relative to it), "
                   "idx folder (mosaics)")
    d.add_argument("--classes-file", help="class names, one per line (list; default: the labels found, sorted)")
    d.add_argument("--train-split", help="default: trainval (voc), train (others)")
    d.add_argument("--val-split", help="default: test (voc), val (others)")
    d.add_argument("--val-data-root",
                   help="labels file for validation (list; default: --val-fraction of --data-root, chosen by --seed)")
    d.add_argument("--val-fraction", type=float,
                   help="list without --val-data-root: share of the images held out for validation (default 0.2)")
    d.add_argument("--train-size", type=int, help="mosaics, scenes: number of training images (default 4000)")
    d.add_argument("--val-size", type=int, help="mosaics, scenes: number of validation images (default 1000)")
    d.add_argument("--image-size", type=int, help=f"input side in pixels ({MIN_IMAGE_SIZE} .. {MAX_IMAGE_SIZE}; default 448)")
    d.add_argument("--seed", type=int, help="seed of the weights, the data order and generated data (default 0)")
    o = p.add_argument_group("optimisation (paper 4.2; on --resume, left-out flags keep the run's values, "
                             "given ones are applied and recorded)")
    o.add_argument("--epochs", type=int, help="default 20")
    o.add_argument("--batch-size", type=int, help="default 16")
    o.add_argument("--lr", type=float, help=f"default {CHANGEABLE['lr']}")
    o.add_argument("--lr-step", type=int,
                   help=f"divide lr by --lr-gamma every this many epochs (default {CHANGEABLE['lr_step']})")
    o.add_argument("--lr-gamma", type=float, help=f"default {CHANGEABLE['lr_gamma']}")
    o.add_argument("--weight-decay", type=float, help=f"default {CHANGEABLE['weight_decay']}")
    o.add_argument("--max-steps", type=int, help="stop each epoch after this many steps (smoke runs)")
    o.add_argument("--amp", choices=["auto", "on", "off"],
                   help="mixed precision: CUDA float16 autocast with loss scaling, CPU bfloat16 autocast; "
                   "auto (default) = on for CUDA only")
    o.add_argument("--workers", type=int, help=f"data loading processes (default {CHANGEABLE['workers']})")
    o.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda if present)")
    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/train", help="output folder: " + ", ".join(RUN_FILES))
    r.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out from its last.pt, with its flags (a run stopped before its "
                   "first epoch starts again from its args.json)")
    r.add_argument("--overwrite", action="store_true", default=False, help="replace an earlier run in --out")
    r.add_argument("--no-progress", action="store_true", default=False, help="no progress bars")
    r.add_argument("--quiet", action="store_true", default=False,
                   help="no per-epoch lines or bars: only errors and the final table")
    r.add_argument("--debug", action="store_true", default=False, help="show the traceback of an error")
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
    if args.adjacency is None:  # the model's own graph: its registry default (ML-GCN's published co-occurrence)
        args.adjacency = info.defaults.get("adjacency", "learned")
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
    _need(0.0 < args.val_fraction < 1.0, f"--val-fraction {args.val_fraction}: expected a share in (0, 1)")
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
    check_out(args)


def check_out(args) -> None:
    """--out must be (or be creatable as) a writable folder."""
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


def _same_place(a, b) -> bool:
    return a == b or (a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b))


def resolve_flags(args, recorded: dict | None) -> list[str]:
    """Fill the run's flags left out: the defaults, or on --resume the run's ``recorded`` values.

    A DEFINING flag given with another value than the run's is refused (a location flag may name
    the same data elsewhere: the data's fingerprint is checked once it is read). Returns, for a
    resumed run, one line per CHANGEABLE flag given with a new value (applied and recorded).
    """
    changed = []
    for table in (DEFINING, CHANGEABLE):
        for key, default in table.items():
            flag = "--" + key.replace("_", "-")
            have = recorded.get(key, default) if recorded is not None else default
            if not hasattr(args, key):
                setattr(args, key, have)
                continue
            given = getattr(args, key)
            if recorded is None or given == have or (key in LOCATIONS and _same_place(given, have)):
                continue
            if key in LOCATIONS:
                changed.append(f"{flag} {given} (the run read {have}; checked to hold the same data)")
            elif table is DEFINING:
                raise UsageError(
                    f"--resume: {flag} {given} differs from the run's {have!r}, which defines its "
                    f"{'data' if key in _DATA_KEYS else 'model'}; resume with the run's value (leave the flag "
                    f"out) or start a new run in another --out"
                )
            else:
                changed.append(f"{flag} {given} (the run used {have})")
    for key in LOCATIONS:  # recorded as absolute paths: a resume from another folder reads the same files
        if getattr(args, key) is not None and os.path.exists(getattr(args, key)):
            setattr(args, key, os.path.abspath(getattr(args, key)))
    return changed


_DATA_KEYS = {"data", "data_root", "classes_file", "val_data_root", "train_split", "val_split", "val_fraction",
              "train_size", "val_size", "image_size", "seed"}


def recorded_run(args) -> tuple[dict | None, dict | None, str | None]:
    """On --resume: (OUT/last.pt or None, the run's recorded flags, a line to say, or None).

    A run stopped before its first epoch ended has an args.json and no last.pt: it starts again
    from epoch 1 with those flags (said in one line). A folder with neither is refused.
    """
    if not args.resume:
        return None, None, None
    last = os.path.join(args.out, "last.pt")
    if os.path.exists(last):
        ckpt = load_checkpoint(last)
        if ckpt.get("epoch") is None or "optimizer" not in ckpt:
            raise UsageError(f"--resume: {last} holds a model but no training state (optimizer, epoch)")
        return ckpt, dict(ckpt.get("args") or {}), None
    recorded = os.path.join(args.out, "args.json")
    if not os.path.exists(recorded):
        raise UsageError(f"--resume: {last} does not exist and {args.out} holds no args.json: there is no run "
                         f"to resume here; leave out --resume to start one")
    try:
        with open(recorded) as fh:
            flags = json.load(fh)
        assert isinstance(flags, dict)
    except (OSError, ValueError, AssertionError) as e:
        raise UsageError(f"--resume: {recorded} cannot be read as the run's flags ({e}); use --overwrite") from None
    return None, flags, (f"--resume: {args.out} holds no last.pt (the run stopped before its first epoch ended); "
                         f"starting it at epoch 1 with the flags in {recorded}")


def resolve(args):
    """Every flag filled and checked; returns (checkpoint to resume or None, lines of changed flags, a note)."""
    _need(not (args.resume and args.overwrite), "--resume and --overwrite contradict each other; give one")
    ckpt, recorded, note = recorded_run(args)
    changed = resolve_flags(args, recorded)
    check_args(args)
    if ckpt is not None:
        check_compatible(ckpt, model=args.model, config={"backbone": args.backbone})
        if ckpt["epoch"] + 1 >= args.epochs:
            raise UsageError(
                f"--resume: {ckpt['path']} already holds {ckpt['epoch'] + 1} epochs; --epochs {args.epochs} "
                f"leaves nothing to train (raise --epochs)"
            )
    return ckpt, changed, note


def kept_thresholds(ckpt, out) -> dict:
    """Calibrated thresholds a resumed run carries on: last.pt's, else best.pt's (``evaluate --calibrate-thresholds``)."""
    if ckpt is None:
        return {}
    for source in (ckpt, os.path.join(out, "best.pt")):
        if isinstance(source, str):
            if not os.path.exists(source):
                continue
            source = load_checkpoint(source)
        if source.get("thresholds") is not None:
            return {"thresholds": list(source["thresholds"]), "thresholds_fit": dict(source.get("thresholds_fit") or {})}
    return {}
