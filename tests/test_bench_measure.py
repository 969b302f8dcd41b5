"""fastmlr.bench's measurement on fake timers: interleaving gets the overhead's sign right through a load burst
that flips it for one-model-at-a-time timing, the adaptive stop, the paired bootstrap, failures mid-run.

A fake model is a call that advances a fake clock by its cost times the machine's load factor at that moment
times per-call noise; the timers read the fake clock, so every figure here is deterministic."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from fastmlr.bench import CallTimer, interleaved_times, overhead, overhead_interval, percentile, time_calls
from fastmlr.measure import median_interval, overhead_stats, spread_small


class FakeMachine:
    """A clock, load bursts ``(t0, t1, factor)`` in seconds of fake time, and per-call multiplicative noise."""

    def __init__(self, bursts=(), noise=0.05, seed=0):
        self.t, self.bursts, self.noise = 0.0, list(bursts), noise
        self.rng = random.Random(seed)
        self.log: list[str] = []

    def clock(self) -> float:
        return self.t

    def load(self) -> float:
        return max([f for t0, t1, f in self.bursts if t0 <= self.t < t1], default=1.0)

    def model(self, name: str, cost_s: float):
        def call(_x=None):
            self.log.append(name)
            self.t += cost_s * self.load() * self.rng.uniform(1 - self.noise, 1 + self.noise)

        return call


def _overhead(samples_b, samples_a) -> float:
    return overhead(percentile(samples_b, 50), percentile(samples_a, 50))


def test_load_burst_flips_the_sign_alone_but_not_interleaved():
    # B costs 10% more than A. A burst (2.5x) covers the first 4 s, i.e. most of A's block when timed alone first.
    seq = FakeMachine(bursts=[(0.0, 4.0, 2.5)], seed=1)
    timer = CallTimer("cpu", clock=seq.clock)
    a = time_calls(seq.model("A", 0.100), None, 30, 0, torch.device("cpu"), timer)
    b = time_calls(seq.model("B", 0.110), None, 30, 0, torch.device("cpu"), timer)
    assert _overhead(b, a) < -0.3  # one model after the other: B looks much faster

    inter = FakeMachine(bursts=[(0.0, 4.0, 2.5)], seed=1)
    timer = CallTimer("cpu", clock=inter.clock)
    calls = {"A": inter.model("A", 0.100), "B": inter.model("B", 0.110)}
    samples, failed, info = interleaved_times(calls, timer=timer, min_rounds=30, max_rounds=30)
    assert not failed and info == {"rounds": 30, "stop": "fixed", "seconds": pytest.approx(inter.t)}
    ov = _overhead(samples["B"], samples["A"])
    assert 0.06 < ov < 0.14
    lo, hi = overhead_interval(samples["B"], samples["A"])
    assert 0 < lo <= ov <= hi  # the sign is established, and the interval holds the estimate


def test_interleaved_sign_is_right_wherever_the_burst_falls():
    # Quick mode's minimum (15 rounds). Each seed: one burst of 1.5x-4x starting in the first 0.4 s and lasting
    # 1-3 s. Timed one model after the other, about half the seeds give the wrong sign; interleaved, none does.
    wrong_alone = 0
    for seed in range(24):
        rng = random.Random(100 + seed)
        t0 = rng.uniform(0.0, 0.4)
        bursts = [(t0, t0 + rng.uniform(1.0, 3.0), rng.uniform(1.5, 4.0))]

        m = FakeMachine(bursts=bursts, noise=0.05, seed=seed)
        timer = CallTimer("cpu", clock=m.clock)
        a = time_calls(m.model("baseline", 0.100), None, 15, 0, torch.device("cpu"), timer)
        b = time_calls(m.model("srdl", 0.110), None, 15, 0, torch.device("cpu"), timer)
        wrong_alone += _overhead(b, a) < 0

        m = FakeMachine(bursts=bursts, noise=0.05, seed=seed)
        calls = {"baseline": m.model("baseline", 0.100), "srdl": m.model("srdl", 0.110)}
        samples, _, _ = interleaved_times(calls, timer=CallTimer("cpu", clock=m.clock), min_rounds=15, max_rounds=15)
        assert 0.03 < _overhead(samples["srdl"], samples["baseline"]) < 0.2, seed
    assert wrong_alone >= 6  # the scenario is one that misleads timing without interleaving


def test_rounds_rotate_the_order():
    m = FakeMachine(noise=0.0)
    calls = {"A": m.model("A", 0.01), "B": m.model("B", 0.01), "C": m.model("C", 0.01)}
    interleaved_times(calls, timer=CallTimer("cpu", clock=m.clock), min_rounds=4, max_rounds=4)
    assert m.log == list("ABC" "BCA" "CAB" "ABC")


def test_adaptive_stop_converges_on_a_quiet_machine_and_caps_on_a_noisy_one():
    quiet = FakeMachine(noise=0.01, seed=3)
    calls = {"baseline": quiet.model("baseline", 0.1), "srdl": quiet.model("srdl", 0.11)}
    samples, _, info = interleaved_times(calls, timer=CallTimer("cpu", clock=quiet.clock), min_rounds=10,
                                         max_rounds=1000, max_seconds=1e6, target=0.02, baseline="baseline")
    assert info["stop"] == "converged" and 10 <= info["rounds"] < 100
    lo, hi = overhead_interval(samples["srdl"], samples["baseline"], resamples=200)
    assert hi - lo <= 2 * 0.02 + 1e-9

    noisy = FakeMachine(noise=0.6, seed=3)
    calls = {"baseline": noisy.model("baseline", 0.1), "srdl": noisy.model("srdl", 0.11)}
    samples, _, info = interleaved_times(calls, timer=CallTimer("cpu", clock=noisy.clock), min_rounds=10,
                                         max_rounds=100000, max_seconds=30.0, target=0.002, baseline="baseline")
    assert info["stop"] == "time cap"
    assert 30.0 <= info["seconds"] < 30.0 + 1.0  # stops within one round of the cap
    assert info["rounds"] == len(samples["srdl"]) == len(samples["baseline"]) > 100


def test_without_a_baseline_the_stop_reads_the_median_spread():
    m = FakeMachine(noise=0.01, seed=5)
    samples, _, info = interleaved_times({"x": m.model("x", 0.05)}, timer=CallTimer("cpu", clock=m.clock),
                                         min_rounds=10, max_rounds=500, target=0.01)
    assert info["stop"] == "converged"
    lo, hi = median_interval(samples["x"], resamples=200)
    assert (hi - lo) / percentile(samples["x"], 50) <= 0.02 + 1e-9


def test_a_call_that_fails_drops_out_and_the_rest_stay_paired():
    m = FakeMachine(noise=0.0)
    n = {"calls": 0}

    def flaky():
        n["calls"] += 1
        if n["calls"] == 3:
            raise RuntimeError("out of memory\nsecond line")
        m.t += 0.02

    calls = {"A": m.model("A", 0.01), "F": flaky, "B": m.model("B", 0.01)}
    samples, failed, info = interleaved_times(calls, timer=CallTimer("cpu", clock=m.clock), min_rounds=6, max_rounds=6)
    assert set(samples) == {"A", "B"} and failed["F"].startswith("RuntimeError: out of memory")
    assert len(samples["A"]) == len(samples["B"]) == info["rounds"] == 6


def test_bootstrap_keeps_pairs_together():
    rng = np.random.default_rng(0)
    a = list(rng.lognormal(mean=-2.0, sigma=0.5, size=41))  # very noisy, but B is exactly A + 10% in each round
    b = [1.1 * x for x in a]
    lo, hi = overhead_interval(b, a)
    assert lo == pytest.approx(0.1, abs=1e-12) and hi == pytest.approx(0.1, abs=1e-12)
    # The same series unpaired (B's rounds shuffled) have a wide interval: pairing is what narrows it.
    shuffled = list(b)
    random.Random(0).shuffle(shuffled)
    lo2, hi2 = overhead_interval(shuffled, a)
    assert hi2 - lo2 > 0.1
    st = overhead_stats(shuffled, a)
    assert st["overhead_vs_baseline"] == pytest.approx(np.median(shuffled) / np.median(a) - 1)


def test_spread_larger_than_the_overhead_is_flagged():
    m = FakeMachine(noise=0.5, seed=7)
    calls = {"baseline": m.model("baseline", 0.100), "srdl": m.model("srdl", 0.101)}
    samples, _, _ = interleaved_times(calls, timer=CallTimer("cpu", clock=m.clock), min_rounds=10, max_rounds=10)
    st = overhead_stats(samples["srdl"], samples["baseline"])
    lo, hi = st["overhead_interval"]
    assert st["overhead_uncertain"] is True and lo < 0 < hi
    assert not spread_small(samples, "baseline", 0.01)


def test_min_and_max_rounds_are_checked():
    m = FakeMachine()
    with pytest.raises(ValueError, match="min_rounds"):
        interleaved_times({"A": m.model("A", 0.1)}, timer=CallTimer("cpu", clock=m.clock), min_rounds=5, max_rounds=4)


def test_cpu_clock_leaves_out_waiting_and_the_wall_clock_does_not():
    def waits_then_works():
        time.sleep(0.05)  # descheduled, as when other processes hold the cores
        sum(i * i for i in range(20000))

    wall = CallTimer.named("cpu", "wall")(waits_then_works)
    cpu = CallTimer.named("cpu", "cpu")(waits_then_works)
    assert wall >= 0.05 and cpu < 0.04 and cpu > 0
    with pytest.raises(ValueError, match="unknown clock"):
        CallTimer.named("cpu", "sundial")
