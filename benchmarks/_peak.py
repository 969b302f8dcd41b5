"""Child process: peak resident memory of one benchmark workload above its inputs (MiB), as JSON.

    python benchmarks/_peak.py car-fwd|car-fwdbwd|oe BACKEND

Each workload runs in its own process because ``ru_maxrss`` is a per-process
high-water mark; the figure is the peak minus the resident size once the
inputs exist.
"""

import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    what, backend = sys.argv[1], sys.argv[2]
    if what == "oe":
        run = workloads.oe(backend)
    else:
        run = workloads.car_head(backend, what == "car-fwdbwd", **workloads.size())
    base = rss_mib()
    run()
    print(json.dumps({"peak_mib": rss_mib() - base}))
