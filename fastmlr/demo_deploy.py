"""The demo's deployment step: export a trained checkpoint, check every artefact, time them beside PyTorch eager."""

from __future__ import annotations

import os

import torch

from .artifact.contract import make_sidecar
from .deploy.pipeline import ExportPlan, export_artefacts
from .deploy.verify import measure_latency, real_images


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
    plan = ExportPlan(model, size, side, onnx32=paths["onnx fp32"], onnx16=paths["onnx fp16"], aoti=paths["aoti"],
                      opt_batch=min(batches), max_batch=max_batch, real=real, inputs=[(checkpoint, "checkpoint")],
                      flags={"onnx32": "onnx fp32", "onnx16": "onnx fp16", "aoti": "aoti"})
    reports = export_artefacts(plan).reports
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
