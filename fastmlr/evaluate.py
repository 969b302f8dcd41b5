"""python -m fastmlr.evaluate: the paper's metric table (and per-class AP) of a checkpoint on a dataset.

``--calibrate-thresholds`` also fits one decision threshold per class on this
data (each class's F1-best threshold; classes with fewer than ``--min-positives``
positives keep ``--threshold``: the rule is :mod:`fastmlr.thresholds`'), prints
the metrics at ``--threshold`` and at the fitted thresholds side by side, and
stores the thresholds in the checkpoint (rewritten atomically), from where
export copies them into every sidecar and predict applies them. Without it, a
checkpoint's stored thresholds are measured beside ``--threshold``: evaluate
on other data than the fit's to see what they are worth there.

The figures are printed before the JSON (and the checkpoint) is written, so a
file that cannot be written still leaves them on the screen (and the exit
status says it failed).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .checkpoint import (
    atomic_write_json,
    check_compatible,
    checkpoint_thresholds,
    load_checkpoint,
    model_from_checkpoint,
    store_thresholds,
)
from .data import build_dataset, collate_skip
from .engine import UsageError, backend_flag, check_image_size, predict_dataset, resolve_device, run_command
from .files import check_distinct
from .metrics import format_metrics_table, format_per_class_ap, multilabel_metrics
from .thresholds import MIN_POSITIVES, fit_thresholds, per_class_f1

_COUNTS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a fastmlr checkpoint (last.pt / best.pt)")
    p.add_argument("--data", default=None,
                   help="mosaics | voc | coco | list (default: the model's own validation data, as its run recorded "
                   "it: a list run's held-out share included; mosaics for a checkpoint with no record)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--classes-file", default=None, help="list format: class names, one per line")
    p.add_argument("--split", default=None, help="default: test (voc), val (others)")
    p.add_argument("--num-images", type=int, default=1000, help="mosaics: number of images")
    p.add_argument("--seed", type=int, default=None, help="mosaics: seed (default: the training run's validation seed)")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--threshold", type=float, default=0.5,
                   help="the single decision threshold (and the one kept by classes too rare to calibrate)")
    p.add_argument("--calibrate-thresholds", action="store_true",
                   help="fit one threshold per class on this data (max F1) and store them in the checkpoint")
    p.add_argument("--min-positives", type=int, default=MIN_POSITIVES,
                   help="with --calibrate-thresholds: classes with fewer positives keep --threshold")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, help="fastmlr.ops backend")
    p.add_argument("--json", default=None, help="write every figure here (default: next to the checkpoint)")
    p.add_argument("--per-class", action="store_true", help="print per-class AP")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def evaluate(args, write: bool = True) -> dict:
    """Metrics of ``args.checkpoint`` on the data; ``write``: also write them to the JSON (``m["json"]``)."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected >= 1")
    check_image_size(args.image_size)
    if args.json:  # the figures never replace an input (the checkpoint, a label list)
        check_distinct([(args.json, "--json")], [(args.checkpoint, "--checkpoint"), (args.data_root, "--data-root"),
                                                 (getattr(args, "classes_file", None), "--classes-file")])
    if not 0.0 < args.threshold < 1.0:
        raise UsageError(f"--threshold {args.threshold}: expected a probability in (0, 1)")
    if args.min_positives < 1:
        raise UsageError(f"--min-positives {args.min_positives}: expected >= 1")
    device = resolve_device(args.device)
    with backend_flag(args.backend):
        m = _evaluate(args, device)
    if write:
        write_outputs(args, m)
    return m


def write_outputs(args, m: dict) -> None:
    """The JSON of every figure, and with --calibrate-thresholds the checkpoint with its new thresholds."""
    if "calibrated" in m:
        try:
            store_thresholds(args.checkpoint, m["calibrated"]["thresholds"], m["calibrated"]["fit"])
        except OSError as e:
            raise UsageError(f"--checkpoint {args.checkpoint}: cannot be rewritten with its thresholds "
                             f"({e.strerror or e}); the file is unchanged") from None
    try:
        atomic_write_json(m["json"], {k: v for k, v in m.items() if k != "json"})
    except OSError as e:
        raise UsageError(f"--json {m['json']}: cannot be written ({e.strerror or e})") from None


