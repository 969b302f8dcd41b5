"""gpu-check's command line: probe the GPU, run the plan under the budget, write the reports.

Usage: python3 tools/gpu_check.py [--out runs/gpu-check] [--budget 540]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
import sys
import time
from pathlib import Path

from . import plan
from .report import write_reports
from .runner import BUDGET_S, EXPECTED_S, LIMITS, Runner


def probe_gpu(python: str = sys.executable) -> tuple[dict | None, str]:
    """(facts about GPU 0, "") when torch sees a CUDA GPU, else (None, why not)."""
    import warnings

    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means: no torch to run anything with
        return None, f"{python} cannot import torch ({type(e).__name__}: {e})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when the driver is missing; the line below says it
        available = torch.cuda.is_available()
    if not available:
        why = "no CUDA driver or device" if torch.version.cuda else "this torch is built without CUDA"
        return None, f"torch {torch.__version__} sees no CUDA GPU ({why})"
    major, minor = torch.cuda.get_device_capability(0)
    props = torch.cuda.get_device_properties(0)
    info = {"gpu": torch.cuda.get_device_name(0), "capability": f"{major}.{minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "gpus": torch.cuda.device_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "python": sys.version.split()[0], "python_executable": python}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton"] = f"unavailable ({type(e).__name__})"
    return info, ""


def run_all(out: Path, budget: float, info: dict, python: str = sys.executable, limits: dict | None = None) -> dict:
    """Every step of the plan in order under ``budget`` seconds; the reports are rewritten after each."""
    t_start = time.monotonic()
    env = plan.build_env(info["capability"], python)
    runner = Runner(out, budget, env, cwd=plan.ROOT, limits=limits)
    info.update(cuda_home=env.get("CUDA_HOME"), torch_cuda_arch_list=env["TORCH_CUDA_ARCH_LIST"])
    result = {"started": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": info,
              "budget_s": budget, "limits_s": runner.limits, "expected_s": EXPECTED_S, "notes": [],
              "steps": runner.steps}

    def save():
        result["total_s"] = round(time.monotonic() - t_start, 1)
        write_reports(out, result)

    note = plan.fmnist_for_steps(env, out)
    if note:
        result["notes"].append(note)
    build = runner.run("build", plan.build_cmd(python), figures=plan.build_figures)
    save()
    if build["status"] != "ok":
        result["notes"].append("the build failed: the steps after it run with whatever fastmlr._C was there")
    runner.run("pytest-gpu", plan.pytest_cmd(python), figures=plan.pytest_figures)
    save()
    for model in ("srdl", "aamn"):
        d = out / f"train-{model}"
        shutil.rmtree(d, ignore_errors=True)
        runner.run(f"train-{model}", plan.train_cmd(model, d, python), figures=plan.train_figures(d))
        save()
    ops_file = out / "ops.json"
    runner.run("ops", plan.ops_cmd(ops_file, python), figures=plan.ops_figures(ops_file))
    save()
    for step in plan.BENCH_STEPS:
        runner.run(step, plan.bench_cmd(step, out, python), figures=plan.bench_figures(out / step))
        save()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu-check", help="folder for report.json, report.md, logs/")
    p.add_argument("--budget", type=float, default=BUDGET_S,
                   help=f"seconds for all steps together (default {BUDGET_S}: the step limits, "
                        f"{sum(LIMITS.values())} s, and a margin)")
    args = p.parse_args(argv)
    info, why = probe_gpu()
    if info is None:
        print(f"gpu-check: no CUDA GPU here: {why}; nothing was built or written.")
        return 2
    out = Path(args.out)
    out = out if out.is_absolute() else Path.cwd() / out
    result = run_all(out, args.budget, info)
    failed = [s["step"] for s in result["steps"] if s["status"] != "ok"]
    print(f"gpu-check: {len(result['steps']) - len(failed)}/{len(result['steps'])} steps ok"
          + (f" (not ok: {', '.join(failed)})" if failed else "") + f"; report: {out / 'report.md'}")
    return 0 if not failed else 1


__all__ = ["probe_gpu", "run_all", "main"]
