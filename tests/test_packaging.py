"""fastmlr declares the stacks it supports and installs next to a user's torch without replacing it.

* pyproject.toml's dependency and build-requirement ranges hold both stacks the suite runs on: the
  development pins of `make setup` and the GPU host's pins of `make setup-host` (read from the Makefile,
  checked with `packaging`, the library pip itself resolves with); they are ranges, not pins.
* pip (the real one, offline) resolving an install of this checkout into the running environment,
  with the build against the torch that is there (--no-build-isolation), installs fastmlr alone: every
  dependency is already satisfied by what is installed, torch included. Run on both stacks by `make test`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _makefile_pins(variable_or_line: str) -> dict[str, str]:
    """name -> exact version of the ``name==version`` words on the Makefile's lines that start the recipe or
    variable ``variable_or_line`` (continuation lines included)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if variable_or_line in ln)
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.*]*)", line)}


def _requirements(reqs: list[str]) -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


STACKS = {
    "development (make setup)": lambda: _makefile_pins("pip install -q torch=="),
    "GPU host (make setup-host)": lambda: _makefile_pins("HOST_PINS :="),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_declared_ranges_hold_each_tested_stack(stack):
    pins = STACKS[stack]()
    assert {"torch", "torchvision"} <= set(pins), pins
    deps = _requirements(_pyproject()["project"]["dependencies"])
    build = _requirements(_pyproject()["build-system"]["requires"])
    for name, version in pins.items():
        if "*" in version:  # numpy==2.5.*: the series' first release stands for it
            version = version.replace("*", "0")
        for where, reqs in (("dependencies", deps), ("build-system requires", build)):
            if name in reqs:
                assert reqs[name].specifier.contains(Version(version), prereleases=False), \
                    f"pyproject {where}: {reqs[name]} excludes {name} {version} of the {stack} stack"


def test_torch_and_torchvision_are_ranges_not_pins():
    deps = _requirements(_pyproject()["project"]["dependencies"])
    build = _requirements(_pyproject()["build-system"]["requires"])
    for reqs in (deps, build):
        for name in ("torch", "torchvision"):
            if name in reqs:
                assert not any(s.operator in ("==", "===") for s in reqs[name].specifier), reqs[name]
    assert "torch" in build, "the extension builds against torch: the build must require it"
    # Upper bounds: a torch the suite has not run on is not claimed.
    assert any(s.operator == "<" for s in deps["torch"].specifier)


def test_installing_this_checkout_keeps_the_installed_torch(tmp_path):
    """pip, offline, resolving `pip install --no-build-isolation .` here would install fastmlr and nothing else."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
         "--disable-pip-version-check", "--report", str(report), str(ROOT)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "FASTMLR_WITH_CUDA": "0", "PIP_CONFIG_FILE": "/dev/null",
             "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    installs = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    assert installs == ["fastmlr"], f"pip would also install {installs} (torch here is {metadata.version('torch')})"
