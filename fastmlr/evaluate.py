"""python -m fastmlr.evaluate: the paper's metric table (and per-class AP) of a checkpoint on a dataset.

The figures are printed before the JSON is written, so a JSON that cannot be
written still leaves them on the screen (and the exit status says it failed).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from .checkpoint import atomic_write_json, check_compatible, load_checkpoint, model_from_checkpoint
from .data import build_dataset, collate_skip
from .engine import UsageError, backend_flag, predict_dataset, resolve_device, run_command
from .metrics import format_metrics_table, format_per_class_ap, multilabel_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a fastmlr checkpoint (last.pt / best.pt)")
    p.add_argument("--data", default="mosaics", help="mosaics | voc | coco | list")
    p.add_argument("--data-root", default=None)
    p.add_argument("--classes-file", default=None, help="list format: class names, one per line")
    p.add_argument("--split", default=None, help="default: test (voc), val (others)")
    p.add_argument("--num-images", type=int, default=1000, help="mosaics: number of images")
    p.add_argument("--seed", type=int, default=None, help="mosaics: seed (default: the training run's validation seed)")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--threshold", type=float, default=0.5)
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
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: expected a positive number of pixels")
    device = resolve_device(args.device)
    with backend_flag(args.backend):
        m = _evaluate(args, device)
    if write:
        write_json(m)
    return m


def write_json(m: dict) -> None:
    try:
        atomic_write_json(m["json"], {k: v for k, v in m.items() if k != "json"})
    except OSError as e:
        raise UsageError(f"--json {m['json']}: cannot be written ({e.strerror or e})") from None


def _evaluate(args, device) -> dict:
    ckpt = load_checkpoint(args.checkpoint)
    size = args.image_size or ckpt.get("image_size") or 448
    kw = {}
    if args.data == "mosaics":
        train_seed = ckpt.get("args", {}).get("seed", 0)
        kw = dict(num_images=args.num_images, seed=args.seed if args.seed is not None else train_seed + 1)
    elif args.data == "list":
        kw["classes_file"] = args.classes_file
    root = args.data_root
    split = args.split or ("test" if args.data == "voc" else "val")
    ds = build_dataset(args.data, root, split=split, image_size=size, train=False, **kw)
    check_compatible(ckpt, class_names=list(ds.classes))
    model = model_from_checkpoint(ckpt).to(device)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip, shuffle=False
    )
    scores, targets, ignore, skipped = predict_dataset(model, loader, device, progress=not args.no_progress)
    m = multilabel_metrics(scores, targets, ignore, threshold=args.threshold)
    m.update(
        checkpoint=os.path.abspath(args.checkpoint), data=args.data, split=split, image_size=size,
        skipped_images=skipped, class_names=list(ds.classes), model=ckpt["model"],
    )
    m["json"] = args.json or os.path.splitext(args.checkpoint)[0] + f".eval-{args.data}-{split}.json"
    return m


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _show(args, evaluate(args, write=False)), debug=args.debug)


def _show(args, m: dict) -> int:
    print(format_metrics_table({f"{m['model']} on {m['data']}/{m['split']}": m}))
    print(f"top-3: CP {100 * m['CP_top3']:.1f}  CR {100 * m['CR_top3']:.1f}  CF1 {100 * m['CF1_top3']:.1f}  "
          f"OP {100 * m['OP_top3']:.1f}  OR {100 * m['OR_top3']:.1f}  OF1 {100 * m['OF1_top3']:.1f}")
    if m["classes_without_positive"]:
        names = [m["class_names"][i] for i in m["classes_without_positive"]]
        print(f"left out of mAP (no positive in this data): {', '.join(names)}")
    if m["skipped_images"]:
        print(f"{m['skipped_images']} unreadable images skipped")
    if args.per_class:
        print(format_per_class_ap(m, m["class_names"]))
    write_json(m)
    print(f"wrote {m['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
