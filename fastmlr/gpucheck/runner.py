"""The steps' clock: each step a process group under its own limit, all of them under one budget.

A step that runs past its limit is ended with its whole process group (the compilers a build starts,
the workers a training starts): the step runs in a new session (``start_new_session``), and the
group gets SIGTERM, then SIGKILL after a grace period. Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

# Seconds each step may take at most, and what it is expected to take on an H100/H200 host with 16
# cores (estimates from the parts' sizes; no GPU run has measured them yet: a gpu-check report's
# "seconds" column replaces them). The limits add up to BUDGET_S less MARGIN_S.
LIMITS = {
    "build": 110,           # 3 C++ and 2 CUDA files, one arch, 16 jobs: ~60 s
    "pytest-gpu": 80,       # the chosen gpu tests (training, export, autocast): ~45 s
    "train-srdl": 40,       # start-up, mosaics, 40 AMP steps, one validation pass: ~25 s
    "train-aamn": 40,       # ~25 s
    "ops": 50,              # every op x fp32/fp16 x CUDA backend at the paper's shapes: ~30 s (Triton's compiles)
    "bench-eager": 40,      # SRDL eager fp32 and autocast fp16, batch 1 and 16: ~25 s
    "bench-compile": 60,    # torch.compile of SRDL, then its timing: ~45 s
    "bench-aoti": 60,       # AOTInductor compile of SRDL for CUDA, then its timing: ~45 s
}
EXPECTED_S = {"build": 60, "pytest-gpu": 45, "train-srdl": 25, "train-aamn": 25, "ops": 30, "bench-eager": 25,
              "bench-compile": 45, "bench-aoti": 45}
MARGIN_S = 60
BUDGET_S = sum(LIMITS.values()) + MARGIN_S  # 540 s: 9 minutes
MIN_STEP_S = 10  # a step with less time left than this is skipped, not started
GRACE_S = 5  # between SIGTERM and SIGKILL of a timed-out step's group


def run_group(cmd: list[str], *, cwd, env: dict | None, limit: float) -> tuple[str, int | None]:
    """Run ``cmd`` in a new session for at most ``limit`` seconds; (its output, exit code or None if it timed
    out). On time-out the whole process group is terminated (SIGTERM, then SIGKILL after GRACE_S)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
        return out.decode(errors="replace"), proc.returncode
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    # The leader may have exited on SIGTERM while members ignored it: the group is killed either way.
    _signal_group(proc.pid, signal.SIGKILL)
    return (out or b"").decode(errors="replace"), None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    """Runs the steps in order under one time budget, recording each as a dict of ``steps``."""

    def __init__(self, out: Path, budget: float, env: dict, cwd, limits: dict | None = None):
        self.out, self.env, self.cwd = out, env, cwd
        self.limits = dict(LIMITS if limits is None else limits)
        self.deadline = time.monotonic() + budget
        self.steps: list[dict] = []
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def skip(self, name: str, why: str, command: str = "") -> dict:
        """Record ``name`` as skipped for ``why`` without running anything."""
        step = {"step": name, "command": command, "status": "skipped", "seconds": 0.0, "figures": {},
                "limit_s": self.limits.get(name, 0), "detail": why}
        self.steps.append(step)
        return step

    def run(self, name: str, cmd: list[str], figures=None, env: dict | None = None) -> dict:
        """Run ``cmd`` with the step's limit; ``figures(step, log_text)`` adds figures (its failure is reported)."""
        limit = min(self.limits[name], self.left())
        if limit < MIN_STEP_S:
            return self.skip(name, f"time budget spent ({max(self.left(), 0):.0f} s left)", " ".join(cmd))
        step = {"step": name, "command": " ".join(cmd), "status": "skipped", "seconds": 0.0, "figures": {},
                "limit_s": round(limit, 1), "log": f"logs/{name}.log"}
        self.steps.append(step)
        t0 = time.monotonic()
        text, rc = run_group(cmd, cwd=self.cwd, env=env or self.env, limit=limit)
        step["seconds"] = round(time.monotonic() - t0, 1)
        (self.out / step["log"]).write_text(text)
        if rc is None:
            step.update(status="failed", detail=f"timed out after {limit:.0f} s (its process group was ended)")
        elif rc != 0:
            step.update(status="failed", detail=f"exit code {rc}: {last_line(text)}")
        else:
            step["status"] = "ok"
        if figures is not None:
            try:
                figures(step, text)
            except Exception as e:  # noqa: BLE001 - a figure that cannot be read is reported, not fatal
                step["figures"]["figures_error"] = f"{type(e).__name__}: {e}"
        step["tail"] = text[-2000:] if step["status"] == "failed" else ""
        return step


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


__all__ = ["LIMITS", "EXPECTED_S", "MARGIN_S", "BUDGET_S", "run_group", "Runner", "last_line"]
