"""The export pipeline: one plan of artefacts, checked whole before the first file is written, then built in order.

The command (:mod:`fastmlr.export`), the demo (:mod:`fastmlr.demo_deploy`) and the bench's
runtime columns (:mod:`fastmlr.bench.runtimes`) all describe what they want as an
:class:`ExportPlan` and call :func:`export_artefacts`; none of them calls a builder itself.
Before anything is written, :func:`check_plan` refuses a plan whose targets collide (two
artefacts, or an artefact and a sidecar, on one real path), overwrite one of its inputs
(the checkpoint, a verification image), cannot be written (read-only, a folder in the
way), or combine options that a later step would refuse (``--fp16`` with the fused op set).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable

import torch.nn as nn

from ..files import check_distinct, check_targets, remove_stale_temps
from ..artifact.contract import sidecar_path
from .graph import check_batch_range
from .onnx_ops import DEFAULT_OP_SET, check_op_set


@dataclasses.dataclass
class ExportPlan:
    """What to build from one model. Paths left None are not built; ``flags`` names each path in messages."""

    model: nn.Module
    image_size: int
    sidecar: dict
    onnx32: str | None = None
    onnx16: str | None = None
    aoti: str | None = None
    trt: str | None = None
    triton_repo: str | None = None
    triton_name: str | None = None
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    opset: int | None = None
    onnx_ops: str = DEFAULT_OP_SET
    aoti_ops: str | None = None
    aoti_device: str = "cpu"  # the device the AOTInductor package is compiled for (the bench's GPU column: "cuda")
    timing_cache: str | None = None
    workspace_gb: float = 4.0
    verify: bool = True
    real: object = None  # Tensor[n, 3, S, S] of real images for the checks and the fp16 search, or None
    validate_mosaics: int = 0
    fp16_search: bool = True  # the fp16 graph: mixed precision chosen on ``real`` (True), or fp16 throughout
    trt_op_set: str = "auto"  # the graph TensorRT builds from: auto (fused where the plugins register), standard, fused
    trt_flavour: str | None = "enterprise"  # which TensorRT builds --trt (artifact.probe.choose_flavour), None: none here
    trt_targets: tuple | None = None  # TensorRT-RTX's compute capabilities (None: its defaults)
    trt_unavailable: Exception | None = None  # why no TensorRT can build here (with trt_flavour None)
    inputs: tuple = ()  # (path, flag) of the files the plan reads: never a target
    flags: dict = dataclasses.field(default_factory=lambda: {
        "onnx32": "--onnx", "onnx16": "--fp16", "aoti": "--aoti", "trt": "--trt", "triton_repo": "--triton-repo",
        "timing_cache": "--timing-cache"})

    def stem(self) -> str:
        base = self.onnx32 or self.trt or os.path.join(self.triton_repo or ".", f"fastmlr_{self.sidecar['model']}")
        for ext in (".onnx", ".plan", ".engine"):
            if base.endswith(ext):
                return base[: -len(ext)]
        return base

    def cache_path(self) -> str | None:
        """The timing cache of an enterprise TensorRT build (TensorRT-RTX has none: it tunes on the user's GPU)."""
        if not self.trt or self.trt_flavour != "enterprise":
            return None
        return self.timing_cache or os.path.join(os.path.dirname(os.path.abspath(self.trt)), "fastmlr.timing.cache")


def planned_files(plan: ExportPlan) -> list[tuple[str, str]]:
    """(path, flag) of every file the plan may write, sidecars included."""
    from .triton_repo import repo_files

    files = []
    for key in ("onnx32", "onnx16", "aoti", "trt"):
        path = getattr(plan, key)
        if path:
            files.extend([(path, plan.flags[key]), (sidecar_path(path), plan.flags[key] + " sidecar")])
    if plan.cache_path():
        files.append((plan.cache_path(), plan.flags["timing_cache"]))
    if plan.triton_repo:
        name = plan.triton_name or f"fastmlr_{plan.sidecar['model']}"
        files.extend((p, plan.flags["triton_repo"]) for p in repo_files(plan.triton_repo, name,
                                                                         engine=served_by_triton(plan)))
    return files


def served_by_triton(plan: ExportPlan) -> bool:
    """Whether the Triton repository serves the engine: its tensorrt backend links enterprise TensorRT and cannot
    deserialize a TensorRT-RTX engine (the ONNX graph is served instead)."""
    return bool(plan.trt) and plan.trt_flavour == "enterprise"


def check_plan(plan: ExportPlan) -> list[tuple[str, str]]:
    """Every refusal of the plan, before any work; returns its targets."""
    check_batch_range(plan.min_batch, plan.opt_batch, plan.max_batch)
    if plan.onnx16 and check_op_set(plan.onnx_ops) != "standard":
        raise ValueError(f"--onnx-ops {plan.onnx_ops} with {plan.flags['onnx16']}: the fp16 graph is built in the standard op set only "
                         "(its mixed-precision search runs in ONNX Runtime, whose fused-node PyOps are float32); "
                         "drop --onnx-ops fused or --fp16")
    targets = planned_files(plan)
    check_distinct(targets, plan.inputs)
    check_targets(targets)
    return targets


@dataclasses.dataclass
class ExportResult:
    written: list
    reports: list
    engine: str | None = None
    trt_error: Exception | None = None


def export_artefacts(plan: ExportPlan, say: Callable[[str], None] = lambda s: print(s, flush=True)) -> ExportResult:
    """Check the plan, then build each artefact in turn (ONNX fp32, fp16, AOTInductor, TensorRT, Triton), each
    followed by its check when ``plan.verify``; ``say`` gets every line of the report."""
    from .onnx import DEFAULT_OPSET, export_onnx, export_onnx_fp16, fp16_map_check, verify_onnx

    targets = check_plan(plan)
    for path, _ in targets:
        for tmp in remove_stale_temps(path):
            say(f"removed {tmp}, left by an export that was killed")
    m, S = plan.model, plan.image_size
    kw = dict(min_batch=plan.min_batch, opt_batch=plan.opt_batch, max_batch=plan.max_batch,
              opset=plan.opset or DEFAULT_OPSET, sidecar=plan.sidecar, onnx_ops=plan.onnx_ops)
    res = ExportResult([], [])

    def wrote(label: str, path: str, t0: float) -> None:
        say(f"wrote {label}: {path} ({time.perf_counter() - t0:.1f} s)")
        res.written.append(path)

    def check(report: dict) -> None:
        res.reports.append(report)
        say(format_report(report))

    if plan.onnx32:
        t0 = time.perf_counter()
        export_onnx(m, plan.onnx32, S, fp16=False, **kw)
        wrote("ONNX fp32", plan.onnx32, t0)
        if plan.verify:
            check(verify_onnx(plan.onnx32, m, S, real=plan.real, max_batch=plan.max_batch))
    if plan.onnx16:
        from .fp16 import format_report as fp16_lines

        # fp16 where the verification images allow it, fp32 where the search finds fp16 too coarse.
        t0 = time.perf_counter()
        if plan.fp16_search:
            search = export_onnx_fp16(m, plan.onnx16, S, images=plan.real, **kw)
        else:
            export_onnx(m, plan.onnx16, S, fp16=True, **kw)
        wrote("ONNX fp16", plan.onnx16, t0)
        if plan.fp16_search:
            say("\n".join(fp16_lines(search)))
        if plan.verify:
            check(verify_onnx(plan.onnx16, m, S, fp16=True, real=plan.real, max_batch=plan.max_batch))
    if plan.validate_mosaics:
        rep = fp16_map_check(m, plan.onnx32, plan.onnx16, S, num_images=plan.validate_mosaics)
        rep.update(artifact=plan.onnx16, kind="fp16 mAP check")
        check(rep)
    if plan.aoti:
        from .aoti import default_aoti_ops, export_aoti, verify_aoti

        t0 = time.perf_counter()
        export_aoti(m, plan.aoti, S, max_batch=plan.max_batch, min_batch=plan.min_batch, opt_batch=plan.opt_batch,
                    sidecar=plan.sidecar, aoti_ops=plan.aoti_ops, device=plan.aoti_device)
        wrote(f"AOTInductor package ({plan.aoti_ops or default_aoti_ops(plan.aoti_device)} ops)", plan.aoti, t0)
        if plan.verify:
            check(verify_aoti(plan.aoti, m, S, real=plan.real, max_batch=plan.max_batch))
    if plan.trt:
        _tensorrt(plan, kw, res, wrote, say)
    if plan.triton_repo:
        from .triton_repo import write_triton_repo

        served = res.engine if served_by_triton(plan) else None
        if res.engine and not served:
            say(f"Triton model serves the ONNX graph: its tensorrt backend cannot load the TensorRT-RTX engine "
                f"{res.engine}")
        folder = write_triton_repo(plan.triton_repo, plan.sidecar, engine=served,
                                   onnx_path=None if served else plan.onnx32, max_batch=plan.max_batch,
                                   opt_batch=plan.opt_batch, name=plan.triton_name)
        say(f"wrote Triton model {folder} ({'TensorRT plan' if served else 'ONNX Runtime backend'})")
    return res


def _tensorrt(plan: ExportPlan, kw: dict, res: ExportResult, wrote, say) -> None:
    """The engine of ``plan.trt_flavour``: from the fused fp16 graph where fastmlr's plugins register here
    (enterprise TensorRT on a GPU), else from the standard one (TensorRT-RTX cannot host them)."""
    from ..artifact import probe
    from ..artifact.probe import TRTUnavailable
    from .onnx import export_onnx
    from .trt import build_trt_engine, trtexec_command
    from .trt_plugins import plugins_available

    flavour = plan.trt_flavour
    trt_onnx, (plugins_ok, why) = plan.onnx16, (False, "")
    if flavour == "enterprise":
        if plan.trt_op_set == "fused":
            plugins_ok = True
        elif plan.trt_op_set == "auto" and probe.gpu_available()[0]:
            plugins_ok, why = plugins_available()
    if plugins_ok:
        trt_onnx = plan.stem() + ".fused.fp16.onnx"
        t0 = time.perf_counter()
        export_onnx(plan.model, trt_onnx, plan.image_size, fp16=True, **{**kw, "onnx_ops": "fused"})
        wrote("ONNX fp16, fused op set (for TensorRT)", trt_onnx, t0)
    elif why:
        say(f"TensorRT: building from the standard op set: fused plugins unavailable ({why})")
    t0 = time.perf_counter()
    try:
        if flavour is None:
            raise plan.trt_unavailable or TRTUnavailable("no TensorRT flavour is usable here")
        res.engine = build_trt_engine(trt_onnx, plan.trt, min_batch=plan.min_batch, opt_batch=plan.opt_batch,
                                      max_batch=plan.max_batch, workspace_gb=plan.workspace_gb,
                                      timing_cache=plan.cache_path(), sidecar=plan.sidecar,
                                      fallback_onnx=plan.onnx16 if plugins_ok else None, flavour=flavour,
                                      targets=plan.trt_targets)
        wrote(f"{probe.LABELS[flavour]} engine", res.engine, t0)
    except TRTUnavailable as e:
        res.trt_error = e
        cmd = trtexec_command(plan.onnx16, plan.trt, plan.image_size, plan.min_batch, plan.opt_batch, plan.max_batch)
        print(f"TensorRT engine NOT built: {e}\n  The ONNX graph it needs is written: {plan.onnx16}\n"
              f"  On a host with an NVIDIA GPU and TensorRT, run the same command, or:\n    {cmd}",
              file=sys.stderr, flush=True)


def format_report(rep: dict) -> str:
    """A check's report as the lines the command prints."""
    from .verify import FP16_MAP_POINTS

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
    if "against_float64" in rep:
        d = ", ".join(f"{k}: this artefact {v['artefact']:.2e}, PyTorch fp32 {v['own']:.2e} (bound {v['bound']:.2e})"
                      for k, v in rep["against_float64"].items())
        lines.append(f"    past the tolerance, both against the model's float64 twin: {d}; bound 2 x PyTorch's where "
                     "larger than the tolerance")
    if "torch_fp16_max_abs_diff" in rep:
        d = ", ".join(f"{k} {v:.2e}" for k, v in rep["torch_fp16_max_abs_diff"].items())
        lines.append(f"    for comparison, PyTorch's own fp16 forward vs fp32: {d}")
    if "mAP" in rep:
        m = rep["mAP"]
        lines.append("    mAP on %d validation mosaics: %s; fp16 - fp32 = %+.3f points (limit %.1f)" % (
            rep["images"], ", ".join(f"{k} {v:.2f}" for k, v in m.items()), rep["fp16_minus_fp32"], FP16_MAP_POINTS))
    return "\n".join(lines)
