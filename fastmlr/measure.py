"""Measurement: per-call timers, interleaved timing with an adaptive stop, statistics, memory meters.

Latencies that are compared (a model against ``baseline`` on the same runtime)
are timed *interleaved* in one process: round r calls every model once, in an
order rotated by r (A B, B A, A B ...), so a burst of load from another
process slows every model alike instead of one model's whole block of calls.
Rounds go on until the spread of every overhead is small enough, or a time cap
or a maximum is reached; the spread is a bootstrap interval over blocks of
consecutive rounds (pairs stay pairs), and it is reported beside the overhead.
"""

from __future__ import annotations

import gc
import math
import resource
import time
from typing import Callable

import numpy as np
import torch

# -- statistics ---------------------------------------------------------------------------------------


def percentile(samples, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds, batch: int) -> dict:
    """Latency statistics of per-call times in seconds, for calls of ``batch`` images."""
    med = percentile(seconds, 50)
    p25, p75 = percentile(seconds, 25), percentile(seconds, 75)
    return {
        "iters": len(seconds),
        "median_ms": 1e3 * med,
        "p10_ms": 1e3 * percentile(seconds, 10),
        "p25_ms": 1e3 * p25,
        "p75_ms": 1e3 * p75,
        "p90_ms": 1e3 * percentile(seconds, 90),
        "iqr_ms": 1e3 * (p75 - p25),
        "mean_ms": 1e3 * sum(seconds) / len(seconds),
        "min_ms": 1e3 * min(seconds),
        "ms_per_image": 1e3 * med / batch,
        "images_per_s": batch / med if med > 0 else float("inf"),
    }


def overhead(model_ms: float, baseline_ms: float) -> float:
    """Relative cost over the baseline: (model - baseline) / baseline."""
    return (model_ms - baseline_ms) / baseline_ms


LEVEL = 0.90  # the overhead's interval: 5th to 95th percentile of its bootstrap distribution


