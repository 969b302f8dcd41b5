"""Child process: peak resident memory of one benchmark workload above its inputs (MiB), as JSON.

    python benchmarks/_peak.py car-fwd|car-fwdbwd|oe BACKEND

Each workload runs in its own process and reads its own high-water mark,
``VmHWM`` of /proc/self/status (``ru_maxrss`` would not do: Linux carries
the parent's peak into a forked child, so a child of a process that already
ran the reference reports nothing). The figure is the peak minus the
resident size once the inputs exist.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    what, backend = sys.argv[1], sys.argv[2]
    if what == "oe":
        run = workloads.oe(backend)
    else:
        run = workloads.car_head(backend, what == "car-fwdbwd", **workloads.size())
    base = rss_mib()
    run()
    print(json.dumps({"peak_mib": rss_mib() - base}))
