"""Collects each benchmark's figures and prints the ops' comparison table at the end of the run."""

import json
import os

import pytest

RESULTS: list[dict] = []


@pytest.fixture
def record():
    return RESULTS.append


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    w = terminalreporter.write_line
    w("")
    w("| workload | backend | median ms | peak MiB above inputs | vs reference: time | vs reference: memory |")
    w("|---|---|---:|---:|---:|---:|")
    ref = {r["workload"]: r for r in RESULTS if r["backend"] == "reference"}
    for r in sorted(RESULTS, key=lambda r: (r["workload"], r["backend"] != "reference", r["backend"])):
        base = ref.get(r["workload"])
        speed = f"{base['median_ms'] / r['median_ms']:.1f}x faster" if base and r is not base else ""
        mem = ""
        if base and r is not base and r["peak_mib"] is not None and base["peak_mib"] is not None:
            # below a MiB the ratio is page-granularity noise.
            mem = (f"{base['peak_mib'] / max(r['peak_mib'], 1.0):.0f}x less" if base["peak_mib"] >= 1
                   else "both below 1 MiB")
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        w(f"| {r['workload']} | {r['backend']} | {r['median_ms']:.3f} | {peak} | {speed} | {mem} |")
    out = os.environ.get("FASTMLR_BENCH_JSON", os.path.join(os.path.dirname(__file__), "results", "ops.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as fh:
        json.dump(RESULTS, fh, indent=2)
    os.replace(out + ".tmp", out)
    w(f"figures written to {out}")
