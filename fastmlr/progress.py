"""Progress bars for a person at a terminal, and nothing in a log file.

Every command's bars come from :func:`progress_bar`: a tqdm bar on standard error
when it is a terminal, else a silent stand-in with the same methods, so that
``make demo > log 2>&1`` holds the one-line summaries the commands print and no
carriage-return frames. ``FASTMLR_PROGRESS=1`` forces bars on, ``0`` off.
"""

from __future__ import annotations

import os
import sys


def bars_enabled(requested: bool = True) -> bool:
    """Whether a bar is drawn: ``requested`` (the command's --no-progress etc.) and stderr is a terminal."""
    forced = os.environ.get("FASTMLR_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return requested and forced == "1"
    try:
        return requested and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable=None, *, enabled: bool = True, **kw):
    """``tqdm(iterable, **kw)`` on a terminal, disabled elsewhere (see :func:`bars_enabled`)."""
    from tqdm import tqdm

    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not bars_enabled(enabled), **kw)
