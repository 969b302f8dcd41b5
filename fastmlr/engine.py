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

from .files import no_space_error


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


def describe_error(e: BaseException) -> str:
    """The one line a user error is answered with (a full disk says so and names the file)."""
    full = no_space_error(e)
    if full is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return (f"no space left on the device{where} ({full.strerror or 'disk full'}); "
                "the files already there are kept: free some space, or write elsewhere, and run again")
    return one_line(e)


def run_command(work: Callable[[], int], debug: bool = False, extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command's work; a user error prints ``error: <one line>`` and returns 2 (``debug``: re-raised).

    Every command's ``main`` ends here (train, evaluate, predict, export, bench, cooccurrence, demo).
    ``extra``: further exception types the command answers the same way (train: divergence).
    A full disk is answered in one line naming the file, whatever raised it; Ctrl-C (SIGINT) in one
    line and the conventional status 130.
    """
    try:
        return work()
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (SIGINT); files are written whole or not at all, so the last complete ones are "
              "kept", file=sys.stderr)
        return 130
    except (*user_errors(), *extra) as e:
        if debug:
            raise
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if debug or no_space_error(e) is None:
            raise
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 2


# Image sides a command accepts: every backbone downsamples 32 times; above the maximum, one float32
# batch of one image (3 x S x S) and the backbone's activations no longer fit an ordinary machine.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096


def check_image_size(size: int | None, flag: str = "--image-size") -> None:
    """Refuse an input side outside [MIN_IMAGE_SIZE, MAX_IMAGE_SIZE] (None: the flag was left out)."""
    if size is not None and not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        why = ("too small; the backbones downsample 32 times" if size < MIN_IMAGE_SIZE
               else "too large: one image's activations would exhaust memory")
        raise UsageError(f"{flag} {size}: {why}, expected >= {MIN_IMAGE_SIZE} and <= {MAX_IMAGE_SIZE} pixels")


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
