"""The "triton" backend (fastmlr.kernels) held to fastmlr.ops.reference and to naive loops.

Where these tests run
---------------------
Triton decides at decoration time (when fastmlr is first imported) whether a
kernel is compiled for a GPU or run by its CPU interpreter
(``TRITON_INTERPRET``). Other test files import fastmlr first in a shared
pytest process, and turning the interpreter on for the whole process would
make the slow interpreted backend the CPU default for them. So:

* ``test_interpreter_cases`` runs this file again in a subprocess with
  ``TRITON_INTERPRET=1`` and fails with that run's failures (read from its
  junit report);
* the cases marked ``@interp`` run only where the kernels were built by the
  interpreter (in that subprocess, or when you run this file yourself with
  ``TRITON_INTERPRET=1``); in the ordinary process they skip saying so;
* ``@pytest.mark.gpu`` cases run the compiled kernels on CUDA tensors
  (``python -m pytest tests/test_ops_triton.py -m gpu`` on a GPU machine).

The interpreter costs about 65 ms per program, so shapes are small but odd:
ragged against the 16-wide interpreter blocks, several blocks per axis, and
the degenerate C = 1, P = 1, D = 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

import fastmlr.ops as ops  # noqa: E402
from triton_interp import run_interpreter_subprocess  # noqa: E402
from fastmlr.ops import BackendError, reference  # noqa: E402
from fastmlr.ops._dispatch import _UNAVAILABLE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRITON_LOADED = "triton" not in _UNAVAILABLE
if TRITON_LOADED:
    from fastmlr.kernels.utils import INTERPRET  # noqa: E402
else:
    INTERPRET = False

interp = pytest.mark.skipif(
    not (TRITON_LOADED and INTERPRET),
    reason="needs kernels built by the Triton interpreter: test_interpreter_cases runs these "
    "in a TRITON_INTERPRET=1 subprocess",
)


def gpu(fn):
    """Marks a case that runs the compiled kernels on CUDA tensors (skips with the reason elsewhere)."""
    for mark in (
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: compiled Triton kernels need a GPU"),
        pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend unavailable: {_UNAVAILABLE.get('triton')}"),
    ):
        fn = mark(fn)
    return fn


# (atol, rtol) against the float64 reference, per dtype, in the interpreter.
# float32: sums of up to ~100 terms of O(1), rounded once each: ~1e-6 seen.
TOL = {
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-11, 1e-10),
}


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _leaves(*ts, dtype, device="cpu"):
    return [t.to(device=device, dtype=dtype).detach().requires_grad_() for t in ts]


def _sa_inputs(N, C, P, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, P, D, generator=g)
    wc = torch.randn(C, D, generator=g)
    s = torch.randn(D, generator=g) / math.sqrt(D)
    b = torch.randn((), generator=g)
    return u, wc, s, b


def _pool_inputs(N, C, P, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, P, generator=g), torch.rand(N, C, P, generator=g), torch.rand(N, C, D, generator=g)


def _fwd_bwd(fn, inputs, grad_seed=1):
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, inputs, g)
    return out, grads, g


def _check_against_same_dtype_torch(op, ref_op, raw, dtype, device, floor):
    """Forward and every gradient of ``op`` (triton) vs the float64 reference, bounded by the
    error the reference itself makes in ``dtype`` plus ``floor`` relative to the result's size."""
    ins = _leaves(*raw, dtype=dtype, device=device)
    out, grads, g = _fwd_bwd(lambda *x: op(*x, backend="triton"), ins)
    ref_ins = _leaves(*raw, dtype=torch.float64, device=device)
    ref = ref_op(*ref_ins)
    ref_grads = torch.autograd.grad(ref, ref_ins, g.double())
    low_ins = _leaves(*raw, dtype=dtype, device=device)
    low = ref_op(*low_ins)
    low_grads = torch.autograd.grad(low, low_ins, g)
    _err_bound(out, ref, low, floor, "forward")
    for i, (got, want, same) in enumerate(zip(grads, ref_grads, low_grads)):
        assert got.dtype == dtype and got.shape == want.shape
        _err_bound(got, want, same, floor, f"gradient of input {i}")


