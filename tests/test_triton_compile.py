"""Every Triton kernel the triton backend launches, compiled for every GPU architecture the build targets.

The interpreter runs the kernels' logic on the CPU but never compiles them, so it cannot see a config
that needs more shared memory or registers than a block may have on some GPU (Triton then raises
``OutOfResources`` at the first launch there), nor what the code generator makes of an arithmetic
operator. Here, without a GPU:

1. each launcher of fastmlr.kernels (car_attention, car_pooling, oe, mlr_extra) runs on ``meta`` tensors with its kernels
   replaced by recorders, for every dtype the backend accepts on CUDA, every map size class of the
   OE ops and every gradient combination, so the configs tested are the ones the launchers pass
   (every config of an autotuned kernel);
2. each distinct (kernel, argument types, constexprs, options) is compiled ahead of time
   (Triton IR -> PTX -> cubin, Triton's bundled ptxas) for each architecture of the build's
   ``TORCH_CUDA_ARCH_LIST`` (setup.py), and
3. its shared memory (Triton's metadata plus static shared memory), registers and local memory
   (``cuobjdump --dump-resource-usage`` on the cubin) are held to that architecture's per-block limits;
4. where a kernel promises the reference's exact arithmetic (the OE box rule), its PTX is checked
   for IEEE-rounded division (``div.rn``, never ``div.approx``/``div.full``) and, in fp16/bf16,
   for the quotient's rounding back to the map's dtype.

``python tests/test_triton_compile.py`` prints the table of resource use.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    _NVIDIA_BIN = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin"
    _WHY_NOT = None
    if not (_NVIDIA_BIN / "ptxas").exists() or not (_NVIDIA_BIN / "cuobjdump").exists():
        _WHY_NOT = f"triton ships no ptxas/cuobjdump in {_NVIDIA_BIN}"
    elif triton.knobs.runtime.interpret:
        _WHY_NOT = "TRITON_INTERPRET=1: kernels are interpreted, not compiled"
except Exception as e:  # noqa: BLE001 - any import failure means: nothing to compile with
    _WHY_NOT = f"triton unavailable: {type(e).__name__}: {e}"

pytestmark = [pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT)), pytest.mark.slow]

# Per-block limits by compute capability (CUDA C Programming Guide, "Technical Specifications per
# Compute Capability"): the most shared memory one block may opt in to, in bytes, and registers.
SMEM_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                  100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024}
REGS_PER_THREAD = 255
REGS_PER_BLOCK = 64 * 1024
THREADS_PER_BLOCK = 1024


def build_arch_list() -> list[int]:
    """Compute capabilities of setup.py's default TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0+PTX" -> [80, 90]."""
    text = (ROOT / "setup.py").read_text()
    m = re.search(r'^DEFAULT_CUDA_ARCH_LIST\s*=\s*"([^"]+)"', text, re.M)
    assert m, "setup.py: no DEFAULT_CUDA_ARCH_LIST = \"...\" line"
    caps = []
    for item in re.split(r"[;\s]+", m.group(1).strip()):
        major, minor = item.replace("+PTX", "").split(".")
        caps.append(int(major) * 10 + int(minor))
    return caps


ARCHS = build_arch_list() if _WHY_NOT is None else [90]
_TL_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
             torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


# ---------------------------------------------------------------------------
# 1. Record what the launchers launch
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One compilation: a kernel with its argument types, constexprs and compile options."""

    fn: object = field(compare=False, hash=False)
    name: str
    signature: tuple  # ((arg, type), ...), constexprs excluded
    constexprs: tuple  # ((arg, value), ...)
    options: tuple  # ((option, value), ...)

    def label(self) -> str:
        types = sorted({t for _, t in self.signature if t.startswith("*")})
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs if k.startswith(("BLOCK", "NEED")))
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.name}[{'/'.join(types)}; {consts}; {opts}]"


def _cuda_option_names() -> frozenset:
    """The compile options a launch may pass as keywords: the fields of Triton's own CUDAOptions."""
    from triton.backends.nvidia.compiler import CUDAOptions

    return frozenset(CUDAOptions.__dataclass_fields__)


