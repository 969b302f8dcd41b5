"""Run Triton test files again in a subprocess with TRITON_INTERPRET=1, and judge that run.

The interpreter mode is process-wide and read when the kernels are decorated,
so the interpreter cases cannot run in the pytest process that runs the rest
of the suite (which keeps compiled-mode kernels and the C++ backend as the
CPU default).
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def run_interpreter_subprocess(test_files: list[Path], tmp_path: Path, min_passed: int, parent_only: set[str],
                               select: str | None = None, refusals: tuple[str, ...] = ()) -> str:
    """Rerun ``test_files`` (``-k select``) with TRITON_INTERPRET=1 (set before triton is imported);
    assert no case failed, none skipped but the parent-only ones and those skipping with a reason that
    starts with one of ``refusals`` (the dispatch's own refusals), and at least ``min_passed`` passed.
    Returns a summary line."""
    report = tmp_path / "interpreter.xml"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("FASTMLR_BACKEND", None)
    cmd = [sys.executable, "-m", "pytest", *map(str, test_files), "-q", "-p", "no:cacheprovider", "-m", "not gpu",
           f"--junitxml={report}", *(["-k", select] if select else [])]
    proc = subprocess.run(cmd, cwd=test_files[0].parents[1], env=env, capture_output=True, text=True, timeout=1800)
    tail = (proc.stdout[-8000:] + "\n" + proc.stderr[-2000:]).strip()
    assert report.exists(), f"the interpreter run wrote no report (exit {proc.returncode}):\n{tail}"
    passed, failed, skipped, refused = [], [], [], []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            message = case.find("skipped").get("message", "")
            (refused if message.startswith(refusals or ("\0",)) else skipped).append(name)
        else:
            passed.append(name)
    assert not failed and proc.returncode == 0, f"interpreter cases failed: {failed}\n{tail}"
    unexpected = [n for n in skipped if n.split("[")[0] not in parent_only]
    assert not unexpected, f"interpreter cases skipped in the TRITON_INTERPRET=1 run: {unexpected}\n{tail}"
    assert len(passed) >= min_passed, f"only {len(passed)} interpreter cases ran (want >= {min_passed}):\n{tail}"
    return (f"interpreter subprocess: {len(passed)} passed, {len(skipped)} skipped (parent-only), "
            f"{len(refused)} refused by the dispatch")