def _err_bound(got, ref64, same_dtype_ref, floor, what):
    """flash-attention style: no worse than twice PyTorch's own error in that dtype, plus a floor."""
    bound = 2 * (same_dtype_ref.double() - ref64).abs().max().item() + floor * max(1.0, ref64.abs().max().item())
    err = (got.double() - ref64).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (2 x PyTorch's error in {got.dtype} + floor)"


# ---------------------------------------------------------------------------
# CAR: spatial attention (eq. 5) and pooling (eq. 6 + GMP)
# ---------------------------------------------------------------------------

SA_CASES = [  # (N, C, P, D), dtype
    ((2, 5, 7, 19), torch.float32),  # inside one block on every axis
    ((2, 18, 20, 40), torch.float32),  # two ragged blocks on C and P, three on D
    ((1, 1, 1, 1), torch.float32),  # C = 1, P = 1, D = 1
    ((3, 1, 17, 33), torch.float32),  # C = 1 with ragged P and D
    ((2, 18, 20, 40), torch.float64),
    ((1, 3, 1, 5), torch.float64),  # P = 1
]


@interp
@pytest.mark.parametrize("shape,dtype", SA_CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in SA_CASES])
def test_spatial_attention_matches_reference(shape, dtype):
    u, wc, s, b = _sa_inputs(*shape)
    ins = _leaves(u, wc, s, b, dtype=dtype)
    out, grads, g = _fwd_bwd(lambda *x: ops.car_spatial_attention(*x, backend="triton"), ins)
    assert out.dtype == dtype and out.shape == (shape[0], shape[1], shape[2])
    ref_ins = _leaves(u, wc, s, b, dtype=torch.float64)
    ref = reference.car_spatial_attention_ref(*ref_ins)
    ref_grads = torch.autograd.grad(ref, ref_ins, g.double())
    _close(out, ref, dtype, "SA")
    for name, got, want in zip(("du", "dwc", "ds", "db"), grads, ref_grads):
        assert got.shape == want.shape and got.dtype == dtype, name
        _close(got, want, dtype, name)


POOL_CASES = [  # (N, C, P, D), dtype
    ((2, 5, 7, 19), torch.float32),
    ((2, 18, 20, 40), torch.float32),  # ragged blocks on C, P and D (D=40 vs 32 in the backward)
    ((1, 1, 1, 1), torch.float32),
    ((2, 3, 1, 35), torch.float32),  # P = 1, D not a multiple of the block
    ((1, 17, 33, 5), torch.float64),
]


@interp
@pytest.mark.parametrize("shape,dtype", POOL_CASES, ids=[f"{s}-{str(d)[6:]}" for s, d in POOL_CASES])
def test_car_pool_matches_reference(shape, dtype):
    f, sa, ca = _pool_inputs(*shape)
    ins = _leaves(f, sa, ca, dtype=dtype)
    out, grads, g = _fwd_bwd(lambda *x: ops.car_pool(*x, backend="triton"), ins)
    N, C, P, D = shape
    assert out.dtype == dtype and out.shape == (N, C, D)
    ref_ins = _leaves(f, sa, ca, dtype=torch.float64)
    ref = reference.car_pool_ref(*ref_ins)  # random data: no ties, so amax's gradient is the argmax's
    ref_grads = torch.autograd.grad(ref, ref_ins, g.double())
    _close(out, ref, dtype, "feat")
    for name, got, want in zip(("df", "dsa", "dca"), grads, ref_grads):
        assert got.shape == want.shape and got.dtype == dtype, name
        _close(got, want, dtype, name)


@interp
def test_car_ops_float16_within_torch_error():
    """float16 (upcast to fp32 inside the kernels): no worse than PyTorch's own float16 error."""
    shape = (2, 18, 20, 40)
    for op, ref_op, make in ((ops.car_spatial_attention, reference.car_spatial_attention_ref, _sa_inputs),
                             (ops.car_pool, reference.car_pool_ref, _pool_inputs)):
        _check_against_same_dtype_torch(op, ref_op, make(*shape), torch.float16, "cpu", floor=1e-3)


