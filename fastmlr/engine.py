"""Engine code the commands share: device choice and the prediction loop.

Commands (train, evaluate, predict, export, bench) parse flags and call these;
none of them owns a loop another command imports. :func:`run_command` gives every
command the same answer to a user error: one line ``error: ...`` on stderr and
exit status 2, the traceback only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable

import torch


class UsageError(SystemExit):
    """A flag, file or folder a command cannot work with; the message names it and what was expected.

    A ``SystemExit``, so that a caller that does not catch it still ends without a traceback.
    """


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the user asked for something that cannot be done"."""
    from .ops import BackendError

    # OSError: a missing, unreadable or unwritable file the user named.
    return (UsageError, ValueError, OSError, BackendError)


@contextlib.contextmanager
def backend_flag(name: str | None, flag: str = "--backend"):
    """``fastmlr.ops.use_backend(name)`` for a command's flag (nothing when ``name`` is empty).

    An unknown name is a :class:`UsageError` naming the flag, raised on entering.
    """
    with contextlib.ExitStack() as stack:
        if name:
            from .ops import BackendError, use_backend

            try:
                stack.enter_context(use_backend(name))
            except BackendError as e:
                raise UsageError(f"{flag} {name}: {one_line(e)}") from None
        yield


def one_line(e: BaseException) -> str:
    """An error's message on one line (multi-line messages are joined with '; ')."""
    parts = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(parts) or type(e).__name__


def run_command(work: Callable[[], int], debug: bool = False, extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's work; a user error prints ``error: <one line>`` and returns 2 (``debug``: re-raised).

    ``extra``: further exception types the command answers the same way (train: divergence).
    """
    try:
        return work()
    except (*user_errors(), *extra) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


class DeviceUnavailable(ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(requested: str | torch.device | None = None, *, flag: str = "--device") -> torch.device:
    """The device a command runs on: ``requested``, else CUDA when present, else the CPU.

    Raises :class:`DeviceUnavailable` (a ``ValueError`` naming ``flag``) when CUDA is asked for
    and absent, or when ``cuda:N`` names a GPU that does not exist.
    """
    if requested is None or requested == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise DeviceUnavailable(f"{flag} {requested}: not a device name ({e}); expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{flag} {requested}: no CUDA device is available on this machine (use {flag} cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"{flag} {requested}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
            )
    return dev


@torch.no_grad()
def predict_dataset(model, loader, device, progress: bool = False, desc: str = "eval"):
    """Run ``model`` over ``loader``; returns (scores, targets, ignore, n_skipped) on the CPU."""
    from .progress import progress_bar

    model.eval()
    scores, targets, ignores, skipped = [], [], [], 0
    for batch in progress_bar(loader, enabled=progress, desc=desc, leave=False):
        if batch is None:
            skipped += loader.batch_size
            continue
        images, y, ign, n_skip = batch
        skipped += n_skip
        scores.append(torch.sigmoid(model(images.to(device)).float()).cpu())
        targets.append(y)
        ignores.append(ign)
    if not scores:
        raise ValueError(f"no readable image in the {desc} data ({len(loader.dataset)} listed, {skipped} unreadable)")
    return torch.cat(scores), torch.cat(targets), torch.cat(ignores), skipped
