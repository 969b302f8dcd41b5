"""fastmlr.ops' dispatch: use_backend, backend_status / available_backends, lazy loading, compile and export."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fastmlr import ops
from fastmlr.ops import _dispatch

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message=".*random")


@pytest.fixture
def spy(monkeypatch):
    """A backend "spy" that records which op it ran; never chosen unless named (lowest priority)."""
    calls = []

    def pool(f, sa, ca):
        calls.append("car_pool")
        return ops.reference.car_pool_ref(f, sa, ca)

    backend = _dispatch.Backend("spy", impls={"car_pool": pool}, priority={"cpu": 10_000})
    monkeypatch.setitem(_dispatch._BACKENDS, "spy", backend)
    monkeypatch.delenv("FASTMLR_BACKEND", raising=False)
    return calls


def _pool_args():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 4, generator=g), torch.rand(1, 2, 4, generator=g), torch.rand(1, 2, 3, generator=g)


def _pool(**kw):
    return ops.car_pool(*_pool_args(), **kw)


def test_use_backend_selects_and_nests(spy):
    assert ops.current_backend() is None
    with ops.use_backend("spy"):
        assert ops.current_backend() == "spy"
        _pool()
        assert spy == ["car_pool"]
        with ops.use_backend("reference"):
            assert ops.current_backend() == "reference"
            _pool()
        assert spy == ["car_pool"]
        assert ops.current_backend() == "spy"  # the inner block restored the outer choice
        _pool()
        assert spy == ["car_pool"] * 2
    assert ops.current_backend() is None
    _pool()  # no block: the default order, in which spy comes last
    assert spy == ["car_pool"] * 2


def test_use_backend_none_lifts_the_outer_choice(spy):
    with ops.use_backend("spy"):
        with ops.use_backend(None):
            assert ops.current_backend() is None
            _pool()
        assert spy == []
        _pool()
    assert spy == ["car_pool"]


def test_backend_argument_wins_over_the_block(spy):
    with ops.use_backend("reference"):
        _pool(backend="spy")
    assert spy == ["car_pool"]
    with ops.use_backend("spy"):
        _pool(backend="reference")
    assert spy == ["car_pool"]


def test_env_var_is_below_the_block(spy, monkeypatch):
    monkeypatch.setenv("FASTMLR_BACKEND", "spy")
    assert ops.current_backend() == "spy"
    _pool()
    assert spy == ["car_pool"]
    with ops.use_backend("reference"):
        _pool()
    assert spy == ["car_pool"]
    with ops.use_backend(None):  # lifting a block leaves the environment's choice
        _pool()
    assert spy == ["car_pool"] * 2


def test_unknown_backend_raises_at_once():
    with pytest.raises(ops.BackendError, match=r"unknown backend 'warp'; known backends: .*reference"):
        with ops.use_backend("warp"):
            pytest.fail("the block must not run")
    assert ops.current_backend() in (None, os.environ.get("FASTMLR_BACKEND"))


def test_a_refusing_named_backend_explains_every_backend(spy):
    f, sa, ca = _pool_args()
    with ops.use_backend("spy"):
        with pytest.raises(ops.BackendError) as err:
            ops.car_spatial_attention(torch.rand(1, 4, 3), torch.rand(2, 3), torch.rand(3), torch.rand(()))
    msg = str(err.value)
    assert "backend 'spy' cannot run car_spatial_attention on cpu tensors: does not implement" in msg
    assert "  reference: accepts this call" in msg


def test_backend_status_rows():
    rows = ops.backend_status("cpu")
    assert all(isinstance(r, ops.BackendStatus) for r in rows)
    assert {r.name for r in rows} >= {"reference", "cpp", "triton"}
    runs = [r.name for r in rows if r.runs]
    assert runs == ops.available_backends("cpu") and runs[-1] == "reference"
    for r in rows:
        assert (r.reason is None) == r.runs, r
    # Refusal per op: the C++ extension has no second_order_pool.
    sop = {r.name: r for r in ops.backend_status("cpu", "second_order_pool")}
    assert not sop["cpp"].runs and "second_order_pool" in sop["cpp"].reason
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        ops.backend_status("cpu", "nope")


def test_cuda_without_a_device_lists_nothing():
    if torch.cuda.is_available():
        assert "reference" in ops.available_backends("cuda")
    else:
        assert ops.available_backends("cuda") == []
        assert {r.reason for r in ops.backend_status("cuda")} <= {
            "no CUDA device on this machine",
            *(r.reason for r in ops.backend_status("cuda") if r.reason and r.reason.startswith("unavailable")),
        }


def _python(code: str, **env) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("FASTMLR_BACKEND", None)
    if "TRITON_INTERPRET" not in env:
        full.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_loads_no_optional_backend():
    out = _python(
        "import sys, fastmlr.ops as o\n"
        "print(sorted(m for m in ('triton', 'fastmlr._C', 'fastmlr.kernels') if m in sys.modules))\n"
        "o.available_backends('cpu')\n"
        "print('fastmlr._C' in sys.modules)"
    )
    assert out.splitlines() == ["[]", "True" if "cpp" in ops.available_backends("cpu") else "False"]


_CPP = next(r for r in ops.backend_status("cpu") if r.name == "cpp")
_LOADED = "print(sorted(m for m in ('triton', 'fastmlr._C', 'fastmlr.kernels') if m in sys.modules))\n"


@pytest.mark.skipif(not _CPP.runs, reason=f"cpp backend: {_CPP.reason}")
def test_a_cpp_call_loads_only_the_extension():
    """Choosing the C++ kernels, by name or as the fastest, imports fastmlr._C and not Triton (issue 17)."""
    out = _python(
        "import sys, torch, fastmlr.ops as o\n"
        "args = o.spec('car_spatial_attention').example_inputs()\n"
        "o.car_spatial_attention(*args, backend='cpp')\n" + _LOADED +
        "o.car_pool(*o.spec('car_pool').example_inputs())\n"
        "o.oe_boxes(*o.spec('oe_boxes').example_inputs())\n" + _LOADED
    )
    assert out.splitlines() == ["['fastmlr._C']", "['fastmlr._C']"]


def test_the_reference_loads_neither_the_extension_nor_triton():
    """On the reference backend (by name, or where it is the only one that runs an op on the CPU) nothing loads."""
    out = _python(
        "import sys, torch, fastmlr.ops as o\n"
        "for s in o.specs():\n"
        "    s.function(*s.example_inputs(), backend='reference')\n" + _LOADED +
        "with o.use_backend('reference'):\n"
        "    o.car_pool(*o.spec('car_pool').example_inputs())\n"
        "o.second_order_pool(*o.spec('second_order_pool').example_inputs())\n"
        "o.multi_perspective_cosine(*o.spec('multi_perspective_cosine').example_inputs())\n" + _LOADED
    )
    assert out.splitlines() == ["[]", "[]"]


_TRITON = next(r for r in ops.backend_status("cpu") if r.name == "triton")


@pytest.mark.skipif(bool(_TRITON.reason and _TRITON.reason.startswith("unavailable")), reason=str(_TRITON.reason))
def test_triton_on_cpu_only_under_the_interpreter():
    code = "import fastmlr.ops as o; print(o.available_backends('cpu'))"
    assert "triton" not in _python(code)
    assert "'triton'" in _python(code, TRITON_INTERPRET="1")
    # Setting the variable after import fastmlr.ops (before triton is imported) still counts.
    late = "import os, fastmlr.ops as o; os.environ['TRITON_INTERPRET'] = '1'; print(o.available_backends('cpu'))"
    assert "'triton'" in _python(late)


def test_python_m_fastmlr_ops_prints_every_op():
    proc = subprocess.run([sys.executable, "-m", "fastmlr.ops"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "cpu:"
    for op in ops.OPS:
        line = next(ln for ln in lines if ln.startswith(f"  {op}: "))
        assert "reference" in line.split(";")[0], line
    sop = next(ln for ln in lines if ln.startswith("  second_order_pool: "))
    assert "refused:" in sop and "cpp (does not implement second_order_pool)" in sop
    if not torch.cuda.is_available():
        assert "cuda: nothing runs (no CUDA device on this machine)" in lines


# -- torch.compile and torch.export through a model --------------------------------------------------

COMPILE_FIRST = """
import torch, warnings
warnings.simplefilter("ignore")
from fastmlr import ops
from fastmlr.models import create_model
m = create_model("srdl", 5, backbone="resnet18", weights="none", use_oe=False).eval()
x = torch.rand(1, 3, 64, 64)
graphs = []
def record(gm, inputs):
    graphs.append(sorted({str(n.target) for n in gm.graph.nodes if "fastmlr" in str(n.target)}))
    return gm
