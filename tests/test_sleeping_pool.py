"""fastmlr's sleeping pool (csrc/cpu/parallel.h), which runs the CPU kernels' loops for callers inside
another runtime's thread pool (the fused graph's PyOps in ONNX Runtime).

The pool changes which thread computes which rows, never what a row computes: every op must give
exactly the bits it gives on ATen's threads, and those must match the float64 reference; and the pool
must do what it is for: use as many threads as torch says, keep them between calls, survive a second
caller thread and a fork.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from fastmlr import ops
from fastmlr.ops import reference

_C = pytest.importorskip("fastmlr._C", reason="fastmlr._C, the C++ extension, is not built")
OPS = torch.ops.fastmlr


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _inputs(N=2, C=5, P=13, D=70, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, P, D, generator=g, dtype=dtype)
    wc = torch.randn(C, D, generator=g, dtype=dtype)
    s = torch.randn(D, generator=g, dtype=dtype)
    b = torch.randn((), generator=g, dtype=dtype)
    f = torch.randn(N, D, P, generator=g, dtype=dtype)
    ca = torch.rand(N, C, D, generator=g, dtype=dtype)
    return u, wc, s, b, f, ca


def _both(fn):
    """fn() on ATen's threads and on the sleeping pool."""
    with ops.sleeping_threads(False):
        a = fn()
    with ops.sleeping_threads():
        s = fn()
    return a, s


def _equal(a, s):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(s)
        for x, y in zip(a, s):
            _equal(x, y)
    else:
        assert torch.equal(a, s)


def test_the_switch_is_per_thread_and_restored():
    assert _C._set_sleeping_pool(False) is False
    with ops.sleeping_threads():
        assert _C._set_sleeping_pool(True) is True  # on inside the block
        seen = []
        t = threading.Thread(target=lambda: seen.append(_C._set_sleeping_pool(False)))
        t.start()
        t.join()
        assert seen == [False]  # another thread keeps its own setting
    assert _C._set_sleeping_pool(False) is False  # restored


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 80, 196, 256), (2, 5, 13, 70), (3, 1, 1, 1)])
def test_every_cpu_kernel_gives_the_same_bits_on_either_pool(dtype, shape):
    N, C, P, D = shape
    u, wc, s, b, f, ca = _inputs(N, C, P, D, dtype=dtype)
    sa_a, sa_s = _both(lambda: OPS.car_spatial_attention(u, wc, s, b))
    _equal(sa_a, sa_s)
    want = reference.car_spatial_attention_ref(u.double(), wc.double(), s.double(), b.double())
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sa_s.double(), want, atol=tol, rtol=tol)
    for index in (True, False):
        _equal(*_both(lambda: OPS.car_pool(f, sa_s, ca, index)))
    got = _both(lambda: OPS.car_pool(f, sa_s, ca, True))[1][0]
    torch.testing.assert_close(got.double(), reference.car_pool_ref(f.double(), sa_s.double(), ca.double()),
                               atol=tol, rtol=tol)
    grad = torch.randn(N, C, P, dtype=dtype)
    _equal(*_both(lambda: OPS.car_spatial_attention_backward(grad, u, wc, s, b, sa_s)))
    feat, idx = OPS.car_pool(f, sa_s, ca, True)
    dfeat = torch.randn_like(feat)
    _equal(*_both(lambda: OPS.car_pool_backward(dfeat, f, sa_s, ca, idx)))
    maps = sa_s.reshape(N, C, P, 1)
    _equal(*_both(lambda: OPS.oe_boxes(maps, 0.5)))
    boxes = OPS.oe_boxes(maps, 0.5)
    _equal(*_both(lambda: OPS.oe_erase(maps, boxes)))
    if dtype == torch.float32:
        x = torch.randn(300_001)
        _equal(*_both(lambda: OPS.tanh_fast(x)))


def test_a_second_caller_thread_runs_correctly_beside_the_first():
    u, wc, s, b, _, _ = _inputs(1, 40, 196, 512, seed=4)
    want = OPS.car_spatial_attention(u, wc, s, b)
    results, errors = [], []

    def call():
        try:
            with ops.sleeping_threads():
                for _ in range(5):
                    results.append(OPS.car_spatial_attention(u, wc, s, b))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 15
    for r in results:
        assert torch.equal(r, want)


_CHILD = r"""
import os, sys, torch
import fastmlr._C
from fastmlr import ops
torch.set_num_threads(int(sys.argv[1]))
def tasks(): return len(os.listdir("/proc/self/task"))
u, wc, s = torch.randn(1, 196, 256), torch.randn(80, 256), torch.randn(256)
b = torch.zeros(())
want = torch.ops.fastmlr.car_spatial_attention(u, wc, s, b)  # ATen's threads start here
before = tasks()
with ops.sleeping_threads():
    got = [torch.ops.fastmlr.car_spatial_attention(u, wc, s, b) for _ in range(3)]
after = tasks()
assert all(torch.equal(g, want) for g in got)
pid = os.fork()
if pid == 0:  # the parent's pool threads do not exist here: a new pool, no deadlock
    with ops.sleeping_threads():
        ok = torch.equal(torch.ops.fastmlr.car_spatial_attention(u, wc, s, b), want)
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(before, after, os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc/self/task")
@pytest.mark.parametrize("threads", [2, 3])
def test_the_pool_starts_threads_minus_one_threads_once_and_survives_a_fork(threads):
    r = subprocess.run([sys.executable, "-c", _CHILD, str(threads)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    before, after, child = map(int, r.stdout.split())
    assert after - before == threads - 1  # the caller is one of the threads; kept across the three calls
    assert child == 0


def test_a_build_without_the_switch_says_so_once(monkeypatch, capsys):
    import types

    import fastmlr
    from fastmlr.ops import _threads

    stale = types.ModuleType("fastmlr._C")  # an older build: the ops, no _set_sleeping_pool
    monkeypatch.setitem(sys.modules, "fastmlr._C", stale)
    monkeypatch.setattr(fastmlr, "_C", stale)
    monkeypatch.setattr(_threads, "_said", False)
    for _ in range(3):
        with ops.sleeping_threads():
            pass
    said = [ln for ln in capsys.readouterr().err.splitlines() if "sleeping pool" in ln]
    assert len(said) == 1 and "rebuild" in said[0]
