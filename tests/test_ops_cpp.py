"""What is specific to the C++/CUDA extension fastmlr._C ("cpp" backend).

Every op's values and gradients, on every backend, are tested in tests/test_op_*.py. Here:
the torch.library machinery (opcheck, fake tensors, registration, torch.compile), the
extension's own argument checks, its exact pooling and tie rule, non-contiguous inputs.
CUDA cases are marked ``gpu``; without a GPU only registration and fake shapes are checked.
"""

from __future__ import annotations

import pytest
import torch

try:
    import fastmlr._C as _C
except ImportError as e:  # pragma: no cover - depends on the build
    pytest.skip(f"fastmlr._C is not built ({e})", allow_module_level=True)

from fastmlr import ops
from fastmlr.ops import _cpp, opspec, reference
from ops_common import TOL

OPS = torch.ops.fastmlr

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and _cpp.has_cuda_kernels()),
    reason="needs an NVIDIA GPU and fastmlr._C built with CUDA",
)


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The ops' fake kernels and autograd formulas, which fastmlr.ops registers when it first loads an op's cpp
    implementation: every test here calls torch.ops.fastmlr directly, and must not depend on which ran first."""
    for spec in opspec.specs():
        if "cpp" in spec.impls:
            spec.impls["cpp"].load()


def _car_inputs(N, C, P, D, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    u, wc, s, b = r(N, P, D), r(C, D), r(D, scale=0.5), r(scale=0.3)
    f, ca = r(N, D, P), torch.rand(N, C, D, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return u, wc, s, b, f, ca


def _close(actual, expected, dtype, what):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


# ---------------------------------------------------------------- CAR: what only this extension guarantees


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_car_low_precision_cuda(dtype):
    # Bounded by the reference's own error in the same dtype (flash-attention style).
    u, wc, s, b, f, ca = _car_inputs(2, 5, 13, 64, dtype, "cuda")
    exact = reference.car_spatial_attention_ref(u.double(), wc.double(), s.double(), b.double())
    same = reference.car_spatial_attention_ref(u, wc, s, b).double()
    ours = ops.car_spatial_attention(u, wc, s, b, backend="cpp").double()
    assert (ours - exact).abs().max() <= 2 * (same - exact).abs().max() + 1e-3
    feat = ops.car_pool(f, same.to(dtype), ca, backend="cpp")
    torch.testing.assert_close(feat, reference.car_pool_ref(f, same.to(dtype), ca), atol=0, rtol=0)


def test_car_pool_exact_values_and_first_argmax():
    # feat is computed with the reference's rounding: equal, not just close.
    u, wc, s, b, f, ca = _car_inputs(2, 3, 13, 33, torch.float32)
    sa = torch.rand(2, 3, 13)
    feat, idx = OPS.car_pool(f, sa, ca)
    torch.testing.assert_close(feat, reference.car_pool_ref(f, sa, ca), atol=0, rtol=0)
    # Exact ties: every p gives the same value, so the first p (0) is kept and
    # the whole gradient goes there (torch.amax would split it evenly).
    f1 = torch.ones(1, 4, 5)
    sa1 = torch.full((1, 2, 5), 0.25)
    ca1 = torch.rand(1, 2, 4)
    feat1, idx1 = OPS.car_pool(f1, sa1, ca1)
    assert torch.equal(idx1, torch.zeros_like(idx1))
    sa1.requires_grad_(True)
    OPS.car_pool(f1, sa1, ca1)[0].sum().backward()
    assert torch.all(sa1.grad[..., 0] == 2.0) and torch.all(sa1.grad[..., 1:] == 0)


def test_car_pool_exact_over_several_column_tiles():
    # D = 130: the explicit kernels' column tiles (64) twice and a partial one; C odd: categories in pairs and one
    # alone; P = 196 (ResNet at 448 px). Values equal to the reference's, positions its first maxima.
    _, _, _, _, f, ca = _car_inputs(2, 5, 196, 130, torch.float32, seed=5)
    sa = torch.rand(2, 5, 196, generator=torch.Generator().manual_seed(6))
    feat, idx = OPS.car_pool(f, sa, ca)
    torch.testing.assert_close(feat, reference.car_pool_ref(f, sa, ca), atol=0, rtol=0)
    candidates = (0.5 * f)[:, None] * (sa[:, :, None, :] + ca[:, :, :, None])  # N, C, D, P
    assert torch.equal(idx, candidates.argmax(dim=-1))  # argmax: the first maximal p


def _pool_tiles_inputs(D):
    _, _, _, _, f, ca = _car_inputs(2, 5, 196, D, torch.float32, seed=5)
    return f, torch.rand(2, 5, 196, generator=torch.Generator().manual_seed(6)), ca


@pytest.mark.parametrize("D", [130, 128], ids=["partial tile", "whole tiles"])
def test_car_pool_without_index_exact_values(D):
    # index=False (what ops.car_pool asks for when no gradient is wanted): the explicit kernels keep the values
    # alone, with no positions; whole tiles are written into the output in place, a partial one through a copy.
    f, sa, ca = _pool_tiles_inputs(D)
    feat, idx = OPS.car_pool(f, sa, ca, False)
    assert idx.shape == (0, 5, D) and idx.dtype == torch.int64
    torch.testing.assert_close(feat, reference.car_pool_ref(f, sa, ca), atol=0, rtol=0)


@pytest.mark.parametrize("case", ["NaN in f", "inf in sa", "sa + ca overflows"])
def test_car_pool_without_index_exact_values_with_non_finite_terms(case):
    # Keeping the values alone would lose a NaN term, so any input that could make one takes the kernel with
    # pool_row's NaN rule; values (NaN included) as the reference computes them.
    f, sa, ca = _pool_tiles_inputs(130)
    if case == "NaN in f":
        f[1, 70, 3] = float("nan")
    elif case == "inf in sa":
        sa[0, 2, 9] = float("inf")  # inf times a negative f: -inf; times 0.5 f = 0: NaN
        f[0, 5, 9] = 0.0
    else:
        sa[1, 4, 0] = ca[1, 4, 100] = 3e38  # each finite, their sum not: 0.5 f (sa + ca) is inf or NaN
        f[1, 100, 0] = 0.0
    want = reference.car_pool_ref(f, sa, ca)
    assert want.isnan().any() or want.isinf().any(), "the case makes a non-finite term"
    feat, _ = OPS.car_pool(f, sa, ca, False)
    torch.testing.assert_close(feat, want, atol=0, rtol=0, equal_nan=True)


def test_car_pool_without_index_has_no_backward_and_ops_asks_for_it_only_without_gradients():
    from torch.utils._python_dispatch import TorchDispatchMode

    f, sa, ca = _leaves(*_pool_tiles_inputs(64))
    asked = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is OPS.car_pool.default:
                asked.append(args[3] if len(args) > 3 else (kwargs or {}).get("index", True))
            return func(*args, **(kwargs or {}))

    with Record():
        with torch.no_grad():
            ops.car_pool(f, sa, ca, backend="cpp")
        ops.car_pool(f.detach(), sa.detach(), ca.detach(), backend="cpp")
        ops.car_pool(f, sa, ca, backend="cpp").sum().backward()
    assert asked == [False, False, True]
    assert f.grad is not None and f.grad.abs().sum() > 0
    # (the calls above registered the op's autograd formula, as any first use through fastmlr.ops does)
    with pytest.raises(RuntimeError, match="index=False"):
        OPS.car_pool(f, sa, ca, False)[0].sum().backward()


def test_car_non_contiguous_inputs():
    u, wc, s, b, f, ca = _car_inputs(2, 3, 7, 5, torch.float64)
    u_nc = u.transpose(1, 2).contiguous().transpose(1, 2)
    f_nc = f.transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_nc.is_contiguous() and not f_nc.is_contiguous()
    _close(OPS.car_spatial_attention(u_nc, wc, s, b), reference.car_spatial_attention_ref(u, wc, s, b),
           torch.float64, "non-contiguous u")
    sa = torch.rand(2, 3, 7, dtype=torch.float64)
    _close(OPS.car_pool(f_nc, sa, ca)[0], reference.car_pool_ref(f, sa, ca), torch.float64, "non-contiguous f")


def test_gradcheck_float64():
    u, wc, s, b, f, ca = _car_inputs(2, 3, 5, 4, torch.float64, seed=3)
    assert torch.autograd.gradcheck(OPS.car_spatial_attention, _leaves(u, wc, s, b))
    sa = torch.rand(2, 3, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: OPS.car_pool(*a)[0], _leaves(f, sa, ca))
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    boxes = OPS.oe_boxes(maps, 0.5)
    assert torch.autograd.gradcheck(lambda m: OPS.oe_erase(m, boxes), _leaves(maps))


# ---------------------------------------------------------------- the library machinery


def _opcheck_samples(requires_grad: bool):
    u, wc, s, b, f, ca = _car_inputs(2, 3, 5, 4, torch.float64)
    sa = torch.rand(2, 3, 5, dtype=torch.float64)
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    boxes = OPS.oe_boxes(maps, 0.5)

    def rg(*ts):
        return [t.clone().requires_grad_(requires_grad) for t in ts]

    out = OPS.car_spatial_attention(u, wc, s, b)
    _, idx = OPS.car_pool(f, sa, ca)
    yield OPS.car_spatial_attention.default, (*rg(u, wc, s, b),)
    yield OPS.car_pool.default, (*rg(f, sa, ca),)
    if not requires_grad:  # without the index there is no backward
        yield OPS.car_pool.default, (f, sa, ca, False)
    yield OPS.oe_boxes.default, (maps, 0.5)
    yield OPS.oe_erase.default, (*rg(maps), boxes)
    if not requires_grad:  # the backward ops have no derivative of their own
        yield OPS.car_spatial_attention_backward.default, (torch.rand_like(out), u, wc, s, b, out)
        yield OPS.car_pool_backward.default, (torch.rand(2, 3, 4, dtype=torch.float64), f, sa, ca, idx)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    for op, args in _opcheck_samples(requires_grad):
        torch.library.opcheck(op, args)


def test_fake_tensors_on_cuda():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        u = torch.empty(2, 7, 5, device="cuda", dtype=torch.float16)
        wc = torch.empty(3, 5, device="cuda", dtype=torch.float16)
        s = torch.empty(5, device="cuda", dtype=torch.float16)
        b = torch.empty((), device="cuda", dtype=torch.float16)
        f = torch.empty(2, 5, 7, device="cuda", dtype=torch.float16)
        ca = torch.empty(2, 3, 5, device="cuda", dtype=torch.float16)
        sa = OPS.car_spatial_attention(u, wc, s, b)
        feat, idx = OPS.car_pool(f, sa, ca)
        maps = sa.reshape(2, 3, 7, 1)
        boxes = OPS.oe_boxes(maps, 0.5)
        erased = OPS.oe_erase(maps, boxes)
        grads = OPS.car_spatial_attention_backward(sa, u, wc, s, b, sa)
        pgrads = OPS.car_pool_backward(feat, f, sa, ca, idx)
    assert sa.shape == (2, 3, 7) and sa.device.type == "cuda" and sa.dtype == torch.float16
    assert feat.shape == (2, 3, 5) and idx.dtype == torch.int64 and idx.device.type == "cuda"
    assert boxes.shape == (2, 3, 4) and boxes.dtype == torch.int64
    assert erased.shape == maps.shape
    assert [g.shape for g in grads] == [u.shape, wc.shape, s.shape, b.shape]
    assert [g.shape for g in pgrads] == [f.shape, sa.shape, ca.shape]


def test_cuda_kernels_registered_when_built_with_cuda():
    names = ["car_spatial_attention", "car_spatial_attention_backward", "car_pool", "car_pool_backward",
             "oe_boxes", "oe_erase"]
    for name in names:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmlr::{name}", "CPU"), name
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmlr::{name}", "CUDA")
        assert has == bool(_C.with_cuda), f"{name}: CUDA kernel {has}, built with CUDA {bool(_C.with_cuda)}"
    if not _C.with_cuda:
        reason = _cpp._why_not_device("cuda")
        assert reason and "without CUDA" in reason
        if torch.cuda.is_available():  # without a device, backend_status says that first
            cpp = next(r for r in ops.backend_status("cuda") if r.name == "cpp")
            assert not cpp.runs and "without CUDA" in cpp.reason


def test_torch_compile_matches_eager():
    def head(u, wc, s, b, f, ca):
        sa = ops.car_spatial_attention(u, wc, s, b, backend="cpp")
        N, C, P = sa.shape
        maps = sa.reshape(N, C, 3, P // 3)
        boxes = ops.oe_boxes(maps, 0.5, backend="cpp")
        erased = ops.oe_erase(maps, boxes, backend="cpp").reshape(N, C, P)
        return ops.car_pool(f, sa, ca, backend="cpp") + ops.car_pool(f, erased, ca, backend="cpp")

    u, wc, s, b, f, ca = _car_inputs(2, 3, 9, 5, torch.float32)
    eager_in, comp_in = _leaves(u, wc, s, b, f, ca), _leaves(u, wc, s, b, f, ca)
    eager = head(*eager_in)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")(*comp_in)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    eager.sum().backward()
    compiled.sum().backward()
    for a, e in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, e.grad, atol=0, rtol=0)


# ---------------------------------------------------------------- errors a user can cause


def test_torch_check_messages():
    f = torch.rand(2, 7, 4)
    sa = torch.rand(2, 3, 4)
    with pytest.raises(RuntimeError, match=r"car_pool: ca must have shape \[N, C, D\] = \[2, 3, 7\], got \[2, 3, 5\]"):
        OPS.car_pool(f, sa, torch.rand(2, 3, 5))
    with pytest.raises(RuntimeError, match=r"car_pool: sa has dtype Double but f has Float"):
        OPS.car_pool(f, sa.double(), torch.rand(2, 3, 7))
    with pytest.raises(RuntimeError, match=r"car_spatial_attention: s must have shape \[D\] = \[5\], got \[4\]"):
        OPS.car_spatial_attention(torch.rand(2, 7, 5), torch.rand(3, 5), torch.rand(4), torch.rand(()))
    msg = r"car_spatial_attention: u must have shape \[N, P, D\] \(3 dims\), got \[7, 5\]"
    with pytest.raises(RuntimeError, match=msg):
        OPS.car_spatial_attention(torch.rand(7, 5), torch.rand(3, 5), torch.rand(5), torch.rand(()))
    with pytest.raises(RuntimeError, match=r"oe_erase: boxes must be int64, got Int"):
        OPS.oe_erase(torch.rand(1, 2, 3, 3), torch.zeros(1, 2, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match=r"oe_boxes: alpha must be in \(0, 1\], got 1.5"):
        OPS.oe_boxes(torch.rand(1, 2, 3, 3), 1.5)


def test_dispatch_error_lists_backends():
    u, wc, s, b, f, ca = _car_inputs(1, 2, 3, 4, torch.float16)
    with pytest.raises(ops.BackendError) as err:
        ops.car_spatial_attention(u, wc, s, b, backend="cpp")
    msg = str(err.value)
    assert "car_spatial_attention on cpu supports float32, float64, got float16" in msg
    assert "  cpp:" in msg and "  reference:" in msg
    assert "cpp" in ops.available_backends("cpu")


# ---------------------------------------------------------------- the CPU kernels' float32 tanh

# The bound csrc/car_math.h states for tanh_fast (float32, on the CPU).
TANH_ABS_BOUND = 4e-7
TANH_REL_BOUND_BELOW_1 = 3e-7


def _tanh_error(x: torch.Tensor):
    got = OPS.tanh_fast(x).double()
    want = torch.from_numpy(__import__("numpy").tanh(x.double().numpy()))
    return got, want


def test_tanh_fast_error_bound_on_a_dense_grid():
    # Every float32 in [-1, 1] with a step of 2^-21, then a dense grid out to |x| = 12 (past the
    # clamp at 9), in chunks that reach every vector lane and the scalar tail.
    dense = torch.arange(-2**21, 2**21 + 1, dtype=torch.float64) / 2**21
    wide = torch.linspace(-12.0, 12.0, 4_000_001, dtype=torch.float64)
    for grid in (dense, wide):
        x = grid.float()
        got, want = _tanh_error(x)
        err = (got - want).abs()
        assert err.max().item() <= TANH_ABS_BOUND, (err.max().item(), x[err.argmax()].item())
        small = x.abs() < 1
        rel = err[small] / want[small].abs().clamp_min(1e-300)
        rel = rel[x[small] != 0]
        assert rel.max().item() <= TANH_REL_BOUND_BELOW_1, (rel.max().item(),)


def test_tanh_fast_odd_and_bounded_and_exact_at_the_ends():
    x = torch.linspace(0, 20, 100_003, dtype=torch.float32)
    pos, neg = OPS.tanh_fast(x), OPS.tanh_fast(-x)
    assert torch.equal(neg, -pos)  # odd, to the bit
    assert pos.abs().max().item() <= 1.0  # so that 1 - t^2 in the backward is never negative
    assert (pos >= 0).all()
    big = torch.tensor([9.0, 15.0, 88.0, 1e30, 3.4e38], dtype=torch.float32)
    assert (OPS.tanh_fast(big) - 1).abs().max().item() <= TANH_ABS_BOUND


def test_tanh_fast_tiny_subnormal_inf_and_nan():
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.1754942e-38, 1e-20, -3e-8, 1e-4], dtype=torch.float32)
    got = OPS.tanh_fast(tiny)
    # tanh(x) = x in float for |x| < 2^-12: returned exactly, subnormals and the sign of zero kept.
    assert torch.equal(got, tiny)
    assert torch.equal(torch.signbit(got), torch.signbit(tiny))
    special = OPS.tanh_fast(torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=torch.float32))
    assert special[0].item() == pytest.approx(1.0, abs=TANH_ABS_BOUND)
    assert special[1].item() == pytest.approx(-1.0, abs=TANH_ABS_BOUND)
    assert torch.isnan(special[2])


def test_tanh_fast_inside_car_spatial_attention_is_the_float32_tolerance():
    # The fused reduction over D = 2048 with this tanh, against the float64 reference.
    u, wc, s, b, _, _ = _car_inputs(1, 8, 9, 2048, torch.float64, seed=3)
    want = reference.car_spatial_attention_ref(u, wc, s, b)
    got = OPS.car_spatial_attention(u.float(), wc.float(), s.float(), b.float())
    _close(got, want, torch.float32, "car_spatial_attention, D = 2048")


# ---------------------------------------------------------------- the explicit AVX-512 / AVX2 kernels and their choice

CAPABILITIES = ("avx512", "avx2", "default")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _best_capability(flags: set[str]) -> str:
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"
    if {"avx512f", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "default"


def _child(env_update: dict, code: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("FASTMLR_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY")}
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(not _cpu_flags(), reason="needs /proc/cpuinfo to know what the CPU has")
def test_cpu_capability_is_the_best_the_cpu_has_unless_capped():
    best = _best_capability(_cpu_flags())
    code = "import torch, fastmlr._C as c; print(c.cpu_capability)"
    r = _child({}, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [best] and "fastmlr:" not in r.stderr
    # ATen's variable caps it too; FASTMLR_CPU_CAPABILITY wins over it.
    r = _child({"ATEN_CPU_CAPABILITY": "default"}, code)
    assert r.stdout.split() == ["default"], r.stderr
    r = _child({"ATEN_CPU_CAPABILITY": "default", "FASTMLR_CPU_CAPABILITY": best}, code)
    assert r.stdout.split() == [best], r.stderr
    # An unknown name: one line saying so, and the best the CPU has.
    r = _child({"FASTMLR_CPU_CAPABILITY": "sse9"}, code)
    assert r.stdout.split() == [best]
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("fastmlr:")]
    assert len(said) == 1 and "FASTMLR_CPU_CAPABILITY=sse9" in said[0] and best in said[0], r.stderr
    # More than the CPU has (only testable where it lacks AVX-512): refused in one line, best used.
    if best != "avx512":
        r = _child({"FASTMLR_CPU_CAPABILITY": "avx512"}, code)
        assert r.stdout.split() == [best] and "asks for more than this CPU has" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("capability", CAPABILITIES)
def test_every_cpu_path_passes_the_op_tests(capability):
    """The CAR ops' value, exactness, NaN and tanh-bound tests, re-run in a process forced onto each ISA path
    (the in-process run of those tests covers only the best path of this CPU)."""
    flags = _cpu_flags()
    order = CAPABILITIES[::-1]
    if order.index(capability) > order.index(_best_capability(flags)):
        pytest.skip(f"this CPU has no {capability} (flags: {sorted(flags & {'avx2', 'fma', 'avx512f', 'avx512dq'})})")
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        "import sys, pytest, torch, fastmlr._C as c\n"
        f"assert c.cpu_capability == {capability!r}, c.cpu_capability\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-x', r'{here}/test_op_car.py', r'{here}/test_ops_cpp.py',"
        " '-k', '(test_op_car and cpp and not cuda) or tanh_fast or exact_values or several_column_tiles"
        " or non_contiguous']))\n"
    )
    r = _child({"FASTMLR_CPU_CAPABILITY": capability}, code)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
