"""What every op test shares: the tolerance table, the backend x device x dtype cases, inputs.

A case runs where fastmlr.ops' dispatch says its backend runs that op on that device and
dtype, and skips with the dispatch's own reason elsewhere (``ops.backend_status``); CUDA
cases are marked ``gpu``. Under ``TRITON_INTERPRET=1`` the triton backend runs CPU cases
(tests/triton_interp.py reruns the op files so in a subprocess).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import fastmlr.ops as ops

# (atol, rtol) of every backend against the float64 reference and the naive float64 loops
# (tests/naive_ref.py). float32: sums of up to ~100 O(1) terms rounded once each, and the
# C++ backend's vectorised float tanh (at most 4e-7 each): ~1e-6 seen. float64: ~1e-15 seen.
TOL = {
    torch.float32: (1e-5, 1e-4),
    torch.float64: (1e-12, 1e-12),
}
# float16 / bfloat16 (accumulated in fp32 by the fused backends): the error may be at most
# twice PyTorch's own in that dtype plus this floor, relative to the result's size
# (flash-attention style). Per device: the GPU cases use far larger shapes.
LOW_PRECISION_FLOOR = {
    "cpu": {torch.float16: 1e-3, torch.bfloat16: 2e-2},
    "cuda": {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2},
}
# Where a result is a sum of terms that cancel (a gradient near zero), its rounding error scales
# with the size of those terms, not with the result: each of the kernels' few roundings per term
# costs at most the unit roundoff times that term. TERM_ROUNDINGS units of roundoff per unit of
# term size bound what was measured (at most 3.4 units, float32, every backend, both CPU families).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
TERM_ROUNDINGS = 64
EXACT = (torch.float32, torch.float64)
LOW = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Case:
    backend: str
    device: str
    dtype: torch.dtype

    def __str__(self):
        return f"{self.backend}-{self.device}-{str(self.dtype).removeprefix('torch.')}"

    def call(self, op: str, *args, **kwargs):
        with ops.use_backend(self.backend):
            return getattr(ops, op)(*args, **kwargs)


def cases(op: str, dtypes=EXACT, devices=("cpu", "cuda")) -> list:
    """pytest params, one per (backend, device, dtype); those the dispatch refuses skip with its reason."""
    params = []
    for device in devices:
        for dtype in dtypes:
            for row in ops.backend_status(device, op, dtype):
                marks = [pytest.mark.gpu] if device == "cuda" else []
                if not row.runs:
                    marks.append(pytest.mark.skip(reason=f"{row.name} on {device}: {row.reason}"))
                case = Case(row.name, device, dtype)
                params.append(pytest.param(case, id=str(case), marks=marks))
    return params


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str, terms: torch.Tensor | None = None):
    """``got`` within TOL of ``want``; with ``terms`` (per element, the sum of the absolute values of
    the terms that ``want`` adds up), the absolute tolerance of an element grows to TERM_ROUNDINGS
    unit roundoffs of its terms where that is larger."""
    atol, rtol = TOL[dtype]
    assert got.dtype == dtype and got.shape == want.shape, f"{what}: {got.dtype} {tuple(got.shape)}"
    got, want = got.double().cpu(), want.double().cpu()
    if terms is None:
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
        return
    bound = torch.clamp(TERM_ROUNDINGS * UNIT_ROUNDOFF[dtype] * terms.double().cpu(), min=atol) + rtol * want.abs()
    excess = (got - want).abs() - bound
    i = int(excess.flatten().argmax())
    assert excess.flatten()[i] <= 0 and not got.isnan().any(), (
        f"{what}: element {i} is {got.flatten()[i].item():.9g}, expected {want.flatten()[i].item():.9g} "
        f"(difference {abs(got.flatten()[i] - want.flatten()[i]).item():.3g}, allowed {bound.flatten()[i].item():.3g} "
        f"for terms of size {terms.flatten()[i].item():.3g})")


def abs_terms(ref_op, raw: tuple, g: torch.Tensor) -> list:
    """Per input, ``|J|^T |g|`` in float64: the size of the terms each element of the gradient
    ``J^T g`` adds up (it cancels where g's signs do). Misses cancellation inside J itself; an op
    whose Jacobian is a difference of terms gives its own (naive_ref.mp_cosine_grad)."""
    ins = tuple(t.detach().double().cpu() for t in raw)
    jac = torch.autograd.functional.jacobian(ref_op, ins)
    ga = g.double().cpu().abs()
    return [(j.abs() * ga.reshape(ga.shape + (1,) * t.dim())).flatten(0, ga.dim() - 1).sum(0)
            for j, t in zip(jac, ins)]


def leaves(*ts, dtype, device="cpu"):
    return [t.detach().to(device=device, dtype=dtype).requires_grad_() for t in ts]


def grads_against_reference(case: Case, op: str, ref_op, raw: tuple, seed: int = 1, generator=None, terms=abs_terms):
    """(out, grads, ref_out, ref_grads, grad_terms): the op on ``case`` and the float64 reference on
    the same values, both backpropagated from the same random output gradient g (drawn from
    ``generator`` in float32 if given, else from a float64 one seeded ``seed``); ``grad_terms`` is
    ``terms(ref_op, inputs, g)``, the size of what each gradient element sums (see :func:`close`)."""
    ins = leaves(*raw, dtype=case.dtype, device=case.device)
    out = case.call(op, *ins)
    if generator is not None:
        g = torch.randn(out.shape, generator=generator).double()
    else:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, ins, g.to(out))
    ref_ins = leaves(*(t.to(case.dtype) for t in raw), dtype=torch.float64)
    ref = ref_op(*ref_ins)
    g64 = g.to(case.dtype).double()
    ref_grads = torch.autograd.grad(ref, ref_ins, g64)
    return out, grads, ref, ref_grads, terms(ref_op, tuple(t.detach() for t in ref_ins), g64)


def err_bound(got, ref64, same_dtype_ref, floor, what):
    """No worse than twice PyTorch's own error in that dtype, plus ``floor`` relative to the result's size."""
    ref64 = ref64.double().cpu()
    bound = 2 * (same_dtype_ref.double().cpu() - ref64).abs().max().item() + floor * max(1.0, ref64.abs().max().item())
    err = (got.double().cpu() - ref64).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} (2 x PyTorch's error in {got.dtype} + floor)"


def check_low_precision(case: Case, op: str, ref_op, raw: tuple):
    """Forward and every gradient of ``op`` on ``case`` (a float16/bfloat16 one) within :func:`err_bound`."""
    floor = LOW_PRECISION_FLOOR[case.device][case.dtype]
    ins = leaves(*raw, dtype=case.dtype, device=case.device)
    out = case.call(op, *ins)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, ins, g)
    ref_ins = leaves(*raw, dtype=torch.float64, device=case.device)
    ref = ref_op(*ref_ins)
    ref_grads = torch.autograd.grad(ref, ref_ins, g.double())
    low_ins = leaves(*raw, dtype=case.dtype, device=case.device)
    low = ref_op(*low_ins)
    low_grads = torch.autograd.grad(low, low_ins, g)
    err_bound(out, ref, low, floor, "forward")
    for i, (got, want, same) in enumerate(zip(grads, ref_grads, low_grads)):
        assert got.dtype == case.dtype and got.shape == want.shape
        err_bound(got, want, same, floor, f"gradient of input {i}")


# -- inputs -------------------------------------------------------------------------------------------

def sa_inputs(N, C, P, D, seed=0):
    """u, wc, s, b of car_spatial_attention (float64, on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(N, P, D, generator=g, dtype=torch.float64)
    wc = torch.randn(C, D, generator=g, dtype=torch.float64)
    s = torch.randn(D, generator=g, dtype=torch.float64) / D**0.5
    b = torch.randn((), generator=g, dtype=torch.float64) * 0.3
    return u, wc, s, b


def pool_inputs(N, C, P, D, seed=0):
    """f, sa, ca of car_pool (float64, on the CPU); continuous values, so no ties."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(N, D, P, generator=g, dtype=torch.float64)
    return f, torch.rand(N, C, P, generator=g, dtype=torch.float64), torch.rand(N, C, D, generator=g, dtype=torch.float64)