def _launches_of(fn: JITFunction, configs, args: tuple, kwargs: dict) -> list[Launch]:
    """The compilations ``fn[grid](*args, **kwargs)`` asks for, one per autotuner config (``[None]``: plain jit).

    The arguments are bound as Triton binds them (JITFunction.run binds with the kernel's Python
    signature, ``fn.signature``; keywords that are not parameters are compile options, CUDAOptions' fields),
    so a launch Triton would refuse is refused here: too many positional arguments, a parameter given twice
    or missing (TypeError, as Triton's binder), a meta-parameter both passed and set by the autotuner's config
    (ValueError "Conflicting meta-parameters", as Triton's Autotuner), and, stricter than Triton, which ignores
    them, keywords that are neither parameters nor options.
    """
    names = fn.arg_names
    assert list(fn.signature.parameters) == list(names)
    constexpr_names = {names[i] for i in fn.constexprs}
    params = {k: v for k, v in kwargs.items() if k in fn.signature.parameters}
    options = {k: v for k, v in kwargs.items() if k not in params}
    unknown = sorted(set(options) - _cuda_option_names())
    assert not unknown, f"{fn.__name__}: keywords {unknown} are neither parameters nor Triton compile options"
    out = []
    for cfg in configs:
        opts = dict(options)
        meta = dict(params)
        if cfg is not None:
            conflicts = sorted(meta.keys() & cfg.kwargs.keys())
            if conflicts:
                raise ValueError(f"Conflicting meta-parameters: {', '.join(conflicts)}.")
            meta.update(cfg.kwargs)
            opts.update(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            if getattr(cfg, "maxnreg", None) is not None:
                opts["maxnreg"] = cfg.maxnreg
        bound = fn.signature.bind(*args, **meta)  # TypeError where Triton's binder raises one
        bound.apply_defaults()
        vals = bound.arguments
        sig, consts = [], []
        for n in names:
            v = vals[n]
            if n in constexpr_names:
                consts.append((n, v))
            elif isinstance(v, torch.Tensor):
                sig.append((n, "*" + _TL_TYPES[v.dtype]))
            elif isinstance(v, bool):
                sig.append((n, "i1"))
            elif isinstance(v, int):
                sig.append((n, "i32" if -2**31 <= v < 2**31 else "i64"))
            elif isinstance(v, float):
                sig.append((n, "fp32"))
            else:
                raise AssertionError(f"{fn.__name__}: argument {n} of type {type(v).__name__} not understood")
        out.append(Launch(fn, fn.__name__, tuple(sig), tuple(consts), tuple(sorted(opts.items()))))
    return out


def test_recorder_binds_launches_as_triton_does():
    """The recorder refuses the launches Triton refuses (its contract, not ours), and reads a good one."""
    import triton.language as tl

    @triton.jit
    def k(x_ptr, n, BLOCK: tl.constexpr, FLAG: tl.constexpr = 0):
        pass

    x = torch.empty(4, device="meta")
    (ok,) = _launches_of(k, [None], (x, 4), {"BLOCK": 16, "num_warps": 2})
    assert ok.signature == (("x_ptr", "*fp32"), ("n", "i32")) and ok.constexprs == (("BLOCK", 16), ("FLAG", 0))
    assert ok.options == (("num_warps", 2),)
    with pytest.raises(TypeError):  # too many positional arguments
        _launches_of(k, [None], (x, 4, 16, 0, 1), {})
    with pytest.raises(TypeError):  # n twice
        _launches_of(k, [None], (x, 4), {"n": 4, "BLOCK": 16})
    with pytest.raises(TypeError):  # BLOCK missing
        _launches_of(k, [None], (x, 4), {})
    with pytest.raises(AssertionError, match="BLOCKK"):  # a misspelt meta-parameter
        _launches_of(k, [None], (x, 4), {"BLOCK": 16, "BLOCKK": 32})
    cfg = triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2)
    (tuned,) = _launches_of(k, [cfg], (x, 4), {})
    assert ("BLOCK", 32) in tuned.constexprs and dict(tuned.options) == {"num_warps": 4, "num_stages": 2}
    with pytest.raises(ValueError, match="Conflicting meta-parameters: BLOCK"):
        _launches_of(k, [cfg], (x, 4), {"BLOCK": 16})
    assert {"num_warps", "num_stages", "maxnreg"} <= _cuda_option_names()  # what configs set


