"""Files that are never seen half-written: atomic writes, published modes, content hashes.

Checkpoints, exported artefacts, their sidecars, caches and reports are all
written through :func:`atomic_write_bytes` (a temporary file beside the target,
fsynced, then renamed over it), so a killed process leaves the old file or the
new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any


def atomic_write_bytes(path: str, write) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish_mode(path: str) -> None:
    """Give a file written by ``atomic_write_bytes`` (mode 0600, from mkstemp) the umask's usual mode.

    Artefacts are read by other users (a Triton server, a service account).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