@interp
def test_car_pool_ties_route_to_first_position():
    """Documented tie rule: the whole gradient goes to the first maximal p, also across p-blocks."""
    N, C, P, D = 1, 2, 20, 3
    f = torch.full((N, D, P), 2.0)
    sa = torch.zeros(N, C, P)
    sa[0, 0, [3, 18]] = 1.0  # two maxima, in different 16-wide blocks
    sa[0, 1, [17, 19]] = 1.0  # two maxima, both in the second block
    ca = torch.zeros(N, C, D)
    f, sa, ca = _leaves(f, sa, ca, dtype=torch.float32)
    out = ops.car_pool(f, sa, ca, backend="triton")
    g = torch.arange(1.0, 1.0 + N * C * D).reshape(N, C, D)
    df, dsa, dca = torch.autograd.grad(out, (f, sa, ca), g)
    first = {0: 3, 1: 17}
    want_dsa = torch.zeros(N, C, P)
    want_df = torch.zeros(N, D, P)
    for c, p in first.items():
        for k in range(D):
            want_dsa[0, c, p] += g[0, c, k].item() * 0.5 * 2.0
            want_df[0, k, p] += g[0, c, k].item() * 0.5 * (1.0 + 0.0)
    torch.testing.assert_close(out, torch.ones(N, C, D))
    torch.testing.assert_close(dsa, want_dsa)
    torch.testing.assert_close(df, want_df)
    torch.testing.assert_close(dca, g * 0.5 * 2.0)


@interp
def test_fused_ops_store_nothing_of_size_ncpd():
    """Autograd keeps only tensors of input/output size; the reference keeps N x C x P x D (checks the probe)."""
    N, C, P, D = 2, 6, 5, 7
    ncpd = N * C * P * D

    def largest_saved(fn, *ins):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*ins).sum().backward()
        return max(sizes)

    sa_ins = _leaves(*_sa_inputs(N, C, P, D), dtype=torch.float32)
    pool_ins = _leaves(*_pool_inputs(N, C, P, D), dtype=torch.float32)
    biggest_input = max(N * P * D, N * C * P, N * C * D)
    assert largest_saved(reference.car_spatial_attention_ref, *sa_ins) >= ncpd
    assert largest_saved(reference.car_pool_ref, *pool_ins) >= ncpd
    assert largest_saved(lambda *x: ops.car_spatial_attention(*x, backend="triton"), *sa_ins) <= biggest_input
    assert largest_saved(lambda *x: ops.car_pool(*x, backend="triton"), *pool_ins) <= biggest_input


# ---------------------------------------------------------------------------
# OE: boxes (eq. 7-10) and erasing
# ---------------------------------------------------------------------------


def _naive_boxes(sa: torch.Tensor, alpha: float) -> torch.Tensor:
    """(N, K, H, W) -> (N, K, 4) by loops: columns' maxima give x, rows' maxima give y."""
    N, K, H, W = sa.shape
    out = []
    for n in range(N):
        for k in range(K):
            # Values of the map's dtype, compared as the rule compares them: in that dtype.
            m = sa[n, k]
            mx = m.amax(dim=0)
            my = m.amax(dim=1)
            lo_x, hi_x, lo_y, hi_y = mx.min(), mx.max(), my.min(), my.max()
            rx = ry = None  # None: flat, nothing erased
            if (hi_x - lo_x).item() > 1e-6:
                rx = _naive_run([((v - lo_x) / (hi_x - lo_x)).item() for v in mx], [v == hi_x for v in mx], alpha)
            if (hi_y - lo_y).item() > 1e-6:
                ry = _naive_run([((v - lo_y) / (hi_y - lo_y)).item() for v in my], [v == hi_y for v in my], alpha)
            out.append([-1] * 4 if rx is None or ry is None else [rx[0], rx[1], ry[0], ry[1]])
    return torch.tensor(out, dtype=torch.int64).reshape(N, K, 4)


def _naive_run(norm: list[float], is_max: list, alpha: float):
    """The run rule on one normalised marginal: walk the runs left to right, keep the first widest
    run that holds an exact maximum. Returns (start, end), inclusive."""
    best = None
    i = 0
    while i < len(norm):
        if not norm[i] >= alpha:
            i += 1
            continue
        j = i
        while j + 1 < len(norm) and norm[j + 1] >= alpha:
            j += 1
        if any(bool(is_max[q]) for q in range(i, j + 1)) and (best is None or j - i + 1 > best[1] - best[0] + 1):
            best = (i, j)
        i = j + 1
    return best