def _evaluate(args, device) -> dict:
    ckpt = load_checkpoint(args.checkpoint)
    size = args.image_size or ckpt.get("image_size") or 448
    kw = {}
    run = ckpt.get("args") or {}
    own = args.data is None and bool(run.get("data"))
    data = args.data or run.get("data") or "mosaics"
    if own:
        from .data.splits import run_datasets

        _, ds, where = run_datasets(run, image_size=size, train_only_val=True, classes=list(ckpt["class_names"]))
        print(f"data: the model's own {where}", file=sys.stderr)
        root, split = run.get("val_data_root") or run.get("data_root"), "val (the run's own)"
    elif data == "mosaics":
        train_seed = ckpt.get("args", {}).get("seed", 0)
        kw = dict(num_images=args.num_images, seed=args.seed if args.seed is not None else train_seed + 1)
    elif data == "list":
        kw["classes_file"] = args.classes_file
    if not own:
        root = args.data_root
        split = args.split or ("test" if data == "voc" else "val")
        ds = build_dataset(data, root, split=split, image_size=size, train=False, **kw)
    check_compatible(ckpt, class_names=list(ds.classes))
    model = model_from_checkpoint(ckpt).to(device)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip, shuffle=False
    )
    scores, targets, ignore, skipped = predict_dataset(model, loader, device, progress=not args.no_progress)
    m = multilabel_metrics(scores, targets, ignore, threshold=args.threshold)
    m["F1"] = per_class_f1(scores, targets, ignore, args.threshold)
    m.update(
        checkpoint=os.path.abspath(args.checkpoint), data=data, split=split, image_size=size,
        skipped_images=skipped, class_names=list(ds.classes), model=ckpt["model"],
    )
    if args.calibrate_thresholds:
        fit = fit_thresholds(scores, targets, ignore, min_positives=args.min_positives, default=args.threshold)
        where = dict(data=data, data_root=os.path.abspath(root) if root else None, split=split,
                     num_images=m["n_images"], image_size=size, **({"seed": kw["seed"]} if "seed" in kw else {}))
        m["calibrated"] = _at(scores, targets, ignore, fit["thresholds"])
        m["calibrated"]["fit"] = {**where, **{k: fit[k] for k in ("fitted", "positives", "min_positives", "default")},
                                  "rule": "per-class F1-best score threshold (midpoint margin)"}
        m["calibrated"]["replaces"] = ckpt.get("thresholds_fit")
    elif checkpoint_thresholds(ckpt) is not None:
        m["checkpoint_thresholds"] = _at(scores, targets, ignore, checkpoint_thresholds(ckpt))
        m["checkpoint_thresholds"]["fit"] = ckpt.get("thresholds_fit") or {}
    m["json"] = args.json or os.path.splitext(args.checkpoint)[0] + f".eval-{data}-{split.split()[0]}.json"
    return m


def _at(scores, targets, ignore, thresholds) -> dict:
    """The thresholded metrics and per-class F1 at per-class ``thresholds``."""
    at = multilabel_metrics(scores, targets, ignore, threshold=thresholds)
    return {**{k: at[k] for k in _COUNTS}, "thresholds": at["threshold"],
            "F1": per_class_f1(scores, targets, ignore, thresholds)}


def _fit_desc(fit: dict) -> str:
    if not fit:
        return "fitted on unrecorded data"
    seed = f", seed {fit['seed']}" if fit.get("seed") is not None else ""
    return f"fitted on {fit.get('data')}/{fit.get('split')} ({fit.get('num_images')} images{seed})"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


def run(args) -> int:
    """The command's work: evaluate, print the figures, then write the JSON (and the checkpoint's thresholds)."""
    return _show(args, evaluate(args, write=False))


def _show(args, m: dict) -> int:
    title = f"{m['model']} on {m['data']}/{m['split']}"
    per = m.get("calibrated") or m.get("checkpoint_thresholds")
    if per is None:
        print(format_metrics_table({title: m}))
    else:
        other = "per-class, fitted here" if "calibrated" in m else "per-class, checkpoint's"
        print(f"{title}, {m['n_images']} images")
        print(format_metrics_table({f"threshold {args.threshold:g}": m, other: {**per, "mAP": m["mAP"]}}))
    print(f"top-3: CP {100 * m['CP_top3']:.1f}  CR {100 * m['CR_top3']:.1f}  CF1 {100 * m['CF1_top3']:.1f}  "
          f"OP {100 * m['OP_top3']:.1f}  OR {100 * m['OR_top3']:.1f}  OF1 {100 * m['OF1_top3']:.1f}")
    if m["classes_without_positive"]:
        names = [m["class_names"][i] for i in m["classes_without_positive"]]
        print(f"left out of mAP (no positive in this data): {', '.join(names)}")
    if m["skipped_images"]:
        print(f"{m['skipped_images']} unreadable images skipped")
    if args.per_class:
        print(format_per_class_ap(m, m["class_names"]) if per is None else _per_class_table(args, m, per))
    if "calibrated" in m:
        fit = m["calibrated"]["fit"]
        kept = [m["class_names"][c] for c, f in enumerate(fit["fitted"]) if not f]
        print(f"per-class thresholds {_fit_desc(fit)}: {len(fit['fitted']) - len(kept)} of {len(fit['fitted'])} "
              f"classes fitted" + (f"; kept {args.threshold:g} (fewer than {args.min_positives} positives): "
                                   f"{', '.join(kept)}" if kept else ""))
        print("  the per-class column is measured on the images it was fitted on (optimistic); measure it on "
              "other data by running evaluate again with another --split (mosaics: --seed)")
    elif per is not None:
        print(f"checkpoint's per-class thresholds: {_fit_desc(per['fit'])}")
    write_outputs(args, m)
    if "calibrated" in m:
        old = m["calibrated"]["replaces"]
        print(f"stored {len(m['calibrated']['thresholds'])} thresholds in {args.checkpoint}"
              + (f" (replacing those {_fit_desc(old)})" if old else "")
              + "; python -m fastmlr.export copies them into every sidecar")
    print(f"wrote {m['json']}")
    return 0


def _per_class_table(args, m: dict, per: dict) -> str:
    """Per class: AP, F1 at the single threshold, the per-class threshold and F1 there."""
    fitted = per.get("fit", {}).get("fitted")
    lines = [f"| class | AP (%) | F1 (%) at {args.threshold:g} | threshold | F1 (%) at its threshold |",
             "|---|---:|---:|---:|---:|"]
    for c, name in enumerate(m["class_names"]):
        ap = m["AP"][c]
        ap_s = "n/a (no positive)" if ap != ap else f"{100 * ap:.1f}"
        kept = " (kept)" if fitted is not None and not fitted[c] else ""
        lines.append(f"| {name} | {ap_s} | {100 * m['F1'][c]:.1f} | {per['thresholds'][c]:.3f}{kept} | "
                     f"{100 * per['F1'][c]:.1f} |")
    lines.append(f"| **mAP** | {100 * m['mAP']:.1f} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
