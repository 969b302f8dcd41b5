"""The lock of a run folder: one training writes ``--out`` at a time.

``with run_lock(out, log):`` holds an exclusive ``fcntl.flock`` on ``out/.fastmlr.lock``
for the whole run; the file names its holder (pid, host, start time, command line).
A second training into the same folder is refused in one line naming that holder
(:class:`RunLocked`, a :class:`~fastmlr.engine.UsageError`). The kernel releases a flock
when its process dies, so the lock of a killed run is free: the next run takes it over
and says so in one line. On release the lock file is removed (a folder the lock created
and nothing else filled is removed too), so a refused or finished run leaves no trace of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from .engine import UsageError

LOCK_NAME = ".fastmlr.lock"


class RunLocked(UsageError):
    """Another live process holds the run folder's lock."""


def _holder(fh) -> dict:
    fh.seek(0)
    try:
        holder = json.loads(fh.read(4096) or "{}")
    except (ValueError, RecursionError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(h: dict) -> str:
    if not h:
        return "a process that has not yet written its name"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return f"pid {h.get('pid')} on {h.get('host')}, started {started}: {h.get('command', '?')}"


@contextlib.contextmanager
def run_lock(out: str, log=lambda *a: None):
    """Hold ``out``'s lock for the block; refuse (:class:`RunLocked`) when another live process holds it."""
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_NAME)
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_holder(fh))
            fh.close()
            raise RunLocked(f"--out {out} is being written by another training ({holder}); lock {path}: "
                            f"wait for it to end or choose another --out") from None
        # The file may have been removed by the holder that released it just before: lock the one on disk.
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    stale = _holder(fh)
    if stale:
        log(f"{path}: took over the lock of pid {stale.get('pid')} on {stale.get('host')}, which is no longer running")
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                         "command": " ".join(sys.argv)[:500]}))
    fh.flush()
    try:
        yield path
    finally:
        os.unlink(path)  # while still locked: a waiting process sees the inode change and retries
        fh.close()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only when empty: a refused run leaves no folder behind
