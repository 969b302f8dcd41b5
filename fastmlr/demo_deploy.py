"""The demo's deployment step: export a trained checkpoint, check every artefact, time them beside PyTorch eager."""

from __future__ import annotations

import os
import time

import torch

from .deploy.aoti import export_aoti, verify_aoti
from .deploy.contract import make_sidecar
from .deploy.fp16 import format_report as fp16_lines
from .deploy.onnx import export_onnx, export_onnx_fp16, verify_onnx
from .deploy.verify import measure_latency, real_images
from .export import format_report


def demo_deployment(checkpoint: str, out_dir: str, image_size: int | None = None, batches=(1, 8),
                    repeats: int = 10) -> dict:
    """Export a checkpoint to ONNX (fp32, fp16) and AOTInductor, check each, and time them beside PyTorch eager.

    The files are ``OUT_DIR/<model>.onnx``, ``<model>.fp16.onnx`` and ``<model>.pt2``.
    Returns {"reports": [...], "latency_ms": {runner: {batch: ms}}, "paths": {...}}; prints both.
    """
    from . import runtime
    from .checkpoint import checkpoint_thresholds, load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    size = int(image_size or ckpt.get("image_size") or 448)
    model = model_from_checkpoint(ckpt).eval()
    per_class = checkpoint_thresholds(ckpt)
    side = make_sidecar(model, size, thresholds=per_class)
    max_batch = max(batches)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, side["model"])
    paths = {"onnx fp32": stem + ".onnx", "onnx fp16": stem + ".fp16.onnx", "aoti": stem + ".pt2"}
    real, _ = real_images(size, n=max_batch, model=model)
    print(f"\n== deployment: exporting {checkpoint} ({size} px) to {out_dir}; thresholds: "
          + (f"per-class, {len(per_class)} from the checkpoint ==" if per_class else "0.5 for every class =="),
          flush=True)
    reports = []
    for kind, path in paths.items():
        t0 = time.perf_counter()
        if kind == "aoti":
            export_aoti(model, path, size, max_batch=max_batch, sidecar=side)
            reports.append(verify_aoti(path, model, size, real=real, max_batch=max_batch))
        else:
            fp16 = kind.endswith("fp16")
            if fp16:
                search = export_onnx_fp16(model, path, size, images=real, opt_batch=min(batches), max_batch=max_batch,
                                          sidecar=side)
                print("\n".join(fp16_lines(search)), flush=True)
            else:
                export_onnx(model, path, size, opt_batch=min(batches), max_batch=max_batch, sidecar=side)
            reports.append(verify_onnx(path, model, size, fp16=fp16, real=real, max_batch=max_batch))
        print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
        print(format_report(reports[-1]), flush=True)
    fns = {"pytorch eager": lambda x: torch.sigmoid(model(x))}
    for kind, path in paths.items():
        fns[kind] = runtime.load(path).predict
    g = torch.Generator().manual_seed(0)
    lat = {}
    with torch.no_grad():
        for name, fn in fns.items():
            lat[name] = {b: measure_latency(fn, torch.randn(b, 3, size, size, generator=g), repeats) for b in batches}
    header = "| runner (CPU, %d threads) | " % torch.get_num_threads() + " | ".join(f"batch {b} (ms)" for b in batches) + " |"
    print("\n" + header + "\n|---|" + "---:|" * len(batches))
    for name, row in lat.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.1f}" for b in batches) + " |")
    return {"reports": reports, "latency_ms": lat, "paths": paths}