def _bootstrap_medians(rows: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """rows: (k, n) samples of k series paired by column; returns (resamples, k) medians of resampled columns.

    A moving-block bootstrap (blocks of about n^(1/3) consecutive rounds): machine load comes in spells
    that last several rounds, and resampling single rounds would treat a spell's rounds as independent,
    which makes the interval too narrow.
    """
    n = rows.shape[1]
    block = max(1, min(n, int(round(n ** (1 / 3)))))
    n_blocks = -(-n // block)
    starts = np.random.default_rng(seed).integers(0, n - block + 1, size=(resamples, n_blocks))
    idx = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    return np.median(rows[:, idx], axis=2).T


def overhead_interval(model_s, baseline_s, *, level: float = LEVEL, resamples: int = 400, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``median(model) / median(baseline) - 1``, resampling rounds (sample i of each
    series was taken in the same round, so they are resampled together)."""
    n = min(len(model_s), len(baseline_s))
    if n == 0:
        raise ValueError("overhead_interval of no samples")
    rows = np.array([list(model_s)[:n], list(baseline_s)[:n]], dtype=np.float64)
    med = _bootstrap_medians(rows, resamples, seed)
    ratios = med[:, 0] / med[:, 1] - 1.0
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(ratios, [tail, 100.0 - tail])
    return float(lo), float(hi)


def median_interval(samples, *, level: float = LEVEL, resamples: int = 400, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the median of ``samples``."""
    if not len(samples):
        raise ValueError("median_interval of no samples")
    med = _bootstrap_medians(np.array([list(samples)], dtype=np.float64), resamples, seed)[:, 0]
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(med, [tail, 100.0 - tail])
    return float(lo), float(hi)


def overhead_stats(model_s, baseline_s) -> dict:
    """Overhead from the two medians, its interval, and whether the interval reaches zero (the spread is then
    larger than the overhead, so not even its sign is measured)."""
    ov = overhead(percentile(model_s, 50), percentile(baseline_s, 50))
    lo, hi = overhead_interval(model_s, baseline_s)
    return {"overhead_vs_baseline": ov, "overhead_interval": [lo, hi], "overhead_level": LEVEL,
            "overhead_uncertain": bool(lo <= 0.0 <= hi)}


def spread_small(samples: dict[str, list[float]], baseline: str | None, target: float) -> bool:
    """True when every overhead's interval (or, without a baseline, every median's relative interval) is at
    most ``2 * target`` wide."""
    for name, xs in samples.items():
        if baseline in samples and name != baseline:
            lo, hi = overhead_interval(xs, samples[baseline], resamples=200)
            width = hi - lo
        elif baseline not in samples:
            lo, hi = median_interval(xs, resamples=200)
            width = (hi - lo) / max(percentile(xs, 50), 1e-12)
        else:
            continue
        if width > 2 * target:
            return False
    return True


# -- timers -------------------------------------------------------------------------------------------


CLOCKS = {
    "wall": "wall-clock latency (time.perf_counter)",
    "cpu": "CPU time of the process (time.process_time): the compute, without the waits for a core that "
           "other processes cause",
}


class CallTimer:
    """Seconds one call takes: CUDA events on a GPU, ``clock`` on the CPU (the monotonic perf_counter, or the
    process's CPU time). ``now()`` reads ``wall_clock`` (default: ``clock``), for time caps.

    ``clock`` can be replaced (tests drive a fake clock that the fake models advance).
    """

    def __init__(self, device: torch.device | str | None = None, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.clock = clock
        self.wall_clock = wall_clock or clock

    @classmethod
    def named(cls, device, clock: str = "wall") -> "CallTimer":
        """The timer for ``clock`` ("wall" or "cpu", see CLOCKS); on CUDA always events."""
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCKS)}")
        tick = time.process_time if clock == "cpu" else time.perf_counter
        return cls(device, clock=tick, wall_clock=time.perf_counter)

    def now(self) -> float:
        return self.wall_clock()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = self.clock()
        fn()
        return self.clock() - t0


def time_calls(fn: Callable, x, iters: int, warmup: int, device: torch.device, timer: CallTimer | None = None) -> list[float]:
    """Seconds per call of ``fn(x)``, one model alone: ``warmup`` untimed calls, then ``iters`` timed ones."""
    timer = timer or CallTimer(device)
    for _ in range(warmup):
        fn(x)
    timer.sync()
    return [timer(lambda: fn(x)) for _ in range(iters)]


def interleaved_times(calls: dict[str, Callable[[], object]], *, timer: CallTimer, min_rounds: int, max_rounds: int,
                      max_seconds: float | None = None, target: float | None = None, baseline: str | None = None,
                      check_every: int = 5) -> tuple[dict[str, list[float]], dict[str, str], dict]:
    """Time every call of ``calls`` once per round, the order rotated each round; returns
    ``(samples, failed, info)``.

    samples[name][i] was taken in round i for every name still running. A call that raises is dropped
    from later rounds and its reason put in ``failed``. Rounds stop after ``max_rounds``, or, once
    ``min_rounds`` are done, when ``max_seconds`` of timing have passed ("time cap") or every overhead
    over ``baseline`` has an interval at most ``2 * target`` wide ("converged"; checked every
    ``check_every`` rounds). ``info``: rounds, stop reason, seconds.
    """
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    names = list(calls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    failed: dict[str, str] = {}
    timer.sync()
    t0 = timer.now()
    rounds, stop = 0, "fixed" if min_rounds == max_rounds else "max rounds"
    while rounds < max_rounds and names:
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            try:
                samples[name].append(timer(calls[name]))
            except Exception as e:  # the model's cell says what failed; the others go on
                failed[name] = " ".join(f"{type(e).__name__}: {e}".strip().splitlines()[:3])[:400]
                samples.pop(name)
        names = [n for n in names if n not in failed]
        rounds += 1
        if rounds < min_rounds or rounds >= max_rounds or not names:
            continue
        if max_seconds is not None and timer.now() - t0 >= max_seconds:
            stop = "time cap"
            break
        if target is not None and (rounds - min_rounds) % check_every == 0 and spread_small(samples, baseline, target):
            stop = "converged"
            break
    return samples, failed, {"rounds": rounds, "stop": stop, "seconds": timer.now() - t0}


# -- memory -------------------------------------------------------------------------------------------


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's resident-set high-water mark (Linux: write 5 to clear_refs); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set since the last reset (VmHWM), else the process lifetime's (ru_maxrss)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0.0) / 1024.0


class MemoryMeter:
    """Peak memory of a section: device memory on CUDA (torch's allocator, or the device's used memory for
    runtimes with their own allocator), the process's resident set on the CPU."""

    def __init__(self, device: torch.device, torch_alloc: bool):
        self.device, self.torch_alloc = device, torch_alloc

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            self.start_rss = rss_mb()
            self.reset_ok = reset_peak_rss()

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            if self.torch_alloc:
                return {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                        "mem_kind": "device memory, torch allocator peak"}
            free, total = torch.cuda.mem_get_info(self.device)
            return {"peak_mem_mb": (total - free) / 2**20, "mem_kind": "device memory in use after timing (all processes)"}
        peak = peak_rss_mb()
        return {
            "peak_mem_mb": peak,
            "rss_increase_mb": max(0.0, peak - self.start_rss),
            "mem_kind": "resident set peak of the process while timing" + ("" if self.reset_ok else " (lifetime peak: clear_refs unavailable)"),
        }
