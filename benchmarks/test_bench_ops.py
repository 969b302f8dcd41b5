"""pytest-benchmark suite of fastmlr's ops on the CPU: reference against every backend that runs here.

    make bench-ops          (= .venv/bin/python -m pytest benchmarks --benchmark-json=benchmarks/results/pytest-benchmark.json)

Time comes from pytest-benchmark; peak memory from a child process per
workload (benchmarks/_peak.py). Targets on the CPU: the fused CAR
head at least 3x faster than the reference forward + backward with at least
20x less peak memory; OE for 16 x 3 maps under a millisecond.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import workloads
from fastmlr import ops

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ops.available_backends("cpu")


def peak_mib(what: str, backend: str) -> float | None:
    r = subprocess.run([sys.executable, os.path.join(HERE, "_peak.py"), what, backend],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]


def _check(backend, *tensors):
    row = next(r for r in ops.backend_status("cpu", "car_pool", tensors[0].dtype) if r.name == backend)
    if not row.runs:
        pytest.skip(f"{backend}: {row.reason}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_car_head(benchmark, record, backend, mode):
    _check(backend, torch.zeros(1, 1, 1))
    size = workloads.size()
    run = workloads.car_head(backend, mode == "fwdbwd", **size)
    run()  # warm-up (thread pool, allocator)
    rounds = 2 if (backend == "reference" and size["name"] == "paper") else 5
    benchmark.pedantic(run, rounds=rounds, iterations=1)
    peak = peak_mib(f"car-{mode}", backend)
    benchmark.extra_info.update(peak_mib=peak, **size)
    record({"workload": f"CAR head {mode} N={size['N']} C={size['C']} P={size['P']} D={size['D']}",
            "backend": backend, "median_ms": benchmark.stats.stats.median * 1e3, "peak_mib": peak})


@pytest.mark.parametrize("backend", BACKENDS)
def test_oe(benchmark, record, backend):
    _check(backend, torch.zeros(1, 1, 1))
    run = workloads.oe(backend)
    run()
    benchmark.pedantic(run, rounds=200, iterations=1)
    record({"workload": "OE boxes+erase 16x3x14x14", "backend": backend,
            "median_ms": benchmark.stats.stats.median * 1e3, "peak_mib": peak_mib("oe", backend)})
