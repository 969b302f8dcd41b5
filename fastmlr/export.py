"""python -m fastmlr.export: ONNX (fp32, fp16), TensorRT, AOTInductor and Triton artefacts of a model.

Every artefact ``X`` gets a JSON sidecar ``X.json`` (class names, input size,
mean/std, threshold, the checkpoint's per-class thresholds when it has them
(``evaluate --calibrate-thresholds`` stores them), model config, batch range,
versions and the artefact's sha256) that :func:`fastmlr.runtime.load` checks before running it. After
writing each artefact the command checks it and prints a report: the ONNX
checker (full check), the graph's op types against TensorRT's ONNX parser,
and the largest probability difference from PyTorch on random and real
images.

This module is the command only: it turns the flags into an export plan and runs
:func:`fastmlr.deploy.pipeline.export_artefacts` (which the demo and the bench call too);
the builders and checks are in :mod:`fastmlr.deploy` (the artefact contract in
:mod:`fastmlr.artifact.contract`). Every output path is checked before the first file is
written: none may be an input (``--checkpoint``, ``--verify-images``) or another output.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch
import torch.nn as nn

from .artifact import probe
from .artifact.contract import make_sidecar, sidecar_path
from .artifact.probe import TRTUnavailable
from .checkpoint import CheckpointMismatch
from .deploy.aoti import AOTI_OPS
from .deploy.graph import check_batch_range
from .deploy.onnx import DEFAULT_OPSET
from .deploy.onnx_ops import DEFAULT_OP_SET, OP_SETS
from .deploy.trt import RTX_DEFAULT_TARGETS, RTX_TARGETS, parse_targets
from .deploy.pipeline import ExportPlan, check_plan, export_artefacts, format_report  # noqa: F401 (format_report: API)
from .deploy.verify import real_images
from .engine import check_image_size, run_command


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
    out.add_argument("--trt", default=None, metavar="PATH",
                     help="TensorRT engine (.plan) from the fp16 graph (--trt-flavour says which TensorRT builds it)")
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
    o.add_argument("--trt-flavour", choices=("auto", *probe.FLAVOURS), default="auto",
                   help="which TensorRT builds --trt: enterprise (needs a GPU; builds for it), rtx (TensorRT-RTX: "
                        "no GPU needed; runs on RTX GPUs of --trt-targets), auto (enterprise where installed and a "
                        "GPU is present, else rtx)")
    o.add_argument("--trt-targets", default=None, metavar="CC,...",
                   help=f"TensorRT-RTX's target compute capabilities, e.g. 8.6,8.9 (default "
                        f"{','.join(RTX_DEFAULT_TARGETS)}; any of {','.join(RTX_TARGETS)})")
    o.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit")
    o.add_argument("--timing-cache", default=None,
                   help="enterprise TensorRT's timing cache (default: beside the engine; TensorRT-RTX has none)")
    o.add_argument("--verify-images", nargs="*", default=None, metavar="IMAGE",
                   help="real images for the checks and the fp16 search (default: 8 of the model's own validation images)")
    o.add_argument("--validate-mosaics", type=int, default=0, metavar="N",
                   help="with --fp16: mAP of fp32 vs fp16 on N validation mosaics (10-class models)")
    o.add_argument("--no-verify", action="store_true", help="skip the checks (not recommended)")
    o.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def load_model(args) -> tuple[nn.Module, int]:
    """The model the flags name and its input size (``model.thresholds``: the checkpoint's per-class ones, or None)."""
    from .checkpoint import checkpoint_thresholds, load_checkpoint, model_from_checkpoint
    from .models import create_model
    from .models.base import calibrate_batchnorm

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
    size = int(args.image_size or 448)
    if calibrate_batchnorm(model, size, seed=args.seed):
        # Eval-mode BatchNorm of a random model normalises nothing: activations would overflow float16.
        print("random weights: BatchNorm statistics set from 2 random images, as training sets them from data "
              "(keeps a random model's activations inside float16's range)", flush=True)
    return model.eval(), size


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


def resolve_trt(args) -> tuple[str | None, tuple | None, TRTUnavailable | None]:
    """Check --trt-targets and settle --trt-flavour before any work: (flavour, targets, why none is usable)."""
    targets = parse_targets(args.trt_targets)
    if not args.trt:
        return None, targets, None
    try:
        flavour, why = probe.choose_flavour(args.trt_flavour)
    except TRTUnavailable as e:
        return None, targets, e
    if flavour == "enterprise" and targets:
        raise ValueError("--trt-targets is for TensorRT-RTX (--trt-flavour rtx); enterprise TensorRT builds for the "
                         "GPU it runs on")
    if args.trt_flavour != flavour:
        print(f"--trt: {probe.LABELS[flavour]} ({why})", flush=True)
    return flavour, targets, None


def plan_from_args(args, model, size: int, side: dict, real, trt=(None, None, None)) -> ExportPlan:
    """The flags as an export plan: which files, from which inputs; ``trt``: :func:`resolve_trt`'s answer."""
    # TensorRT builds from the fp16 graph; Triton serves ONNX when no engine can be built.
    plan = ExportPlan(model, size, side, aoti=args.aoti, trt=args.trt, triton_repo=args.triton_repo,
                      triton_name=args.triton_name, min_batch=args.min_batch, opt_batch=args.opt_batch,
                      max_batch=args.max_batch, opset=args.opset, onnx_ops=args.onnx_ops, aoti_ops=args.aoti_ops,
                      timing_cache=args.timing_cache, workspace_gb=args.workspace_gb, verify=not args.no_verify,
                      real=real, validate_mosaics=args.validate_mosaics, trt_flavour=trt[0], trt_targets=trt[1],
                      trt_unavailable=trt[2], inputs=[(args.checkpoint, "--checkpoint")] + [(p, "--verify-images") for p in
                                                                    args.verify_images or []])
    plan.onnx32 = args.onnx
    stem = plan.stem()  # from --onnx, else --trt, else the Triton repository
    if args.triton_repo or args.validate_mosaics:
        plan.onnx32 = args.onnx or stem + ".onnx"
    if args.fp16 or args.trt:
        plan.onnx16 = stem + ".fp16.onnx"
        plan.flags["onnx16"] = "--fp16" if args.fp16 else "--trt (built from the fp16 graph)"
    return plan


def run(args) -> int:
    if not (args.onnx or args.trt or args.aoti or args.triton_repo):
        raise ValueError("nothing to export: give --onnx, --trt, --aoti and/or --triton-repo")
    if args.validate_mosaics and not args.fp16:
        raise ValueError("--validate-mosaics compares the fp16 graph with fp32: it needs --fp16")
    check_image_size(args.image_size)
    check_batch_range(args.min_batch, args.opt_batch, args.max_batch)
    trt = resolve_trt(args)
    model, size = load_model(args)
    per_class = None if args.single_threshold else model.thresholds
    side = make_sidecar(model, size, threshold=args.threshold, thresholds=per_class)
    check_plan(plan_from_args(args, model, size, side, None, trt))  # every refusal before the images are read
    real, real_desc = (None, "not checked")
    if not args.no_verify:
        real, real_desc = real_images(size, paths=args.verify_images, model=model)
    plan = plan_from_args(args, model, size, side, real, trt)
    print(f"fastmlr export: {side['model']} ({side['config'].get('backbone')}), {side['num_classes']} classes, "
          f"{size} px, batch {args.min_batch}..{args.max_batch} (opt {args.opt_batch}); real images: {real_desc}",
          flush=True)
    print("thresholds in every sidecar: " + threshold_note(model, per_class, args), flush=True)
    res = export_artefacts(plan)
    failed = [r for r in res.reports if not r["ok"]]
    print(f"export: {len(res.written)} artefact(s) written; {len(res.reports) - len(failed)}/{len(res.reports)} "
          "checks passed")
    if failed:
        print("export: FAILED checks: " + "; ".join(f"{r['kind']} ({r['artifact']})" for r in failed), file=sys.stderr)
        return 3
    if res.trt_error is not None:
        return 4
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug, extra=(CheckpointMismatch,))


if __name__ == "__main__":
    sys.exit(main())
