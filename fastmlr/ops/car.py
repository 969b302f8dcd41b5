"""SRDL's category-aware representation ops, declared once: ``car_spatial_attention`` and ``car_pool``.

Each :class:`~fastmlr.ops.spec.OpSpec` below holds what is true of the op on
every backend and target: its definition (the reference, docs/srdl.md steps 5
and 6), its autocast rule, its decomposition for the portable ONNX op set, its
fused ONNX node and TensorRT plugin, its example inputs, and where its C++ and
Triton implementations are (loaded only when their backend runs).

Differences of the C++ kernels from the reference, by design:
- ``car_pool``'s backward sends each maximum's gradient to the first ``p``
  reaching it; ``torch.amax`` splits it evenly among exact ties. Ties do not
  occur with continuous inputs. NaN inputs are not propagated by the maximum.
- ``car_spatial_attention`` in float32 on the CPU uses a vectorised rational
  tanh (csrc/car_math.h) with an absolute error of at most 4e-7 (float64 uses
  the exact libm tanh); ``torch.ops.fastmlr.tanh_fast`` exposes it for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import constants
from . import _dispatch
from ._checks import check
from .decomposed import chunks
from .opspec import Impl, OnnxNode, OpSpec, TrtPlugin, declare

# -- definitions -------------------------------------------------------------------------------------------


def car_spatial_attention_ref(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """Category-specific spatial attention (SRDL eq. 5).

    ``SA[n,c,p] = sigmoid(b + sum_k s[k] * tanh(u[n,p,k] * wc[c,k]))``

    Args:
        u (Tensor[N, P, D]): ``f_sa(F)`` at every location.
        wc (Tensor[C, D]): ``f_w(x_c)`` per category.
        s (Tensor[D]): weight of ``f_s`` (D -> 1).
        b (Tensor[]): bias of ``f_s``.
    Returns:
        Tensor[N, C, P]
    """
    t = torch.tanh(u[:, None, :, :] * wc[None, :, None, :])  # N, C, P, D
    return torch.sigmoid(torch.matmul(t, s) + b)


def car_pool_ref(f: Tensor, sa: Tensor, ca: Tensor) -> Tensor:
    """Category features: attention-weighted map then global max pooling (eq. 6 + GMP).

    ``feat[n,c,k] = max_p 0.5 * f[n,k,p] * (sa[n,c,p] + ca[n,c,k])``

    Args:
        f (Tensor[N, D, P]): backbone feature map, flattened spatially.
        sa (Tensor[N, C, P]): spatial attention.
        ca (Tensor[N, C, D]): channel attention.
    Returns:
        Tensor[N, C, D]; NaN where any of the P terms is NaN (as ``torch.amax``).
    """
    w = sa[:, :, None, :] + ca[:, :, :, None]  # N, C, D, P
    return (0.5 * f[:, None, :, :] * w).amax(dim=-1)


def car_spatial_attention_dec(u: Tensor, wc: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """The reference one chunk of categories at a time (fastmlr/ops/decomposed.py): -> Tensor[N, C, P]."""
    P, D = u.shape[1], u.shape[2]
    parts = []
    for c0, c1 in chunks(wc.shape[0], P * D):
        t = torch.tanh(u[:, None, :, :] * wc[None, c0:c1, None, :])  # N, c, P, D
        # A product and a sum, not matmul(t, s): ONNX Runtime runs a MatMul by a 1-D s as a GEMM with one
        # column, 1.2 ms per chunk of 2 x 196 x 2048 against 0.14 ms for Mul + ReduceSum (CPU, 1 thread).
        parts.append((t * s).sum(dim=-1))  # N, c, P
    z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return torch.sigmoid(z + b)


def car_pool_dec(f: Tensor, sa: Tensor, ca: Tensor) -> Tensor:
    """The reference one chunk of categories at a time: -> Tensor[N, C, D]."""
    D, P = f.shape[1], f.shape[2]
    # 0.5 * x is exact in binary floating point, so halving f first gives the reference's products.
    half = 0.5 * f[:, None, :, :]  # N, 1, D, P
    parts = []
    for c0, c1 in chunks(sa.shape[1], D * P):
        w = sa[:, c0:c1, None, :] + ca[:, c0:c1, :, None]  # N, c, D, P
        parts.append((half * w).amax(dim=-1))  # N, c, D
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


# -- the public functions -------------------------------------------------------------------------------------


def car_spatial_attention(u: Tensor, wc: Tensor, s: Tensor, b: Tensor, *, backend: str | None = None) -> Tensor:
    """Category-specific spatial attention, SRDL eq. 5 (docs/srdl.md step 5).

    ``SA[n,c,p] = sigmoid(b + sum_k s[k] * tanh(u[n,p,k] * wc[c,k]))``

    Args:
        u (Tensor[N, P, D]), wc (Tensor[C, D]), s (Tensor[D]), b (Tensor[]).
    Returns:
        Tensor[N, C, P]
    Under autocast ("lower"): u, wc, s, b are cast to the autocast dtype, as a linear layer's are.
    """
    check(u.dim() == 3, f"car_spatial_attention: u must be (N, P, D), got shape {tuple(u.shape)}")
    check(wc.dim() == 2, f"car_spatial_attention: wc must be (C, D), got shape {tuple(wc.shape)}")
    D = u.shape[2]
    check(wc.shape[1] == D, f"car_spatial_attention: wc must be (C, {D}) to match u (N, P, {D}), got {tuple(wc.shape)}")
    check(tuple(s.shape) == (D,), f"car_spatial_attention: s must be ({D},), got {tuple(s.shape)}")
    check(b.numel() == 1 and b.dim() <= 1,
          f"car_spatial_attention: b must be a scalar tensor, got shape {tuple(b.shape)}")
    return _dispatch.call("car_spatial_attention", (u, wc, s, b.reshape(())), backend,
                          same_dtype=("u", "wc", "s", "b"))


def car_pool(f: Tensor, sa: Tensor, ca: Tensor, *, backend: str | None = None) -> Tensor:
    """Category features, SRDL eq. 6 then global max pooling (docs/srdl.md step 6).

    ``feat[n,c,k] = max_p 0.5 * f[n,k,p] * (sa[n,c,p] + ca[n,c,k])``

    Args:
        f (Tensor[N, D, P]), sa (Tensor[N, C, P]), ca (Tensor[N, C, D]).
    Returns:
        Tensor[N, C, D]. NaN propagates, as in ``torch.amax``: ``feat[n,c,k]`` is
        NaN when any of its P terms is (every backend; the gradient then goes to
        the first NaN position). Infinities take part in the max as values.
    Under autocast ("promote"): f, sa, ca are cast to the widest of their dtypes.
    """
    check(f.dim() == 3, f"car_pool: f must be (N, D, P), got shape {tuple(f.shape)}")
    N, D, P = f.shape
    check(sa.dim() == 3 and sa.shape[0] == N and sa.shape[2] == P,
          f"car_pool: sa must be ({N}, C, {P}) to match f {tuple(f.shape)}, got {tuple(sa.shape)}")
    C = sa.shape[1]
    check(tuple(ca.shape) == (N, C, D),
          f"car_pool: ca must be ({N}, {C}, {D}) to match f and sa, got {tuple(ca.shape)}")
    check(P >= 1, "car_pool: f has no spatial positions (P = 0)")
    return _dispatch.call("car_pool", (f, sa, ca), backend, same_dtype=("f", "sa", "ca"))


# -- the C++ kernels (fastmlr._C, loaded by the "cpp" backend before these run) -------------------------------

_CPP_READY = False


def _cpp_ops():
    """``torch.ops.fastmlr`` with what torch.compile and autograd need for the CAR ops (registered once)."""
    global _CPP_READY
    ops = torch.ops.fastmlr
    if _CPP_READY:
        return ops
    _CPP_READY = True
    fake = torch.library.register_fake
    fake("fastmlr::car_spatial_attention")(lambda u, wc, s, b: u.new_empty((u.shape[0], wc.shape[0], u.shape[1])))
    fake("fastmlr::car_spatial_attention_backward")(
        lambda grad, u, wc, s, b, out: tuple(torch.empty_like(t) for t in (u, wc, s, b)))

    def pool_fake(f, sa, ca, index=True):
        shape = (f.shape[0], sa.shape[1], f.shape[1])
        return f.new_empty(shape), f.new_empty((shape[0] if index else 0, *shape[1:]), dtype=torch.int64)

    fake("fastmlr::car_pool")(pool_fake)
    fake("fastmlr::car_pool_backward")(lambda grad, f, sa, ca, idx: tuple(torch.empty_like(t) for t in (f, sa, ca)))

    def sa_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    def sa_backward(ctx, grad):
        u, wc, s, b, out = ctx.saved_tensors
        return ops.car_spatial_attention_backward(grad.contiguous(), u, wc, s, b, out)

    def pool_setup(ctx, inputs, output):
        # The argmax index (N x C x D) is all the backward keeps besides the inputs.
        ctx.save_for_backward(*inputs[:3], output[1])  # inputs[3]: index

    def pool_backward(ctx, grad_feat, grad_idx):
        f, sa, ca, idx = ctx.saved_tensors
        if grad_feat is None:
            return None, None, None, None
        if idx.shape[0] != f.shape[0]:
            raise RuntimeError("fastmlr::car_pool was called with index=False, which keeps no argmax index, so it "
                               "has no backward; call it with index=True where a gradient is wanted")
        return *ops.car_pool_backward(grad_feat.contiguous(), f, sa, ca, idx), None

    torch.library.register_autograd("fastmlr::car_spatial_attention", sa_backward, setup_context=sa_setup)
    torch.library.register_autograd("fastmlr::car_pool", pool_backward, setup_context=pool_setup)
    return ops


def _cpp_sa():
    ops = _cpp_ops()
    return lambda u, wc, s, b: ops.car_spatial_attention(u, wc, s, b)


def _cpp_pool():
    ops = _cpp_ops()

    def pool(f, sa, ca):
        # [1]: the argmax index its backward reads; where no gradient is wanted the kernel skips it
        # (index=False), which on the CPU lets it keep the values alone.
        index = torch.is_grad_enabled() and (f.requires_grad or sa.requires_grad or ca.requires_grad)
        return ops.car_pool(f, sa, ca, index)[0]

    return pool


_CPP_DTYPES = {"cpu": (torch.float32, torch.float64),
               "cuda": (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _triton_sa():
    from ..kernels import car_attention

    return car_attention.car_spatial_attention


def _triton_pool():
    from ..kernels import car_pooling

    return car_pooling.car_pool


# -- TensorRT plugins (fastmlr.kernels.trt_entry; shapes are ints or TensorRT size expressions) ---------------


def _sa_config(arch: int) -> tuple[dict, int]:
    blocks, warps = constants.SA_GPU_CONFIGS[0]  # the launcher autotunes; an engine carries one kernel
    return dict(blocks), warps


def _pool_config(arch: int) -> tuple[dict, int]:
    blocks = dict(constants.POOL_GPU)
    return blocks, blocks.pop("num_warps")


def _sa_scalars(shapes) -> list:
    (_n, p, d), (c, _) = shapes[0], shapes[1]
    return [c, p, d, p * d, d, d, c * p, p]  # C, P, D, u.stride(0..1), wc.stride(0), out.stride(0..1)


def _pool_scalars(shapes) -> list:
    (_n, d, p), (_, c, _) = shapes[0], shapes[1]
    return [c, d, p, d * p, p, c * p, p, c * d, d]  # C, D, P, f, sa, ca strides (0..1)


# -- examples --------------------------------------------------------------------------------------------------

_SIZES = {"small": dict(N=2, C=5, P=7, D=12), "paper": dict(N=16, C=80, P=14 * 14, D=2048)}


def _sa_examples(size, gen):
    N, C, P, D = _SIZES[size].values()
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    return 0.5 * r(N, P, D), 0.5 * r(C, D), 0.05 * r(D), r(())


def _pool_examples(size, gen):
    N, C, P, D = _SIZES[size].values()
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    return r(N, D, P).relu(), torch.sigmoid(r(N, C, P)), torch.sigmoid(r(N, C, D))


CAR_SPATIAL_ATTENTION = declare(OpSpec(
    name="car_spatial_attention",
    schema="car_spatial_attention(Tensor u, Tensor wc, Tensor s, Tensor b) -> Tensor",
    reference=car_spatial_attention_ref,
    autocast="lower",  # a fused linear layer F.linear(tanh(u * wc), s, b)
    output_shape=lambda shapes: (shapes[0][0], shapes[1][0], shapes[0][1]),  # N, C, P
    function=car_spatial_attention,
    make_examples=_sa_examples,
    decomposition=car_spatial_attention_dec,
    onnx=OnnxNode("CarSpatialAttention", ("u", "wc", "s", "b"), "sa"),
    trt=TrtPlugin("car_sa_trt_kernel", (3, 2, 1, 0), _sa_scalars,
                  grid=lambda sh, bl, cdiv: (cdiv(sh[0][1], bl["BLOCK_P"]), cdiv(sh[1][0], bl["BLOCK_C"]), sh[0][0]),
                  config=_sa_config, constants={"USE_LIBDEVICE": True}),
    impls={"cpp": Impl(_cpp_sa, dtypes=_CPP_DTYPES), "triton": Impl(_triton_sa)},
    doc="SRDL eq. 5: category-specific spatial attention",
))

CAR_POOL = declare(OpSpec(
    name="car_pool",
    schema="car_pool(Tensor f, Tensor sa, Tensor ca) -> Tensor",
    reference=car_pool_ref,
    autocast="promote",  # products and a maximum
    output_shape=lambda shapes: (shapes[0][0], shapes[1][1], shapes[0][1]),  # N, C, D
    function=car_pool,
    make_examples=_pool_examples,
    decomposition=car_pool_dec,
    onnx=OnnxNode("CarPool", ("f", "sa", "ca"), "feat"),
    trt=TrtPlugin("car_pool_trt_kernel", (3, 3, 3), _pool_scalars,
                  grid=lambda sh, bl, cdiv: (cdiv(sh[0][1], bl["BLOCK_K"]), cdiv(sh[1][1], bl["BLOCK_C"]), sh[0][0]),
                  config=_pool_config),
    impls={"cpp": Impl(_cpp_pool, dtypes=_CPP_DTYPES), "triton": Impl(_triton_pool)},
    doc="SRDL eq. 6 + global max pooling: category features",
))
