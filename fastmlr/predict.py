"""python -m fastmlr.predict: labels and scores for images; --attention-maps draws SRDL's maps (paper fig. 5).

IMAGE may be a file, a folder (its images, sorted, sub-folders included) or a glob
pattern ("photos/*.jpg", quoted so the shell leaves it). A file that cannot be read is
skipped with one line on standard error; the others are still predicted, and the exit
status is then 1. A label is given when its probability reaches its class's threshold.
The thresholds come from, in this order: ``--thresholds FILE.json``, ``--threshold X``
(one for every class), the checkpoint's per-class thresholds (stored by
``evaluate --calibrate-thresholds``), else 0.5 for every class. The first line of
the output (standard error with --json) says which was used. ``--json`` writes JSON
Lines, one record per image, the layout the runtime and the C++ program write
(fastmlr/results.py; export/README.md, "Prediction output").
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import torch

from .checkpoint import atomic_write_bytes, checkpoint_thresholds, load_checkpoint, model_from_checkpoint
from .data import load_image
from .data.transforms import check_regular_file
from .engine import UsageError, backend_flag, check_image_size, resolve_device, run_command
from .figures import draw_attention
from .files import check_distinct
from .results import dumps, error_record, prediction_record
from .thresholds import check_thresholds

DEFAULT_THRESHOLD = 0.5
# What a folder argument contributes (what Pillow reads), and how many rows an attention figure draws.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_FIGURE_ROWS = 16


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders of images, or glob patterns")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threshold", type=float, default=None,
                   help="one threshold for every class (default: the checkpoint's per-class ones, else 0.5)")
    p.add_argument("--thresholds", default=None, metavar="FILE.json",
                   help="per-class thresholds: a JSON list (one per class), or an object with a 'thresholds' list "
                   "(a sidecar, evaluate's JSON)")
    p.add_argument("--top", type=int, default=5, help="text output: also show this many best scores per image")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=16, help="images run together (default 16)")
    p.add_argument("--attention-maps", default=None, metavar="OUT.png",
                   help=f"draw the first {MAX_FIGURE_ROWS} images with the spatial attention of their top-3 categories")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: per image its labels, every probability and the thresholds used")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, help="fastmlr.ops backend")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def thresholds_from_file(path: str, class_names: list[str]) -> list[float]:
    """The per-class thresholds a --thresholds file holds, checked against the model's classes."""
    flag = f"--thresholds {path}"
    try:
        check_regular_file(path)  # a FIFO would block the reader
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{flag}: no such file") from None
    except RecursionError:
        raise UsageError(f"{flag}: its JSON nests too deep") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{flag}: cannot be read as JSON ({e})") from None
    if isinstance(data, dict):
        names = data.get("class_names")
        if names is not None and list(names) != list(class_names):
            raise UsageError(f"{flag}: its class_names differ from the checkpoint's ({len(names)} vs "
                             f"{len(class_names)} classes, or another order)")
        per = data.get("calibrated") or data.get("checkpoint_thresholds") or {}
        data = data.get("thresholds", per.get("thresholds"))
        if data is None:
            raise UsageError(f"{flag}: the object holds no 'thresholds' list (expected a list of "
                             f"{len(class_names)} numbers, or an object with one)")
    try:
        return check_thresholds(data, len(class_names), flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def choose_thresholds(args, ckpt: dict) -> tuple[list[float], str]:
    """(one threshold per class, a line saying where they come from): see the module docstring for the order."""
    names = list(ckpt["class_names"])
    if args.thresholds and args.threshold is not None:
        raise UsageError("--threshold and --thresholds contradict each other; give one")
    if args.thresholds:
        return thresholds_from_file(args.thresholds, names), f"thresholds: per-class, from {args.thresholds}"
    if args.threshold is not None:
        if not 0.0 < args.threshold < 1.0:
            raise UsageError(f"--threshold {args.threshold}: expected a probability in (0, 1)")
        return [args.threshold] * len(names), f"thresholds: {args.threshold:g} for every class (--threshold)"
    stored = checkpoint_thresholds(ckpt)
    if stored is not None:
        fit = ckpt.get("thresholds_fit") or {}
        where = (f"fitted on {fit.get('data')}/{fit.get('split')}, {fit.get('num_images')} images" if fit
                 else "fit unrecorded")
        return stored, f"thresholds: per-class, from the checkpoint {args.checkpoint} ({where})"
    return ([DEFAULT_THRESHOLD] * len(names),
            f"thresholds: {DEFAULT_THRESHOLD:g} for every class (the checkpoint has no per-class thresholds)")


def expand_images(args_images: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image paths, [(argument, why nothing was found)]) for files, folders and glob patterns."""
    found, problems = [], []
    for arg in args_images:
        if os.path.isdir(arg):
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(arg) for f in fs
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            found += files or []
            if not files:
                problems.append((arg, f"folder holds no image ({', '.join(IMAGE_EXTENSIONS)})"))
        elif not os.path.exists(arg) and glob.has_magic(arg):
            files = sorted(f for f in glob.glob(arg, recursive=True) if os.path.isfile(f))
            found += files
            if not files:
                problems.append((arg, "no file matches this pattern"))
        else:
            found.append(arg)
    return found, problems


def predict(args) -> tuple[list[dict], str]:
    """(one record per image: fastmlr.results' layout, or an error record; a line saying which thresholds)."""
    if args.image_size is not None:
        check_image_size(args.image_size)
    if args.attention_maps:  # the picture never replaces an input (an image, the checkpoint)
        check_distinct([(args.attention_maps, "--attention-maps")],
                       [(args.checkpoint, "--checkpoint"), (args.thresholds, "--thresholds"),
                        *[(p, "image") for p in args.images]])
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: expected >= 1")
    device = resolve_device(args.device)
    with backend_flag(args.backend):
        return _predict(args, device)


def _predict(args, device) -> tuple[list[dict], str]:
    ckpt = load_checkpoint(args.checkpoint)
    size = args.image_size or ckpt.get("image_size") or 448
    thresholds, source = choose_thresholds(args, ckpt)
    model = model_from_checkpoint(ckpt).to(device).eval()
    names = list(ckpt["class_names"])
    paths, problems = expand_images(args.images)
    records = [error_record(arg, why) for arg, why in problems]
    figure = {"photos": [], "names": [], "maps": [], "probs": []}
    for i in range(0, len(paths), args.batch_size):
        tensors, kept = [], []
        for path in paths[i : i + args.batch_size]:
            try:
                x, photo = load_image(path, size)
            except ValueError as e:
                records.append(error_record(path, str(e).replace(f"cannot read image {path!r}: ", "")))
                continue
            tensors.append(x)
            kept.append((path, photo))
        if not tensors:
            continue
        batch = torch.stack(tensors).to(device)
        with torch.no_grad():
            probs = torch.sigmoid(model(batch).float()).cpu()
        records += [prediction_record(path, p.tolist(), thresholds, names) for (path, _), p in zip(kept, probs)]
        room = MAX_FIGURE_ROWS - len(figure["photos"])
        if args.attention_maps and room > 0:
            maps = model.attention_maps(batch[:room])
            if maps is None:
                raise UsageError(f"--attention-maps: model {ckpt['model']!r} (config {ckpt['config']}) has no "
                                 f"spatial attention maps")
            figure["photos"] += [ph for _, ph in kept[:room]]
            figure["names"] += [pa for pa, _ in kept[:room]]
            figure["maps"].append(maps.cpu())
            figure["probs"].append(probs[:room])
    if args.attention_maps and figure["photos"]:
        canvas = draw_attention(figure["photos"], figure["names"], torch.cat(figure["maps"]),
                                torch.cat(figure["probs"]), thresholds, names)
        atomic_write_bytes(args.attention_maps, lambda fh: canvas.save(fh, format="PNG"))
    return records, source


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _show(args, *predict(args)), debug=args.debug)


def _show(args, records: list[dict], source: str) -> int:
    print(source, file=sys.stderr if args.json else sys.stdout)
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"skipped {r['image']}: {r['error']}", file=sys.stderr)
    for r in records:
        if args.json:
            print(dumps(r))
        elif "error" not in r:
            probs = r["probabilities"]
            labels = ", ".join(f"{n} ({probs[n]:.2f})" for n in r["labels"]) or "(none above threshold)"
            best = sorted(probs, key=lambda n: -(probs[n] if probs[n] is not None else -1.0))[: args.top]
            print(f"{r['image']}: {labels}\n    top: " + ", ".join(f"{n} {probs[n]:.2f}" for n in best))
    if args.attention_maps and len(records) > len(failed):
        shown = min(MAX_FIGURE_ROWS, len(records) - len(failed))
        print(f"attention maps of {shown} image(s) written to {args.attention_maps}",
              file=sys.stderr if args.json else sys.stdout)
    if failed:
        print(f"{len(failed)} of {len(records)} input(s) could not be read (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
