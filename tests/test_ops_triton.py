"""What is specific to the "triton" backend (fastmlr.kernels).

Every op's values and gradients, on every backend, are tested in tests/test_op_*.py. Here:
the kernels' own guarantees (the pooling tie rule across blocks, nothing of size N x C x P x D
saved), the backend's refusals, an ahead-of-time compile for sm_90, and the interpreter run.

Where these tests run
---------------------
Triton decides at decoration time whether a kernel is compiled for a GPU or run by its CPU
interpreter (``TRITON_INTERPRET``, fixed when triton is first imported). Turning the
interpreter on for the whole pytest process would make the slow interpreted backend run
every CPU case of the other files, so:

* ``test_interpreter_cases`` runs tests/test_op_*.py (their triton cases) and this file
  again in a subprocess with ``TRITON_INTERPRET=1`` and fails with that run's failures
  (read from its junit report);
* in the ordinary process the op files' triton-on-CPU cases skip with the dispatch's reason,
  and the cases here marked ``@interp`` skip saying so;
* GPU cases (``-m gpu`` on a GPU machine) run the compiled kernels on CUDA tensors.

The interpreter costs about 65 ms per program, so shapes are small but odd: ragged against
the 16-wide interpreter blocks, several blocks per axis, and the degenerate C = 1, P = 1, D = 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

import fastmlr.ops as ops  # noqa: E402
from fastmlr.ops import BackendError, reference  # noqa: E402
from ops_common import leaves, pool_inputs, sa_inputs  # noqa: E402
from triton_interp import run_interpreter_subprocess  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_STATUS = next(r for r in ops.backend_status("cpu") if r.name == "triton")
TRITON_LOADED = not (_STATUS.reason or "").startswith("unavailable")
# The triton backend runs CPU tensors exactly when its kernels were built by the interpreter.
INTERPRET = _STATUS.runs

interp = pytest.mark.skipif(
    not (TRITON_LOADED and INTERPRET),
    reason="needs kernels built by the Triton interpreter: test_interpreter_cases runs these "
    "in a TRITON_INTERPRET=1 subprocess",
)
needs_triton = pytest.mark.skipif(not TRITON_LOADED, reason=f"triton backend: {_STATUS.reason}")


def _leaves(*ts, dtype, device="cpu"):
    return leaves(*ts, dtype=dtype, device=device)


def _sa_inputs(N, C, P, D, seed=0):
    return tuple(t.float() for t in sa_inputs(N, C, P, D, seed))


def _pool_inputs(N, C, P, D, seed=0):
    return tuple(t.float() for t in pool_inputs(N, C, P, D, seed))


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
# Dispatch
# ---------------------------------------------------------------------------


def _small_sa_call(backend=None, dtype=torch.float32):
    u, wc, s, b = (t.to(dtype) for t in _sa_inputs(1, 2, 3, 4))
    return ops.car_spatial_attention(u, wc, s, b, backend=backend)


@needs_triton
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


@needs_triton
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

    from fastmlr.kernels import car_attention as car
    from fastmlr.kernels import car_pooling, oe

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
        pool = {k: v for k, v in car_pooling._POOL_GPU.items() if k != "num_warps"}
        compile_(car_pooling._car_pool_fwd_kernel, {**io, "out_ptr": f"*{dt}"}, dict(ACC=tl.float32, STORE_IDX=True, **pool))
        bwd = {k: v for k, v in car_pooling._POOL_BWD_GPU.items() if k != "num_warps"}
        compile_(car_pooling._car_pool_bwd_kernel, io, dict(NEED_F=True, NEED_SA=True, NEED_CA=True, ACC=tl.float32, **bwd))
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


@needs_triton
@pytest.mark.skipif(INTERPRET, reason="this process runs the interpreter cases itself")
@pytest.mark.slow
def test_interpreter_cases(tmp_path):
    files = sorted(Path(__file__).resolve().parent.glob("test_op_*.py")) + [Path(__file__).resolve()]
    # Every op file's triton-on-CPU cases and this file's; at least one per op file's parametrised test.
    print(run_interpreter_subprocess(files, tmp_path, 120, _PARENT_ONLY, select="triton-cpu or not test_op_",
                                     refusals=("triton on cpu: dtype torch.bfloat16 is not supported",)))
