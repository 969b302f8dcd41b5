"""Files that are never seen half-written: atomic writes, published modes, content hashes.

Checkpoints, exported artefacts, their sidecars, caches and reports are all
written through :func:`atomic_write_bytes` (a temporary file beside the target,
fsynced, then renamed over it), so a killed process leaves the old file or the
new one, never a mix. The temporaries are hidden files ``.<name>.<random>.tmp``
(or ``.tmp<ext>`` when a tool needs an extension); :func:`remove_stale_temps`
deletes those a killed process left behind.

A target that exists keeps its permission bits; a read-only one (no write bit
for its owner, or not writable by this user) is refused with
:class:`ReadOnlyTarget` before anything is written: the writer does not get to
decide that a file protected by its owner may be replaced.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import stat
import tempfile
import time
from typing import Any, Iterable

# Temporary files older than this process cannot be a write of ours in progress.
_PROCESS_START = time.time()


class ReadOnlyTarget(PermissionError, ValueError):
    """The file to be (re)written is read-only, or its folder cannot take a new file."""


class NoSpace(OSError):
    """A write failed because the filesystem is full (or a quota or file-size limit was reached)."""


# Errors of a full filesystem (or quota, or file size limit).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def no_space_error(e: BaseException | None) -> OSError | None:
    """The OSError "no space left" that ``e`` is or was raised from (torch's writers wrap it), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return e
        e = e.__cause__ or e.__context__
    return None


def _published_bits() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def creatable_folder_problem(folder: str) -> str | None:
    """Why files cannot be created in ``folder`` (or where it would be created), else None.

    A missing folder is judged by its first existing ancestor: that must be a writable folder.
    """
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"folder {probe} is not writable"
    return None


def check_replaceable(path: str, what: str = "") -> None:
    """Raise :class:`ReadOnlyTarget` unless ``path`` may be written or replaced by an atomic write.

    Refused: an existing read-only file (mode without the owner's write bit, or
    not writable by this user), a folder in its place, and a folder (or the first
    existing ancestor of a missing one) where no file can be created.
    ``what`` names the path in the message (a flag, for example).
    """
    label = f"{what} {path}" if what else str(path)
    if os.path.isdir(path):
        raise ReadOnlyTarget(f"{label} is a folder; expected a file path")
    if os.path.lexists(path):
        mode = os.stat(path).st_mode
        if not mode & stat.S_IWUSR or not os.access(path, os.W_OK):
            raise ReadOnlyTarget(
                f"{label} is read-only (mode {stat.S_IMODE(mode):04o}), so it is not replaced: "
                f"make it writable (chmod u+w), remove it, or write elsewhere"
            )
    problem = creatable_folder_problem(os.path.dirname(os.path.abspath(path)))
    if problem:
        raise ReadOnlyTarget(f"{label} cannot be written: {problem}")


def check_targets(paths: Iterable[tuple[str, str]]) -> None:
    """:func:`check_replaceable` on every ``(path, what)`` pair at once; one message lists every refused path."""
    problems = []
    for path, what in paths:
        try:
            check_replaceable(path, what)
        except ReadOnlyTarget as e:
            problems.append(str(e))
    if problems:
        raise ReadOnlyTarget("; ".join(problems))


def check_distinct(targets: Iterable[tuple[str, str]], inputs: Iterable[tuple[str, str]] = ()) -> None:
    """Refuse targets that are one of the inputs or another target, comparing real paths (links, ``..``, case as the
    filesystem has it); ``(path, what)`` pairs. The message names both flags, so nothing is overwritten by accident."""
    def key(path: str) -> tuple:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
            return ("inode", st.st_dev, st.st_ino)  # hard links and case-insensitive filesystems too
        except OSError:
            return ("path", real)

    inputs = [(p, w) for p, w in inputs if p]
    seen: dict[tuple, tuple[str, str]] = {}
    for path, what in inputs:
        seen.setdefault(key(path), (path, what))
    problems = []
    for path, what in targets:
        k = key(path)
        if k in seen:
            other, other_what = seen[k]
            if what.endswith(" sidecar") and other_what.endswith(" sidecar"):
                continue  # the artefacts' own collision is already named
            role = "an input" if (other, other_what) in inputs else "another target"
            problems.append(f"{what} {path} is the same file as {other_what} {other} ({role}): it would be "
                            f"overwritten; give each output its own path")
        else:
            seen[k] = (path, what)
    if problems:
        raise ValueError("; ".join(problems))


def replace_file(tmp: str, path: str, *, publish: bool = False) -> None:
    """Rename the finished temporary ``tmp`` over ``path``, respecting the target's mode.

    An existing target keeps its permission bits (a read-only one is refused,
    :func:`check_replaceable`); a new file gets the umask's usual mode when
    ``publish`` (files read by other users: artefacts), else stays private (0600).
    """
    check_replaceable(path)
    if os.path.exists(path):
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    else:
        os.chmod(tmp, _published_bits() if publish else 0o600)
    os.replace(tmp, path)


def temp_path_for(path: str, suffix: str = ".tmp") -> str:
    """A new hidden temporary beside ``path`` (``.<name>.<random><suffix>``), created empty; the caller removes it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str, write, *, publish: bool = False) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it over ``path``.

    Refuses a read-only target before calling ``write`` (:class:`ReadOnlyTarget`);
    modes as in :func:`replace_file`.
    """
    check_replaceable(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        replace_file(tmp, path, publish=publish)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = no_space_error(e)
        if full is not None:  # torch's zip writer turns it into "unexpected pos": say what it is, name the file
            raise NoSpace(full.errno, os.strerror(full.errno), path) from e
        raise


def atomic_write_json(path: str, obj: Any, *, publish: bool = False) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(path, lambda fh: fh.write(data), publish=publish)


def remove_stale_temps(path: str) -> list[str]:
    """Delete hidden temporaries ``.<name>.*.tmp`` (and ``.<name>.*.tmp.<ext>``) beside ``path`` left by killed writes.

    Only files last modified before this process started are removed (a write in
    progress, here or in another process started since, is never touched).
    Returns the removed paths.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem = os.path.join(glob.escape(folder), "." + glob.escape(name) + ".")
    removed = []
    for tmp in sorted(set(glob.glob(stem + "*.tmp") + glob.glob(stem + "*.tmp.*"))):
        try:
            if os.path.isfile(tmp) and os.path.getmtime(tmp) < _PROCESS_START:
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:  # removed meanwhile, or not ours to remove: leave it
            pass
    return removed


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish_mode(path: str) -> None:
    """Give a file written by ``atomic_write_bytes`` (mode 0600, from mkstemp) the umask's usual mode.

    Artefacts are read by other users (a Triton server, a service account).
    Prefer ``atomic_write_bytes(..., publish=True)``, which leaves a replaced
    file's own mode alone.
    """
    os.chmod(path, _published_bits())