c = torch.compile(m, backend=record, fullgraph=True)
got = c(x)  # the first op call of the process happens while dynamo traces
with ops.use_backend("reference"):
    torch.testing.assert_close(c(x), m(x))
    torch.testing.assert_close(got, m(x), atol=1e-5, rtol=1e-5)
print(graphs)
"""


def test_compile_fullgraph_through_a_model_follows_the_block():
    """fullgraph=True raises on any graph break, including the lazy loading of the backends."""
    graphs = eval(_python(COMPILE_FIRST))
    if "cpp" in ops.available_backends("cpu"):
        assert graphs[0] == ["fastmlr.car_pool", "fastmlr.car_spatial_attention"]
    # The block's choice is guarded: under "reference" the model recompiled, without the extension's ops.
    assert len(graphs) == 2 and graphs[1] == []


def test_export_follows_the_block():
    from fastmlr.models import create_model

    m = create_model("srdl", 3, backbone="resnet18", weights="none", use_oe=False).eval()
    x = torch.rand(1, 3, 64, 64)

    def fastmlr_targets(ep):
        return {str(n.target) for n in ep.graph.nodes if "fastmlr" in str(n.target)}

    with ops.use_backend("reference"):
        ep = torch.export.export(m, (x,))
        assert fastmlr_targets(ep) == set()
        torch.testing.assert_close(ep.module()(x), m(x))
    if "cpp" in ops.available_backends("cpu"):
        with ops.use_backend("cpp"):
            ep = torch.export.export(m, (x,))
        assert fastmlr_targets(ep) == {"fastmlr.car_pool.default", "fastmlr.car_spatial_attention.default"}
