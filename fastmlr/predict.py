"""python -m fastmlr.predict: labels and scores for images; --attention-maps draws SRDL's maps (paper fig. 5).

A label is given when its probability reaches its class's threshold. The
thresholds come from, in this order: ``--thresholds FILE.json``, ``--threshold X``
(one for every class), the checkpoint's per-class thresholds (stored by
``evaluate --calibrate-thresholds``), else 0.5 for every class. The first line of
the output (standard error with --json) says which was used.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .checkpoint import atomic_write_bytes, checkpoint_thresholds, load_checkpoint, model_from_checkpoint
from .data import denormalize, load_image
from .data.transforms import check_regular_file
from .files import check_distinct
from .engine import UsageError, backend_flag, check_image_size, resolve_device, run_command
from .thresholds import check_thresholds

DEFAULT_THRESHOLD = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.predict", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threshold", type=float, default=None,
                   help="one threshold for every class (default: the checkpoint's per-class ones, else 0.5)")
    p.add_argument("--thresholds", default=None, metavar="FILE.json",
                   help="per-class thresholds: a JSON list (one per class), or an object with a 'thresholds' list "
                   "(a sidecar, evaluate's JSON)")
    p.add_argument("--top", type=int, default=5, help="also show this many best scores per image")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--attention-maps", default=None, metavar="OUT.png",
                   help="draw each image with the spatial attention of its top-3 categories")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, help="fastmlr.ops backend")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _heat(v: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] (Tensor[H, W]) -> RGB (Tensor[3, H, W]) on a blue-green-yellow-red ramp."""
    r = (1.5 - (4 * v - 3).abs()).clamp(0, 1)
    g = (1.5 - (4 * v - 2).abs()).clamp(0, 1)
    b = (1.5 - (4 * v - 1).abs()).clamp(0, 1)
    return torch.stack([r, g, b])


def draw_attention(images: torch.Tensor, maps: torch.Tensor, probs: torch.Tensor, class_names, k: int = 3,
                   tile: int = 192) -> Image.Image:
    """One row per image: the image, then its top-k categories' spatial attention over it.

    images (Tensor[N, 3, S, S]) normalised; maps (Tensor[N, C, h, w]); probs (Tensor[N, C]).
    """
    N = images.shape[0]
    k = min(k, probs.shape[1])
    pad = 18
    canvas = Image.new("RGB", ((k + 1) * tile, N * (tile + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for n in range(N):
        img = denormalize(images[n]).clamp(0, 1)
        img = F.interpolate(img[None], size=(tile, tile), mode="bilinear", align_corners=False)[0]
        y = n * (tile + pad)
        canvas.paste(Image.fromarray((img.permute(1, 2, 0) * 255).byte().numpy()), (0, y + pad))
        draw.text((2, y + 2), "input", fill="black")
        top = probs[n].topk(k).indices
        for j, c in enumerate(top.tolist()):
            m = F.interpolate(maps[n, c][None, None].float(), size=(tile, tile), mode="bilinear", align_corners=False)[0, 0]
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-6)
            blend = 0.5 * img + 0.5 * _heat(m)
            canvas.paste(Image.fromarray((blend.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()),
                         ((j + 1) * tile, y + pad))
            draw.text(((j + 1) * tile + 2, y + 2), f"{class_names[c]} {probs[n, c]:.2f}", fill="black")
    return canvas


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


def predict(args) -> list[dict]:
    check_image_size(args.image_size)
    if args.attention_maps:  # the picture never replaces an input (an image, the checkpoint)
        check_distinct([(args.attention_maps, "--attention-maps")],
                       [(args.checkpoint, "--checkpoint"), (args.thresholds, "--thresholds"),
                        *[(p, "image") for p in args.images]])
    device = resolve_device(args.device)
    with backend_flag(args.backend):
        return _predict(args, device)


def _predict(args, device) -> list[dict]:
    ckpt = load_checkpoint(args.checkpoint)
    size = args.image_size or ckpt.get("image_size") or 448
    thresholds, args.threshold_source = choose_thresholds(args, ckpt)
    model = model_from_checkpoint(ckpt).to(device).eval()
    names = ckpt["class_names"]
    tensors = [load_image(p, size)[0] for p in args.images]
    batch = torch.stack(tensors).to(device)
    with torch.no_grad():
        probs = torch.sigmoid(model(batch).float()).cpu()
    results = []
    for path, p in zip(args.images, probs):
        order = p.argsort(descending=True).tolist()
        results.append({
            "image": path,
            "labels": [{"label": names[c], "score": round(float(p[c]), 4), "threshold": thresholds[c]}
                       for c in order if float(p[c]) >= thresholds[c]],
            "top": [{"label": names[c], "score": round(float(p[c]), 4)} for c in order[: args.top]],
        })
    if args.attention_maps:
        maps = model.attention_maps(batch)
        if maps is None:
            raise ValueError(
                f"--attention-maps: model {ckpt['model']!r} (config {ckpt['config']}) has no spatial attention maps"
            )
        canvas = draw_attention(batch.cpu(), maps.cpu(), probs, names)
        fmt = "PNG" if args.attention_maps.lower().endswith(".png") else None
        atomic_write_bytes(args.attention_maps, lambda fh: canvas.save(fh, format=fmt or "PNG"))
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _show(args, predict(args)), debug=args.debug)


def _show(args, results: list[dict]) -> int:
    print(args.threshold_source, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            labels = ", ".join(f"{x['label']} ({x['score']:.2f})" for x in r["labels"]) or "(none above threshold)"
            top = ", ".join(f"{x['label']} {x['score']:.2f}" for x in r["top"])
            print(f"{r['image']}: {labels}\n    top: {top}")
    if args.attention_maps:
        print(f"attention maps written to {args.attention_maps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
