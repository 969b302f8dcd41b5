"""Where the CUDA toolkit is: the one lookup that setup.py, the Makefile and ``make gpu-check`` share.

Standard library only (no torch, nothing else of fastmlr), so that setup.py can use it before torch's
build helpers are imported and the Makefile can run it as a script:

    python fastmlr/toolkit.py            # prints the toolkit root, or nothing when there is none
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def find_cuda_home(environ=None) -> str | None:
    """The CUDA toolkit root: $CUDA_HOME when set, else the folder of the real nvcc behind the one on PATH.

    The nvcc on PATH may be a wrapper script (e.g. one that picks a version); the real compiler reports
    its own folder in ``nvcc --dryrun`` as ``_HERE_``. None when there is no nvcc at all.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_HOME"):
        return environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if not nvcc:
        return None
    try:
        err = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        err = ""
    for line in err.splitlines():
        if "_HERE_=" in line:
            return os.path.dirname(line.split("_HERE_=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvcc_version(cuda_home: str) -> str | None:
    """'13.0' from ``<cuda_home>/bin/nvcc --version``, or None if it cannot be run or read."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def usable_cuda_home(environ=None) -> str | None:
    """:func:`find_cuda_home` when its ``bin/nvcc`` exists, else None."""
    home = find_cuda_home(environ)
    return home if home and os.path.exists(os.path.join(home, "bin", "nvcc")) else None


__all__ = ["find_cuda_home", "nvcc_version", "usable_cuda_home"]

if __name__ == "__main__":
    print(usable_cuda_home() or "")