HAND_MAPS = [  # name, rows (H x W), alpha, expected (x0, x1, y0, y1) worked out by hand
    ("one-blob", [[0, 0, 0, 0], [0, 5, 6, 0], [0, 4, 5, 0]], 0.5, (1, 2, 1, 2)),
    ("max-in-narrow-run", [[9, 9, 9, 0, 10], [0, 0, 0, 0, 0]], 0.5, (4, 4, 0, 0)),
    ("one-row-is-flat", [[7, 0, 7, 7, 0, 7]], 0.5, None),  # H = 1: y is flat
    ("several-max-runs-wider-wins-2d", [[7, 0, 7, 7, 0, 7], [0, 0, 0, 0, 0, 0]], 0.5, (2, 3, 0, 0)),
    ("equal-width-first-wins", [[0, 0, 0, 0, 0], [3, 0, 0, 0, 3]], 0.5, (0, 0, 1, 1)),
    ("edge-runs", [[8, 1, 1, 1, 6], [8, 1, 1, 1, 6], [1, 1, 1, 1, 1]], 0.5, (0, 0, 0, 1)),
    ("run-to-the-end", [[0, 0, 2, 9, 9], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], 0.2, (2, 4, 0, 0)),
    ("flat", [[0.3, 0.3], [0.3, 0.3]], 0.5, None),
    ("flat-within-eps", [[0.3, 0.3 + 5e-7], [0.3, 0.3]], 0.5, None),
    ("flat-one-axis", [[0, 4, 0], [0, 4, 0]], 0.5, None),  # every row's max is 4: y is flat
    ("1x1", [[1.0]], 0.5, None),
    ("alpha-1", [[0, 0.5, 0.99], [0.1, 1.0, 0.2]], 1.0, (1, 1, 1, 1)),
]


@interp
@pytest.mark.parametrize("name,rows,alpha,want", HAND_MAPS, ids=[c[0] for c in HAND_MAPS])
def test_oe_boxes_hand_cases(name, rows, alpha, want):
    m = torch.tensor(rows, dtype=torch.float32)[None, None]
    got = ops.oe_boxes(m, alpha, backend="triton")[0, 0].tolist()
    assert got == list(want or (-1, -1, -1, -1)), name
    assert got == _naive_boxes(m, alpha)[0, 0].tolist() == reference.oe_boxes_ref(m, alpha)[0, 0].tolist()


@interp
@pytest.mark.parametrize(
    "shape,dtype,alpha",
    [((3, 4, 5, 7), torch.float32, 0.5), ((2, 3, 14, 14), torch.float64, 0.3),
     ((2, 2, 9, 3), torch.float16, 0.6), ((1, 3, 1, 6), torch.float32, 0.5), ((2, 2, 17, 2), torch.float32, 0.5)],
)
def test_oe_boxes_random_maps_with_ties(shape, dtype, alpha):
    """Quantised maps (four levels) make ties, several maximal runs, edge runs and flat maps common."""
    g = torch.Generator().manual_seed(sum(shape))
    sa = (torch.randint(0, 4, shape, generator=g) / 3.0).to(dtype)
    sa[0, 0] = 0.25  # one wholly flat map
    got = ops.oe_boxes(sa, alpha, backend="triton")
    assert got.dtype == torch.int64 and got.shape == (*shape[:2], 4)
    assert torch.equal(got, _naive_boxes(sa, alpha))
    assert torch.equal(got, reference.oe_boxes_ref(sa, alpha))
    assert (got[0, 0] == -1).all()


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_oe_erase_and_its_gradient(dtype):
    N, K, H, W = 2, 3, 5, 7
    sa = torch.rand(N, K, H, W, generator=torch.Generator().manual_seed(3), dtype=dtype).requires_grad_()
    boxes = torch.tensor([
        [[1, 3, 0, 2], [-1, -1, -1, -1], [0, W - 1, 0, H - 1]],  # box, nothing, whole map
        [[6, 6, 4, 4], [0, 0, 0, H - 1], [2, 5, 3, 3]],  # corner pixel, left column, one row
    ])
    out = ops.oe_erase(sa, boxes, backend="triton")
    g = torch.randn(N, K, H, W, generator=torch.Generator().manual_seed(4), dtype=dtype)
    (dsa,) = torch.autograd.grad(out, sa, g)
    keep = torch.ones(N, K, H, W, dtype=dtype)
    for n in range(N):
        for k in range(K):
            x0, x1, y0, y1 = boxes[n, k].tolist()
            for y in range(H):
                for x in range(W):
                    if x0 <= x <= x1 and y0 <= y <= y1:
                        keep[n, k, y, x] = 0
    assert torch.equal(out, sa.detach() * keep)
    assert torch.equal(dsa, g * keep)
    assert torch.equal(out, reference.oe_erase_ref(sa.detach(), boxes))
    assert keep[0, 1].all() and not keep[0, 2].any()  # the -1 row erased nothing, the whole-map box all


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------


