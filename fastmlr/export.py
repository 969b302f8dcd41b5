"""python -m fastmlr.export: ONNX (fp32, fp16), TensorRT, AOTInductor and Triton artefacts of a model.

Every artefact ``X`` gets a JSON sidecar ``X.json`` (class names, input size,
mean/std, threshold, the checkpoint's per-class thresholds when it has them
(``evaluate --calibrate-thresholds`` stores them), model config, batch range,
versions and the artefact's sha256) that :func:`fastmlr.runtime.load` checks before running it. After
writing each artefact the command checks it and prints a report: the ONNX
checker (full check), the graph's op types against TensorRT's ONNX parser,
and the largest probability difference from PyTorch on random and real
images.

This module is the command only: the builders and checks are in
:mod:`fastmlr.deploy` (the artefact contract in :mod:`fastmlr.deploy.contract`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch
import torch.nn as nn

from .checkpoint import CheckpointMismatch
from .deploy import probe
from .deploy.aoti import AOTI_OPS, default_aoti_ops, export_aoti, verify_aoti
from .deploy.contract import make_sidecar, sidecar_path
from .deploy.graph import check_batch_range
from .deploy.fp16 import format_report as fp16_lines
from .deploy.onnx_ops import DEFAULT_OP_SET, OP_SETS
from .deploy.onnx import DEFAULT_OPSET, export_onnx, export_onnx_fp16, fp16_map_check, verify_onnx
from .deploy.probe import TRTUnavailable
from .deploy.triton_repo import repo_files, write_triton_repo
from .deploy.trt import build_trt_engine, trtexec_command
from .deploy.trt_plugins import plugins_available
from .deploy.verify import FP16_MAP_POINTS, real_images
from .files import check_targets, remove_stale_temps


# -- the command --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastmlr.export", description=__doc__.splitlines()[0])
    src = p.add_argument_group("model (a checkpoint, or a randomly initialised model for latency work)")
    src.add_argument("--checkpoint", default=None)
    src.add_argument("--model", default=None, help="registered model name, with --num-classes and --backbone")
    src.add_argument("--num-classes", type=int, default=None)
    src.add_argument("--backbone", default=None)
    src.add_argument("--seed", type=int, default=0, help="initialisation seed of a random model")
    out = p.add_argument_group("artefacts (any combination)")
    out.add_argument("--onnx", default=None, metavar="PATH", help="fp32 ONNX graph")
    out.add_argument("--fp16", action="store_true", help="also an fp16 graph (float32 I/O) at <onnx stem>.fp16.onnx")
    out.add_argument("--trt", default=None, metavar="PATH", help="TensorRT engine (.plan) from the fp16 graph; needs a GPU")
    out.add_argument("--aoti", default=None, metavar="PATH", help="AOTInductor package (.pt2), CPU")
    out.add_argument("--triton-repo", default=None, metavar="DIR", help="Triton model repository")
    out.add_argument("--triton-name", default=None, help="model name in the repository (default fastmlr_<model>)")
    shp = p.add_argument_group("shapes")
    shp.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's, else 448")
    shp.add_argument("--min-batch", type=int, default=1)
    shp.add_argument("--opt-batch", type=int, default=8)
    shp.add_argument("--max-batch", type=int, default=16)
    o = p.add_argument_group("options")
    o.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    o.add_argument("--aoti-ops", choices=AOTI_OPS, default=None,
                   help="fused ops in the AOTInductor package: cpp (fastmlr's kernels, as fastmlr:: custom ops; "
                        "the default where fastmlr._C is built) or reference (ATen ops only)")
    o.add_argument("--onnx-ops", choices=OP_SETS, default=DEFAULT_OP_SET,
                   help="standard: TensorRT's ONNX op set, memory bounded in the number of classes (any runtime); "
                   "fused: the fastmlr ops as fastmlr-domain nodes (export/README.md)")
    o.add_argument("--threshold", type=float, default=0.5, help="decision threshold written to the sidecar")
    o.add_argument("--single-threshold", action="store_true",
                   help="leave the checkpoint's per-class thresholds out of the sidecars (--threshold for every class)")
    o.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit")
    o.add_argument("--timing-cache", default=None, help="TensorRT timing cache (default: beside the engine)")
    o.add_argument("--verify-images", nargs="*", default=None, metavar="IMAGE",
                   help="real images for the checks and the fp16 search (default: 8 of the model's own validation images)")
    o.add_argument("--validate-mosaics", type=int, default=0, metavar="N",
                   help="with --fp16: mAP of fp32 vs fp16 on N validation mosaics (10-class models)")
    o.add_argument("--no-verify", action="store_true", help="skip the checks (not recommended)")
    return p


def load_model(args) -> tuple[nn.Module, int]:
    """The model the flags name and its input size (``model.thresholds``: the checkpoint's per-class ones, or None)."""
    from .checkpoint import checkpoint_thresholds, load_checkpoint, model_from_checkpoint
    from .models import create_model

    if args.checkpoint:
        if args.model or args.num_classes or args.backbone:
            raise ValueError("give either --checkpoint or --model/--num-classes/--backbone, not both")
        ckpt = load_checkpoint(args.checkpoint)
        model = model_from_checkpoint(ckpt)
        model.thresholds = checkpoint_thresholds(ckpt)
        model.thresholds_fit = ckpt.get("thresholds_fit") or {}
        size = args.image_size or ckpt.get("image_size") or 448
        return model.eval(), int(size)
    missing = [f for f, v in (("--model", args.model), ("--num-classes", args.num_classes), ("--backbone", args.backbone))
               if v is None]
    if missing:
        raise ValueError(f"without --checkpoint, {', '.join(missing)} must be given")
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights and embeddings are the point here
        model = create_model(args.model, args.num_classes, backbone=args.backbone, weights="none")
    model.thresholds = None
    return model.eval(), int(args.image_size or 448)


def format_report(rep: dict) -> str:
    lines = [f"  {rep['kind']}: {rep['artifact']}  -> {'OK' if rep['ok'] else 'FAILED'}"]
    if "checker" in rep:
        lines.append(f"    onnx.checker (full): {rep['checker']}; opset {rep['opset']}")
        bad = rep["not_in_tensorrt"]
        lines.append(f"    ops ({len(rep['ops'])}): {' '.join(rep['ops'])}")
        ok = ("    all in TensorRT's ONNX parser set" if rep.get("onnx_ops") != "fused"
              else "    op set fused: fastmlr nodes (TensorRT plugins), the rest in TensorRT's ONNX parser set")
        lines.append(ok if not bad else f"    NOT supported by TensorRT: {bad}")
    if "ort" in rep:
        lines.append(f"    ONNX Runtime: {rep['ort']}")
    if "max_abs_diff" in rep:
        d = ", ".join(f"{k} {v:.2e}" for k, v in rep["max_abs_diff"].items())
        lines.append(f"    max |p - p_torch|: {d} (tolerance {rep['tolerance']:.0e})")
    if "torch_fp16_max_abs_diff" in rep:
        d = ", ".join(f"{k} {v:.2e}" for k, v in rep["torch_fp16_max_abs_diff"].items())
        lines.append(f"    for comparison, PyTorch's own fp16 forward vs fp32: {d}")
    if "mAP" in rep:
        m = rep["mAP"]
        lines.append("    mAP on %d validation mosaics: %s; fp16 - fp32 = %+.3f points (limit %.1f)" % (
            rep["images"], ", ".join(f"{k} {v:.2f}" for k, v in m.items()), rep["fp16_minus_fp32"], FP16_MAP_POINTS))
    return "\n".join(lines)


def threshold_note(model, per_class, args) -> str:
    """Which decision thresholds the sidecars carry, in words."""
    if per_class is not None:
        fit = getattr(model, "thresholds_fit", {}) or {}
        where = f" (fitted on {fit.get('data')}/{fit.get('split')}, {fit.get('num_images')} images)" if fit else ""
        return f"per-class, {len(per_class)} from the checkpoint{where}"
    why = ("--single-threshold" if model.thresholds is not None
           else "the checkpoint has none: evaluate --calibrate-thresholds fits them" if args.checkpoint
           else "a random model has none")
    return f"{args.threshold:g} for every class ({why})"


def _stem(path: str) -> str:
    for ext in (".onnx", ".plan", ".engine"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def planned_files(args, side: dict, onnx32: str | None, onnx16: str | None) -> list[tuple[str, str]]:
    """(path, flag) of every file the command may write, sidecars included."""
    files = []

    def artefact(path, flag):
        files.extend([(path, flag), (sidecar_path(path), flag + " sidecar")])

    if onnx32:
        artefact(onnx32, "--onnx")
    if onnx16:
        artefact(onnx16, "--fp16")
    if args.aoti:
        artefact(args.aoti, "--aoti")
    if args.trt:
        artefact(args.trt, "--trt")
        cache = args.timing_cache or os.path.join(os.path.dirname(os.path.abspath(args.trt)), "fastmlr.timing.cache")
        files.append((cache, "--timing-cache"))
    if args.triton_repo:
        name = args.triton_name or f"fastmlr_{side['model']}"
        files.extend((p, "--triton-repo") for p in repo_files(args.triton_repo, name, engine=bool(args.trt)))
    return files


def run(args) -> int:
    if not (args.onnx or args.trt or args.aoti or args.triton_repo):
        raise ValueError("nothing to export: give --onnx, --trt, --aoti and/or --triton-repo")
    if args.validate_mosaics and not args.fp16:
        raise ValueError("--validate-mosaics compares the fp16 graph with fp32: it needs --fp16")
    check_batch_range(args.min_batch, args.opt_batch, args.max_batch)
    model, size = load_model(args)
    per_class = None if args.single_threshold else model.thresholds
    side = make_sidecar(model, size, threshold=args.threshold, thresholds=per_class)
    reports, written = [], []
    verify = not args.no_verify
    real, real_desc = (None, "not checked")
    if verify:
        real, real_desc = real_images(size, paths=args.verify_images, model=model)
    stem = _stem(args.onnx or args.trt or os.path.join(args.triton_repo or ".", f"fastmlr_{side['model']}"))
    # TensorRT builds from the fp16 graph; Triton serves ONNX when no engine can be built.
    need_fp32 = bool(args.onnx or args.triton_repo)
    need_fp16 = bool(args.fp16 or args.trt)
    onnx32 = args.onnx or stem + ".onnx"
    onnx16 = stem + ".fp16.onnx"
    kw = dict(min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch, opset=args.opset, sidecar=side,
              onnx_ops=args.onnx_ops)
    targets = planned_files(args, side, onnx32 if need_fp32 or args.validate_mosaics else None,
                            onnx16 if need_fp16 else None)
    check_targets(targets)  # every refusal before the first file is written, so nothing is half done
    for path, _ in targets:
        for tmp in remove_stale_temps(path):
            print(f"removed {tmp}, left by an export that was killed", flush=True)

    def step(label, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        print(f"wrote {label}: {out} ({time.perf_counter() - t0:.1f} s)", flush=True)
        written.append(out)
        return out

    print(f"fastmlr export: {side['model']} ({side['config'].get('backbone')}), {side['num_classes']} classes, "
          f"{size} px, batch {args.min_batch}..{args.max_batch} (opt {args.opt_batch}); real images: {real_desc}",
          flush=True)
    print("thresholds in every sidecar: " + threshold_note(model, per_class, args), flush=True)
    if need_fp32:
        step("ONNX fp32", export_onnx, model, onnx32, size, fp16=False, **kw)
        if verify:
            reports.append(verify_onnx(onnx32, model, size, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    if need_fp16:
        # fp16 where the verification images allow it, fp32 where the search finds fp16 too coarse.
        t0 = time.perf_counter()
        search = export_onnx_fp16(model, onnx16, size, images=real, **kw)
        print(f"wrote ONNX fp16: {onnx16} ({time.perf_counter() - t0:.1f} s)", flush=True)
        print("\n".join(fp16_lines(search)), flush=True)
        written.append(onnx16)
        if verify:
            reports.append(verify_onnx(onnx16, model, size, fp16=True, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    if args.validate_mosaics:
        if not need_fp32:
            step("ONNX fp32 (for the mAP check)", export_onnx, model, onnx32, size, fp16=False, **kw)
        rep = fp16_map_check(model, onnx32, onnx16, size, num_images=args.validate_mosaics)
        rep.update(artifact=onnx16, kind="fp16 mAP check")
        reports.append(rep)
        print(format_report(rep), flush=True)
    if args.aoti:
        step(f"AOTInductor package ({args.aoti_ops or default_aoti_ops()} ops)", export_aoti, model, args.aoti, size,
             max_batch=args.max_batch, min_batch=args.min_batch, sidecar=side, aoti_ops=args.aoti_ops)
        if verify:
            reports.append(verify_aoti(args.aoti, model, size, real=real, max_batch=args.max_batch))
            print(format_report(reports[-1]), flush=True)
    engine, trt_error = None, None
    if args.trt:
        cache = args.timing_cache or os.path.join(os.path.dirname(os.path.abspath(args.trt)), "fastmlr.timing.cache")
        # The fused op set where fastmlr's TensorRT plugins can be registered here, else the standard fp16 graph.
        # (Without a GPU no engine is built at all, and the build below says so.)
        trt_onnx, (plugins_ok, why) = onnx16, plugins_available() if probe.gpu_available()[0] else (False, "")
        if plugins_ok:
            trt_onnx = step("ONNX fp16, fused op set (for TensorRT)", export_onnx, model, stem + ".fused.fp16.onnx",
                            size, fp16=True, **{**kw, "onnx_ops": "fused"})
        elif why:
            print(f"TensorRT: building from the standard op set: fused plugins unavailable ({why})", flush=True)
        try:
            engine = step("TensorRT engine", build_trt_engine, trt_onnx, args.trt, min_batch=args.min_batch,
                          opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_gb=args.workspace_gb,
                          timing_cache=cache, sidecar=side, fallback_onnx=onnx16 if plugins_ok else None)
        except TRTUnavailable as e:
            trt_error = e
            cmd = trtexec_command(onnx16, args.trt, size, args.min_batch, args.opt_batch, args.max_batch)
            print(f"TensorRT engine NOT built: {e}\n  The ONNX graph it needs is written: {onnx16}\n"
                  f"  On a host with an NVIDIA GPU and TensorRT, run the same command, or:\n    {cmd}",
                  file=sys.stderr, flush=True)
    if args.triton_repo:
        if not os.path.exists(onnx32):
            step("ONNX fp32 (for Triton)", export_onnx, model, onnx32, size, fp16=False, **kw)
        folder = write_triton_repo(args.triton_repo, side, engine=engine, onnx_path=None if engine else onnx32,
                                   max_batch=args.max_batch, opt_batch=args.opt_batch, name=args.triton_name)
        print(f"wrote Triton model {folder} ({'TensorRT plan' if engine else 'ONNX Runtime backend'})")
    failed = [r for r in reports if not r["ok"]]
    print(f"export: {len(written)} artefact(s) written; {len(reports) - len(failed)}/{len(reports)} checks passed")
    if failed:
        print("export: FAILED checks: " + "; ".join(f"{r['kind']} ({r['artifact']})" for r in failed), file=sys.stderr)
        return 3
    if trt_error is not None:
        return 4
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CheckpointMismatch, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
