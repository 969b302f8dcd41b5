"""Which threads the C++ kernels' loops run on, for callers inside another runtime's thread pool.

By default fastmlr's CPU kernels spread their loops over ATen's intra-op threads (OpenMP in the x86
wheels), whose idle threads spin for a while after each loop. Inside a host runtime with a pool of its
own (ONNX Runtime calling the fused graph's PyOps), those spinning threads take the cores the host's next
node needs; :func:`sleeping_threads` has the kernels called from the current thread use fastmlr's own
pool instead, whose threads sleep as soon as their share is done (csrc/cpu/parallel.h; the measurement
is in benchmarks/README.md). The same number of threads either way (``torch.get_num_threads()``).
"""

from __future__ import annotations

import contextlib
import sys

_said = False


def _switch():
    global _said
    try:
        from .. import _C
    except ImportError:  # no extension: the kernels that would read the switch are not there either
        return None
    switch = getattr(_C, "_set_sleeping_pool", None)
    if switch is None and not _said:
        _said = True
        print("fastmlr.ops: this build of fastmlr._C predates its sleeping pool (rebuild it: pip install "
              "--no-build-isolation -e .); its kernels keep ATen's threads", file=sys.stderr)
    return switch


@contextlib.contextmanager
def sleeping_threads(on: bool = True):
    """Within the block, this thread's calls of fastmlr's CPU kernels run their loops on fastmlr's sleeping
    pool (``on``) or on ATen's (``on=False``); the previous setting comes back afterwards."""
    switch = _switch()
    if switch is None:
        yield
        return
    before = switch(bool(on))
    try:
        yield
    finally:
        switch(before)