def _small_sa_call(backend=None, dtype=torch.float32):
    u, wc, s, b = (t.to(dtype) for t in _sa_inputs(1, 2, 3, 4))
    return ops.car_spatial_attention(u, wc, s, b, backend=backend)


@pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend unavailable: {_UNAVAILABLE.get('triton')}")
@pytest.mark.skipif(INTERPRET, reason="kernels here were built by the interpreter, which accepts CPU tensors")
def test_triton_on_cpu_without_interpreter_raises_listing_backends(monkeypatch):
    with pytest.raises(BackendError) as e:
        _small_sa_call(backend="triton")
    msg = str(e.value)
    assert "backend 'triton' cannot run car_spatial_attention on cpu tensors" in msg
    assert "TRITON_INTERPRET=1" in msg
    assert "  reference: accepts this call" in msg and "  triton: " in msg
    monkeypatch.setenv("FASTMLR_BACKEND", "triton")
    with pytest.raises(BackendError, match="TRITON_INTERPRET"):
        ops.oe_boxes(torch.rand(1, 1, 3, 3))
    monkeypatch.delenv("FASTMLR_BACKEND")
    # Never chosen by default on CPU here: the call goes to another backend.
    torch.testing.assert_close(_small_sa_call().double(),
                               reference.car_spatial_attention_ref(*(t.double() for t in _sa_inputs(1, 2, 3, 4))))


@interp
def test_interpreter_backend_dispatch(monkeypatch):
    order = ops.available_backends("cpu")
    assert order.index("triton") < order.index("reference")
    if "cpp" in order:
        assert order.index("cpp") < order.index("triton")
    monkeypatch.setenv("FASTMLR_BACKEND", "triton")
    torch.testing.assert_close(_small_sa_call().double(),
                               reference.car_spatial_attention_ref(*(t.double() for t in _sa_inputs(1, 2, 3, 4))))
    monkeypatch.delenv("FASTMLR_BACKEND")
    with pytest.raises(BackendError, match=r"torch.bfloat16 is not supported in the Triton interpreter"):
        _small_sa_call(backend="triton", dtype=torch.bfloat16)
    with pytest.raises(BackendError, match="exceed the 128 x 128"):
        ops.oe_boxes(torch.rand(1, 1, 4, 129), backend="triton")


def _ptxas() -> Path | None:
    import triton

    path = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


@pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend unavailable: {_UNAVAILABLE.get('triton')}")
@pytest.mark.skipif(INTERPRET, reason="interpreted kernels are not compiled")
@pytest.mark.skipif(TRITON_LOADED and _ptxas() is None, reason="triton ships no ptxas here")
@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Ahead-of-time compile (Triton IR -> PTX -> cubin with Triton's ptxas) of every kernel with
    its GPU settings (libdevice tanh, a config it autotunes over): catches what the interpreter
    cannot, e.g. a libdevice call or a type the GPU backend rejects. Running them needs a GPU."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastmlr.kernels import car, oe

    def compile_(fn, types, consts, num_warps=4):
        sig = {a: "constexpr" if a in consts else types.get(a, "i32") for a in fn.arg_names}
        kernel = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                options=dict(num_warps=num_warps))
        assert ".entry " + fn.__name__ in kernel.asm["ptx"] and len(kernel.asm["cubin"]) > 0

    for dt in ("fp32",):
        io = {name: f"*{dt}" for name in ("u_ptr", "wc_ptr", "s_ptr", "b_ptr", "out_ptr", "du_ptr", "dwc_ptr",
                                          "f_ptr", "sa_ptr", "ca_ptr", "g_ptr", "dca_ptr", "src_ptr", "dst_ptr",
                                          "thr_ptr")}
        io.update(dz_ptr="*fp32", dsc_ptr="*fp32", df_ptr="*fp32", dsa_ptr="*fp32", idx_ptr="*i32",
                  box_ptr="*i64")
        sa = dict(ACC=tl.float32, USE_LIBDEVICE=True, **car._SA_CONFIGS[0].kwargs)
        compile_(car._car_sa_fwd_kernel, io, sa)
        compile_(car._car_sa_bwd_du_kernel, io, sa)
        compile_(car._car_sa_bwd_dw_kernel, io, dict(sa, **car._SA_DW_CONFIGS[0].kwargs))
        pool = {k: v for k, v in car._POOL_GPU.items() if k != "num_warps"}
        compile_(car._car_pool_fwd_kernel, {**io, "out_ptr": f"*{dt}"}, dict(ACC=tl.float32, **pool))
        bwd = {k: v for k, v in car._POOL_BWD_GPU.items() if k != "num_warps"}
        compile_(car._car_pool_bwd_kernel, io, dict(NEED_F=True, NEED_SA=True, NEED_CA=True, ACC=tl.float32, **bwd))
        compile_(oe._oe_boxes_kernel, {**io, "out_ptr": "*i64"}, dict(BLOCK_H=16, BLOCK_W=16))
        compile_(oe._oe_erase_kernel, io, dict(BLOCK=256))
    # The box rule computes in the map's own dtype: bfloat16 arithmetic must lower too.
    compile_(oe._oe_boxes_kernel, {"sa_ptr": "*bf16", "thr_ptr": "*bf16", "out_ptr": "*i64"}, dict(BLOCK_H=16, BLOCK_W=16))


# ---------------------------------------------------------------------------
# The interpreter subprocess
# ---------------------------------------------------------------------------

# Cases that are expected to skip inside the interpreter subprocess.
_PARENT_ONLY = {"test_interpreter_cases", "test_triton_on_cpu_without_interpreter_raises_listing_backends",
                "test_kernels_compile_for_sm90_without_a_gpu"}


@pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend unavailable: {_UNAVAILABLE.get('triton')}")
@pytest.mark.skipif(INTERPRET, reason="this process runs the interpreter cases itself")
def test_interpreter_cases(tmp_path):
    print(run_interpreter_subprocess(Path(__file__).resolve(), tmp_path, 20, _PARENT_ONLY))


# ---------------------------------------------------------------------------
# Real GPU: compiled kernels (libdevice tanh, autotune) against the reference
# ---------------------------------------------------------------------------


GPU_SHAPES = [(2, 20, 196, 512), (3, 7, 49, 300), (1, 1, 1, 1)]
GPU_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_car_ops_match_reference(shape, dtype):
    for op, ref_op, make in ((ops.car_spatial_attention, reference.car_spatial_attention_ref, _sa_inputs),
                             (ops.car_pool, reference.car_pool_ref, _pool_inputs)):
        _check_against_same_dtype_torch(op, ref_op, make(*shape), dtype, "cuda", floor=GPU_FLOOR[dtype])


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_oe_ops_match_reference(dtype):
    g = torch.Generator().manual_seed(5)
    sa = (torch.randint(0, 4, (4, 3, 14, 14), generator=g) / 3.0).to(dtype).cuda()
    boxes = ops.oe_boxes(sa, 0.5, backend="triton")
    assert torch.equal(boxes.cpu(), reference.oe_boxes_ref(sa.cpu(), 0.5))
    assert torch.equal(boxes.cpu(), _naive_boxes(sa.cpu(), 0.5))
    x = sa.clone().requires_grad_()
    out = ops.oe_erase(x, boxes, backend="triton")
    (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(out, reference.oe_erase_ref(sa, boxes))
    assert torch.equal(dx, reference.oe_erase_ref(torch.ones_like(sa), boxes))