class _Recorder:
    """Stands in for a kernel (JITFunction or Autotuner) in its module: ``kernel[grid](...)`` records."""

    def __init__(self, target, log: list):
        self.target, self.log = target, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            t = self.target
            if isinstance(t, Autotuner):
                self.log.extend(_launches_of(t.fn, t.configs, args, kwargs))
            else:
                self.log.extend(_launches_of(t, [None], args, kwargs))
        return launch


def _kernel_modules():
    from fastmlr.kernels import car_attention, car_pooling, mlr_extra, oe

    return (car_attention, car_pooling, oe, mlr_extra)


def launched_kernels() -> set[str]:
    """Names of every ``*_kernel`` @triton.jit function in fastmlr.kernels' op modules."""
    names = set()
    for mod in _kernel_modules():
        for name, obj in vars(mod).items():
            fn = obj.fn if isinstance(obj, Autotuner) else obj
            if isinstance(fn, JITFunction) and fn.__name__.endswith("_kernel") and fn.__module__ == mod.__name__:
                names.add(fn.__name__)
    return names


def _backend_cuda_dtypes():
    from fastmlr.ops._triton import _CUDA_DTYPES

    return _CUDA_DTYPES


def oe_map_sizes(m: int) -> list[tuple[int, int]]:
    """Map sizes (H, W) whose blocks cover what the OE launchers choose (next_pow2 of each side, up to m).

    Resource use grows with the block, so: the largest blocks of each warp count (4 warps up to 4096
    positions, 8 beyond), the one-wide edges, and SRDL's 14 x 14. The oe_erase blocks they give
    (next_pow2(H * W), capped) run from 1 to the cap.
    """
    return [(1, 1), (1, m), (m, 1), (14, 14), (m // 2, m // 2), (m // 4, m), (m, m // 4),
            (m // 2, m), (m, m // 2), (m, m)]


def _exercise_launchers(dtype: torch.dtype) -> None:
    """Every launcher, forward and backward, on meta tensors (nothing runs, the recorders log)."""
    car_attention, car_pooling, oe, mlr_extra = _kernel_modules()
    meta = dict(device="meta", dtype=dtype)

    def grads(out, inputs):
        torch.autograd.grad(out, inputs, torch.empty_like(out))

    # SRDL at the paper's shapes: N=2, C=80, 14 x 14, D=2048 (configs do not depend on the sizes).
    N, C, P, D = 2, 80, 196, 2048
    u, wc, s, b = (torch.empty(sh, **meta, requires_grad=True) for sh in ((N, P, D), (C, D), (D,), ()))
    grads(car_attention.car_spatial_attention(u, wc, s, b), [u, wc, s, b])
    f0, sa0, ca0 = torch.empty(N, D, P, **meta), torch.empty(N, C, P, **meta), torch.empty(N, C, D, **meta)
    # Every non-empty subset of (f, sa, ca) needing a gradient in fp32; the others only remove code, so
    # the other dtypes take the largest, all three.
    for need in range(1, 8) if dtype == torch.float32 else (7,):
        ins = [t.clone().requires_grad_(bool(need >> i & 1)) for i, t in enumerate((f0, sa0, ca0))]
        grads(car_pooling.car_pool(*ins), [t for t in ins if t.requires_grad])
    for h, w in oe_map_sizes(oe.MAX_OE_SIDE):
        sa = torch.empty(N, 3, h, w, **meta, requires_grad=True)
        boxes = oe.oe_boxes(sa, 0.5)
        grads(oe.oe_erase(sa, boxes), [sa])
    # AAMN (second-order pooling) and MMDSR (cosine graph).
    x = torch.empty(N, 512, P, **meta, requires_grad=True)
    grads(mlr_extra.second_order_pool(x), [x])
    v, w = torch.empty(N, C, 512, **meta, requires_grad=True), torch.empty(4, 512, **meta, requires_grad=True)
    grads(mlr_extra.multi_perspective_cosine(v, w), [v, w])


def record_launches() -> list[Launch]:
    log: list = []
    patches = []
    for mod in _kernel_modules():
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, (JITFunction, Autotuner)):
                patches.append((mod, name, obj))
                setattr(mod, name, _Recorder(obj, log))
    try:
        for dtype in _backend_cuda_dtypes():
            _exercise_launchers(dtype)
    finally:
        for mod, name, obj in patches:
            setattr(mod, name, obj)
    return list(dict.fromkeys(log))  # distinct, in launch order


# ---------------------------------------------------------------------------
# 2-3. Compile and measure
# ---------------------------------------------------------------------------


@dataclass
class Compiled:
    launch: Launch
    arch: int
    ptx: str
    shared: int  # bytes: Triton's dynamic shared memory plus the cubin's static shared memory
    regs: int
    stack: int
    local: int

    @property
    def threads(self) -> int:
        return dict(self.launch.options).get("num_warps", 4) * 32

    def problems(self) -> list[str]:
        """What exceeds this architecture's per-block limits (empty when the launch fits)."""
        out = []
        smem = SMEM_PER_BLOCK[self.arch]
        if self.shared > smem:
            out.append(f"shared memory {self.shared} B > {smem} B")
        if self.regs > REGS_PER_THREAD:
            out.append(f"{self.regs} registers/thread > {REGS_PER_THREAD}")
        # Registers are allocated per warp in units of 256 (8 a thread).
        per_block = -(-self.regs // 8) * 8 * self.threads
        if per_block > REGS_PER_BLOCK:
            out.append(f"{per_block} registers/block > {REGS_PER_BLOCK}")
        if self.threads > THREADS_PER_BLOCK:
            out.append(f"{self.threads} threads/block > {THREADS_PER_BLOCK}")
        return out

    def spills(self) -> str:
        """Local memory (a stack frame: register spills or local arrays): slower, not fatal; a warning."""
        return (f"local memory: stack frame {self.stack} B, local {self.local} B (spills or local arrays)"
                if self.stack or self.local else "")


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def cubin_resources(cubin: bytes) -> tuple[int, int, int, int]:
    """(registers, stack, static shared, local) of the single kernel in ``cubin``, from cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([str(_NVIDIA_BIN / "cuobjdump"), "--dump-resource-usage", path],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    found = _RESOURCE.findall(out)
    assert len(found) == 1, f"cuobjdump --dump-resource-usage: expected one function, got:\n{out}"
    return tuple(int(x) for x in found[0])


def compile_launch(launch: Launch, arch: int) -> Compiled:
    sig = dict(launch.signature)
    consts = dict(launch.constexprs)
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(launch.fn, sig, consts)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(launch.options))
    regs, stack, static_shared, local = cubin_resources(kernel.asm["cubin"])
    return Compiled(launch, arch, kernel.asm["ptx"], kernel.metadata.shared + static_shared, regs, stack, local)


# ---------------------------------------------------------------------------
# 4. Exact arithmetic
# ---------------------------------------------------------------------------

_EXACT_KERNELS = ("_oe_boxes_kernel",)


def exactness_problems(c: Compiled) -> list[str]:
    """The OE box rule divides as the reference does: IEEE-rounded, then rounded to the map's dtype."""
    if c.launch.name not in _EXACT_KERNELS:
        return []
    dtype = dict(c.launch.signature)["sa_ptr"][1:]
    ops = set(re.findall(r"\b(div\.[a-z0-9.]+)", c.ptx))
    out = []
    approx = sorted(op for op in ops if ".approx" in op or ".full" in op)
    if approx:
        out.append(f"approximate division in the PTX: {approx}")
    want = "div.rn.f64" if dtype == "fp64" else "div.rn.f32"
    if want not in ops:
        out.append(f"no {want} in the PTX (divisions found: {sorted(ops)})")
    if dtype in ("fp16", "bf16") and f"cvt.rn.{dtype.replace('fp', 'f')}.f32" not in c.ptx:
        out.append(f"the fp32 quotient is never rounded back to {dtype} (no cvt.rn.{dtype.replace('fp', 'f')}.f32)")
    return out


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launches() -> list[Launch]:
    return record_launches()


_compiled_cache: dict[int, list[Compiled]] = {}
# The launches a forked worker compiles by index (JIT functions do not pickle; fork shares them).
_WORK: list[Launch] = []


def _compile_one(job: tuple[int, int]) -> tuple:
    c = compile_launch(_WORK[job[0]], job[1])
    return c.ptx, c.shared, c.regs, c.stack, c.local


def _compiled(launches: list[Launch], arch: int) -> list[Compiled]:
    """Every launch compiled for ``arch``, on every core (each compile is one process's MLIR + ptxas work)."""
    if arch not in _compiled_cache:
        import multiprocessing

        _WORK[:] = launches
        workers = min(len(os.sched_getaffinity(0)), 8)
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                fields = pool.map(_compile_one, [(i, arch) for i in range(len(launches))], chunksize=4)
        else:
            fields = [_compile_one((i, arch)) for i in range(len(launches))]
        _compiled_cache[arch] = [Compiled(launch, arch, *f) for launch, f in zip(launches, fields)]
    return _compiled_cache[arch]


def test_build_arch_list_has_known_limits():
    assert ARCHS, "setup.py's DEFAULT_CUDA_ARCH_LIST is empty"
    unknown = [a for a in ARCHS if a not in SMEM_PER_BLOCK]
    assert not unknown, f"no per-block limits recorded here for sm_{unknown}: add them to SMEM_PER_BLOCK"


def test_recorder_sees_every_kernel_and_config(launches):
    """Guards the harness itself: every kernel is launched, every autotune config and dtype is seen."""
    car_attention, _, oe, mlr_extra = _kernel_modules()
    names = {launch.name for launch in launches}
    assert names == launched_kernels(), f"kernels never launched by the exercise: {launched_kernels() - names}"
    dtypes = {dict(launch.signature)["u_ptr"] for launch in launches if launch.name == "_car_sa_fwd_kernel"}
    assert dtypes == {"*" + _TL_TYPES[d] for d in _backend_cuda_dtypes()}
    fwd = {launch.constexprs for launch in launches if launch.name == "_car_sa_fwd_kernel"
           and dict(launch.signature)["u_ptr"] == "*fp32"}
    assert len(fwd) == len(car_attention._sa_fwd.configs)
    boxes = {(c["BLOCK_H"], c["BLOCK_W"]) for c in (dict(x.constexprs) for x in launches if x.name == "_oe_boxes_kernel")}
    assert boxes == {(triton.next_power_of_2(h), triton.next_power_of_2(w)) for h, w in oe_map_sizes(oe.MAX_OE_SIDE)}
    erase = {dict(x.constexprs)["BLOCK"] for x in launches if x.name == "_oe_erase_kernel"}
    assert erase == {min(triton.next_power_of_2(h * w), oe._ERASE_BLOCK_GPU) for h, w in oe_map_sizes(oe.MAX_OE_SIDE)}
    pool_bwd = {tuple(dict(x.constexprs)[k] for k in ("NEED_F", "NEED_SA", "NEED_CA"))
                for x in launches if x.name == "_car_pool_bwd_kernel" and dict(x.signature)["f_ptr"] == "*fp32"}
    assert len(pool_bwd) == 7


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_config_fits_the_architecture(launches, arch):
    bad, slow = [], []
    for c in _compiled(launches, arch):
        bad += [f"sm_{arch} {c.launch.label()}: {p}" for p in c.problems()]
        if c.spills():
            slow.append(f"sm_{arch} {c.launch.label()}: {c.spills()}")
    if slow:
        warnings.warn(f"{len(slow)} configs use local memory:\n" + "\n".join(slow), stacklevel=1)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_oe_boxes_compiles_to_exact_division(launches, arch):
    compiled = [c for c in _compiled(launches, arch) if c.launch.name in _EXACT_KERNELS]
    assert {dict(c.launch.signature)["sa_ptr"] for c in compiled} == {"*" + _TL_TYPES[d]
                                                                     for d in _backend_cuda_dtypes()}
    bad = []
    for c in compiled:
        bad += [f"sm_{arch} {c.launch.label()}: {p}" for p in exactness_problems(c)]
    assert not bad, "\n".join(bad)


_OE_ROUNDING_CASE = """
import json, torch
from fastmlr.kernels import oe
from fastmlr.ops.reference import oe_boxes_ref
# Marginal along W: [0, d, hi] with d / hi = 0.74976 in fp32, which rounds to 0.75 in fp16: the reference
# keeps position 1 at alpha = 0.75 (the quotient is rounded to the map's dtype before the comparison).
d, hi = 0.751953125, 1.0029296875
sa = torch.tensor([[[[0.0, d, hi], [0.0, 0.0, 0.0]]]], dtype=torch.float16)
print(json.dumps({"triton": oe.oe_boxes(sa, 0.75).tolist(), "reference": oe_boxes_ref(sa, 0.75).tolist()}))
"""


def test_oe_boxes_fp16_quotient_is_rounded_like_the_reference_in_the_interpreter():
    """What the PTX check above asks of the GPU code, run: the interpreter follows the same Triton semantics
    (fp16 division promoted to fp32), so an unrounded quotient shows on the CPU too."""
    import json
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _OE_ROUNDING_CASE], capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["reference"] == [[[1, 2, 0, 0]]]
    assert got["triton"] == got["reference"]


def test_limit_checks_catch_what_they_claim():
    """The checks above can fail: a launch over each limit is reported."""
    launch = Launch(None, "k", (("x_ptr", "*fp32"),), (), (("num_warps", 8),))
    assert Compiled(launch, 86, "", 101376, 128, 0, 0).problems() == []
    assert "shared memory 107008 B > 101376 B" in Compiled(launch, 86, "", 107008, 128, 0, 0).problems()
    assert Compiled(launch, 80, "", 107008, 128, 0, 0).problems() == []
    assert Compiled(launch, 90, "", 0, 255, 0, 0).problems() == []  # 256 threads x 256 = 64K exactly
    wide = Launch(None, "k", (("x_ptr", "*fp32"),), (), (("num_warps", 16),))
    assert any("registers/block" in p for p in Compiled(wide, 90, "", 0, 200, 0, 0).problems())
    assert Compiled(launch, 90, "", 0, 64, 16, 0).spills() and not Compiled(launch, 90, "", 0, 64, 0, 0).spills()
    oe_launch = Launch(None, "_oe_boxes_kernel", (("sa_ptr", "*fp16"),), (), ())
    ptx = "div.full.f32 %r1, %r2, %r3;"
    problems = exactness_problems(Compiled(oe_launch, 90, ptx, 0, 32, 0, 0))
    assert len(problems) == 3, problems


if __name__ == "__main__":
    import time

    t0 = time.time()
    recorded = record_launches()
    print(f"{len(recorded)} distinct launches recorded in {time.time() - t0:.1f} s")
    for arch in ARCHS:
        t0 = time.time()
        rows = _compiled(recorded, arch)
        print(f"\nsm_{arch}: {len(rows)} compiled in {time.time() - t0:.1f} s "
              f"(limit {SMEM_PER_BLOCK[arch]} B shared/block)")
        for c in rows:
            flag = "; ".join(c.problems() + exactness_problems(c) + [c.spills()]).strip("; ") or "ok"
            print(f"  {c.shared:7d} B {c.regs:3d} regs {c.threads:4d} thr  {c.launch.label()}  {flag}")
