"""fastmlr's TensorRT plugins for the fused ONNX nodes (fastmlr.deploy.trt_plugins).

Without a GPU: the registrations and their shape functions, run against a
fake ``tensorrt.plugin`` whose shape expressions are formulas evaluated at
concrete shapes afterwards (as TensorRT resolves them per batch size); the
ahead-of-time kernels, compiled for real for sm_80/86/89/90 with Triton and
assembled with its bundled ptxas, their launch grids and integer arguments
compared with what the Python launchers launch; the ONNX node wiring; and
the engine build with a fake builder. The real engine and its parity with
PyTorch are the ``gpu`` tests at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from fakes import fake_tensorrt, fake_tensorrt_plugin, symbolic_desc
from onnx import TensorProto, helper

from fastmlr import ops
from fastmlr.artifact import probe
from fastmlr.deploy import trt_plugins as tp
from fastmlr.deploy.trt import build_trt_engine

CONTRACT = {  # the fused ONNX nodes: op type -> input names (the ONNX export's contract)
    "CarSpatialAttention": ["u", "wc", "s", "b"],
    "CarPool": ["f", "sa", "ca"],
    "SecondOrderPool": ["x"],
    "MultiPerspectiveCosine": ["v", "w"],
}
# Concrete shapes, odd so every grid has a ragged block: N, C, P, D, K.
N, C, P, D, K = 3, 5, 7, 37, 2
SHAPES = {
    "CarSpatialAttention": {"u": (N, P, D), "wc": (C, D), "s": (D,), "b": ()},
    "CarPool": {"f": (N, D, P), "sa": (N, C, P), "ca": (N, C, D)},
    "SecondOrderPool": {"x": (N, D, P)},
    "MultiPerspectiveCosine": {"v": (N, C, D), "w": (K, D)},
}


def _triton_compiles() -> str | None:
    try:
        import triton
        if triton.knobs.runtime.interpret:
            return "TRITON_INTERPRET=1: kernels are interpreted, not compiled"
        if not os.path.exists(tp._ptxas_path(90)):
            return "Triton ships no ptxas here"
    except Exception as e:  # noqa: BLE001 - whatever stops a compile here
        return f"no Triton compiler with ptxas here: {type(e).__name__}: {e}"
    return None


NO_COMPILE = _triton_compiles()
needs_compile = pytest.mark.skipif(NO_COMPILE is not None, reason=str(NO_COMPILE))


@pytest.fixture
def fake_plugins(monkeypatch):
    """A fake tensorrt with tensorrt.plugin, a GPU the probe believes in, and a fresh registration."""
    log = []
    trt = fake_tensorrt(log)
    trtp = fake_tensorrt_plugin(trt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(probe, "gpu_available", lambda: (True, "fake GPU"))
    monkeypatch.setattr(tp, "_REGISTERED", [])
    tp.register_plugins()
    return trt, trtp, log


def _descs(trtp, op, dtype):
    return [symbolic_desc(trtp, name, len(SHAPES[op][name]), dtype) for name in CONTRACT[op]]


def _torch_inputs(op, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(SHAPES[op][name], generator=g, dtype=dtype) for name in CONTRACT[op]]


def _run_op(op, tensors):
    fn = {"CarSpatialAttention": ops.car_spatial_attention, "CarPool": ops.car_pool,
          "SecondOrderPool": ops.second_order_pool, "MultiPerspectiveCosine": ops.multi_perspective_cosine}[op]
    if op == "CarPool":  # sa is an attention map in (0, 1)
        tensors = [tensors[0], tensors[1].sigmoid(), tensors[2]]
    return fn(*tensors, backend="reference")


# -- registration -----------------------------------------------------------------------------------------------
def test_every_fused_op_is_registered_under_its_onnx_name(fake_plugins, monkeypatch):
    trt, trtp, _ = fake_plugins
    assert set(trtp.REGISTRY) == {f"fastmlr::{op}" for op in CONTRACT}
    for op, inputs in CONTRACT.items():
        entry = trtp.REGISTRY[f"fastmlr::{op}"]
        assert entry["inputs"] == inputs and entry["aot_impl"] is not None
        assert getattr(trtp.op.fastmlr, op) is entry["def"] and entry["def"].register_func is entry["register"]
        assert entry["def"].aot_impl_func is entry["aot_impl"]
    # Idempotent: again in this process, and again after a reload of the module's own state.
    assert tp.register_plugins() == list(tp.PLUGIN_IDS)
    monkeypatch.setattr(tp, "_REGISTERED", [])
    assert tp.register_plugins() == list(tp.PLUGIN_IDS)
    assert len(trtp.REGISTRY) == 4


def test_registration_imports_tensorrt_only_after_the_gpu_probe(monkeypatch):
    monkeypatch.setattr(probe, "gpu_available", lambda: (False, "no driver"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(tp, "_REGISTERED", [])
    ok, why = tp.plugins_available()
    assert not ok and "no NVIDIA GPU (no driver)" in why and "tensorrt" not in sys.modules


def test_tensorrt_without_tensorrt_plugin_is_unavailable_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([]))
    monkeypatch.delitem(sys.modules, "tensorrt.plugin", raising=False)
    monkeypatch.setattr(probe, "gpu_available", lambda: (True, "fake GPU"))
    monkeypatch.setattr(tp, "_REGISTERED", [])
    ok, why = tp.plugins_available()
    assert not ok and "no tensorrt.plugin" in why and "10.9 or newer" in why


# -- shape functions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", list(CONTRACT))
def test_shape_function_gives_the_pytorch_output_shape_and_dtype(fake_plugins, op):
    trt, trtp, _ = fake_plugins
    shape_fn = trtp.REGISTRY[f"fastmlr::{op}"]["register"]
    expected = tuple(_run_op(op, _torch_inputs(op)).shape)
    for dtype in (trt.float32, trt.float16):
        out = shape_fn(*_descs(trtp, op, dtype))
        assert out.dtype == dtype
        assert tuple(e(SHAPES[op]) for e in out.shape_expr) == expected
    # Another batch size through the same expressions: the shape is symbolic in N.
    other = {k: ((N + 5,) + v[1:] if len(v) == 3 else v) for k, v in SHAPES[op].items()}
    out = shape_fn(*_descs(trtp, op, trt.float32))
    assert tuple(e(other) for e in out.shape_expr)[0] == N + 5
    with pytest.raises(ValueError, match="fp32 or fp16"):
        shape_fn(*_descs(trtp, op, trt.bfloat16))
    bad = _descs(trtp, op, trt.float32)
    bad[0] = symbolic_desc(trtp, CONTRACT[op][0], 2, trt.float32)
    with pytest.raises(ValueError, match=f"input {CONTRACT[op][0]} must have rank 3"):
        shape_fn(*bad)


# -- the ahead-of-time kernels ----------------------------------------------------------------------------------
class _Recorder:
    """Stands in for a kernel in its module: ``kernel[grid](*args, **kwargs)`` is recorded, nothing runs."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, grid, args, kwargs))
        return launch


def _launcher_launch(op, blocks, monkeypatch):
    """(grid, int args, float args) the Python launcher launches for SHAPES[op], with the plugin's tile."""
    from fastmlr.kernels import car_attention, car_pooling, mlr_extra

    log = []
    for mod, attr in ((car_attention, "_sa_fwd"), (car_pooling, "_car_pool_fwd_kernel"),
                      (mlr_extra, "_sop_mean_kernel"), (mlr_extra, "_sop_fwd_kernel"), (mlr_extra, "_mpc_fwd_kernel")):
        monkeypatch.setattr(mod, attr, _Recorder(attr, log))
    monkeypatch.setattr(car_pooling, "_POOL_GPU", dict(blocks, num_warps=4))
    for mod in (car_attention, car_pooling):
        monkeypatch.setattr(mod, "INTERPRET", False)
    monkeypatch.setattr(mlr_extra, "_blocks", lambda dtype: dict(blocks))
    t = [torch.empty(SHAPES[op][n], device="meta") for n in CONTRACT[op]]
    {"CarSpatialAttention": car_attention.car_spatial_attention_forward, "CarPool": car_pooling.car_pool_forward,
     "SecondOrderPool": mlr_extra.second_order_pool_forward,
     "MultiPerspectiveCosine": mlr_extra.multi_perspective_cosine_forward}[op](*t)
    name, grid, args, kwargs = log[-1]  # the covariance's mean launch comes first
    if callable(grid):
        grid = grid({**kwargs, **blocks})
    ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
    floats = [a for a in args if isinstance(a, float)]
    return tuple(grid), ints, floats


def _ptxas_report(ptx, arch):
    cubin, report = tp.assemble_cubin(ptx, arch)
    regs = [int(r) for r in re.findall(r"Used (\d+) registers", report)]
    spills = [int(s) for s in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    return cubin, regs, spills


@needs_compile
@pytest.mark.slow
@pytest.mark.parametrize("arch", tp.ARCHS)
@pytest.mark.parametrize("op", list(CONTRACT))
def test_aot_kernel_for_each_arch(fake_plugins, monkeypatch, op, arch):
    trt, trtp, _ = fake_plugins
    from fastmlr.kernels import trt_entry

    monkeypatch.setattr(tp, "target_arch", lambda: arch)
    descs = _descs(trtp, op, trt.float32)
    out = trtp.REGISTRY[f"fastmlr::{op}"]["register"](*descs)
    name, code, launch, extra = trtp.REGISTRY[f"fastmlr::{op}"]["aot_impl"](*descs, (out,), 0)
    name, ptx = name.decode(), code.decode()
    spec = tp.OPS[op]
    fn = getattr(trt_entry, spec.kernel)
    assert name == spec.kernel and re.search(rf"\.visible \.entry {name}\(", ptx)
    sm = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    assert re.search(rf"^\.target {sm}\b", ptx, re.MULTILINE)

    # TensorRT's argument list: input pointers, the extra int32 arguments, the output pointer; nothing after.
    params = tp.entry_params(ptx, name)
    n_in, n_extra = len(CONTRACT[op]), len(extra)
    assert [t for t, _ in params] == ["u64"] * n_in + ["u32"] * n_extra + ["u64"]
    runtime_args = [a for i, a in enumerate(fn.arg_names) if i not in fn.constexprs]
    assert len(runtime_args) == len(params)
    assert all(a.endswith("_ptr") for a in runtime_args[:n_in]) and runtime_args[-1] == "out_ptr"

    # Grid and extra arguments, evaluated at concrete shapes, are what the Python launcher launches.
    blocks, warps = tp.kernel_config(op, arch)
    grid, ints, floats = _launcher_launch(op, blocks, monkeypatch)
    assert tuple(getattr(launch, f"grid_{a}").expr(SHAPES[op]) for a in "xyz") == grid
    assert [e.expr(SHAPES[op]) for e in extra] == ints
    if op == "MultiPerspectiveCosine":
        assert floats == [tp.MPC_EPS]
    # The grid covers the output: programs x tile >= each tiled output extent.
    assert launch.block_x.expr({}) == warps * 32 and launch.grid_z.expr(SHAPES[op]) == N

    # The PTX assembles for the arch (Triton's ptxas) within one block's limits, without spills.
    cubin, regs, spills = _ptxas_report(ptx, arch)
    assert cubin[:4] == b"\x7fELF" and name.encode() in cubin
    assert regs and max(regs) <= 255 and not any(spills), (regs, spills)
    assert launch.shared_mem.expr({}) <= 48 * 1024


@needs_compile
@pytest.mark.slow
def test_fp16_kernels_load_half_precision(fake_plugins, monkeypatch):
    trt, trtp, _ = fake_plugins
    monkeypatch.setattr(tp, "target_arch", lambda: 90)
    for op in CONTRACT:
        descs = _descs(trtp, op, trt.float16)
        out = trtp.REGISTRY[f"fastmlr::{op}"]["register"](*descs)
        _, code, _, _ = trtp.REGISTRY[f"fastmlr::{op}"]["aot_impl"](*descs, (out,), 0)
        ptx = code.decode()
        assert "cvt.f32.f16" in ptx, op  # fp16 loads, upcast (exact): fp32 arithmetic
        # The output rounded to fp16, to nearest: every narrowing conversion, scalar (cvt.rn.f16.f32) or
        # packed two at a time (cvt.rn.f16x2.f32, Triton >= 3.6), whatever the spelling.
        modes = f32_to_f16_rounding(ptx)
        assert modes and set(modes) == {"rn"}, (op, modes)


# PTX ISA, "cvt": a float-to-float narrowing conversion names its rounding (.rn .rz .rm .rp, .rna and .rs for
# some packed forms); optional .ftz/.sat/.satfinite/.relu modifiers may sit around it.
_CVT_TO_F16 = re.compile(r"\bcvt((?:\.[a-z0-9]+)*?)\.f16(?:x2)?\.f32\b")
_ROUNDING = {"rn", "rz", "rm", "rp", "rna", "rs"}


def f32_to_f16_rounding(ptx: str) -> list[str]:
    """The rounding mode of each f32 -> f16 conversion in ``ptx`` ("none" where it names none)."""
    modes = []
    for m in _CVT_TO_F16.finditer(ptx):
        found = [w for w in m.group(1).split(".") if w in _ROUNDING]
        modes.append(found[0] if found else "none")
    return modes


def test_f32_to_f16_rounding_reads_every_spelling():
    ptx = """
    cvt.rn.f16.f32 %rs1, %f1;
    cvt.rn.f16x2.f32 %r7, %f3, %f2;
    cvt.rz.ftz.f16.f32 %rs2, %f4;
    cvt.rn.satfinite.relu.f16x2.f32 %r8, %f6, %f5;
    cvt.f32.f16 %f9, %rs3;
    cvt.rn.bf16.f32 %rs4, %f7;
    cvt.rni.f32.f32 %f8, %f8;
    """
    assert f32_to_f16_rounding(ptx) == ["rn", "rn", "rz", "rn"]


def _interpreting() -> bool:
    try:
        import triton

        return bool(triton.knobs.runtime.interpret)
    except ImportError:
        return False


@pytest.mark.skipif(not _interpreting(), reason="runs in the TRITON_INTERPRET=1 subprocess (test below)")
@pytest.mark.parametrize("op", list(CONTRACT))
def test_trt_entry_kernels_in_the_interpreter(op):
    """Each plugin kernel launched as TensorRT launches it (inputs, the extra arguments, output; the grid;
    the plugin's tile) computes the op: the argument order is right in meaning, not only in count."""
    import triton.language as tl

    from fastmlr.kernels import trt_entry

    spec = tp.OPS[op]
    tensors = _torch_inputs(op)
    if op == "CarPool":
        tensors[1] = tensors[1].sigmoid()
    shapes = [tuple(t.shape) for t in tensors]
    blocks, _ = tp.kernel_config(op, 90)
    consts = dict(blocks, ACC=tl.float32)
    consts.update({"CarSpatialAttention": dict(USE_LIBDEVICE=False), "CarPool": {},
                   "SecondOrderPool": dict(USE_DOT=True),
                   "MultiPerspectiveCosine": dict(USE_DOT=True, EPS=tp.MPC_EPS)}[op])
    out = torch.full(tp.output_shape(op, shapes), float("nan"))
    grid = tp.launch_grid(op, shapes, blocks, lambda a, b: -(-a // b))
    getattr(trt_entry, spec.kernel)[grid](*tensors, *tp.kernel_scalars(op, shapes), out, **consts)
    want = _run_op(op, [t.double() for t in _torch_inputs(op)])
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(_interpreting(), reason="this process runs the interpreter cases itself")
@pytest.mark.slow
def test_trt_entry_kernels_run_in_an_interpreter_subprocess(tmp_path):
    from triton_interp import run_interpreter_subprocess

    print(run_interpreter_subprocess([Path(__file__)], tmp_path, len(CONTRACT), set(),
                                     select="test_trt_entry_kernels_in_the_interpreter"))


def test_grid_covers_the_output_at_any_shape():
    """ceil division in the grid: every output element has a program, and no program is wholly idle."""
    for op in CONTRACT:
        blocks, _ = tp.kernel_config(op, 90)
        for scale in (1, 2, 9):
            shapes = [tuple(d * scale if i else d for i, d in enumerate(SHAPES[op][n])) for n in CONTRACT[op]]
            gx, gy, gz = tp.launch_grid(op, shapes, blocks, lambda a, b: -(-a // b))
            out = tp.output_shape(op, shapes)
            tile_x, tile_y = {"CarSpatialAttention": ("BLOCK_P", "BLOCK_C"), "CarPool": ("BLOCK_K", "BLOCK_C"),
                              "SecondOrderPool": ("BLOCK_J", "BLOCK_I"),
                              "MultiPerspectiveCosine": ("BLOCK_J", "BLOCK_I")}[op]
            ext_x, ext_y = (out[2], out[1])
            assert gz == out[0]
            assert gx * blocks[tile_x] >= ext_x > (gx - 1) * blocks[tile_x]
            assert gy * blocks[tile_y] >= ext_y > (gy - 1) * blocks[tile_y]


def test_trailing_parameters_are_dropped_only_when_unused():
    ptx = (".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n\t.param .u32 k_param_1,\n"
           "\t.param .u64 .ptr .global .align 1 k_param_2\n)\n{\n\tld.param.b64 %rd1, [k_param_0];\n}\n")
    stripped = tp.strip_trailing_params(ptx, "k", 2)
    assert tp.entry_params(stripped, "k") == [("u64", "k_param_0"), ("u32", "k_param_1")]
    with pytest.raises(RuntimeError, match="k_param_0 beyond TensorRT's 0 arguments is used"):
        tp.strip_trailing_params(ptx, "k", 0)


# -- the ONNX node wiring ---------------------------------------------------------------------------------------
def _fused_graph(dtype=TensorProto.FLOAT, extra_nodes=()):
    """A hand-built graph of every fused node (SRDL's CAR pair, AAMN's and MMDSR's ops)."""
    def vi(name, shape):
        return helper.make_tensor_value_info(name, dtype, list(shape))

    shapes = {"u": ("N", P, D), "wc": (C, D), "s": (D,), "b": (), "f": ("N", D, P), "ca": ("N", C, D),
              "x": ("N", D, P), "w": (K, D)}
    nodes = [
        helper.make_node("CarSpatialAttention", ["u", "wc", "s", "b"], ["sa"], domain="fastmlr", name="car_sa"),
        helper.make_node("CarPool", ["f", "sa", "ca"], ["feat"], domain="fastmlr", name="car_pool"),
        helper.make_node("SecondOrderPool", ["x"], ["cov"], domain="fastmlr", name="sop"),
        helper.make_node("MultiPerspectiveCosine", ["feat", "w"], ["sim"], domain="fastmlr", name="mpc"),
        helper.make_node("Relu", ["cov"], ["cov_relu"], name="relu"),
        *extra_nodes,
    ]
    graph = helper.make_graph(nodes, "fused", [vi(k, v) for k, v in shapes.items()],
                              [vi("sim", ("N", C, C)), vi("cov_relu", ("N", D, D))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("fastmlr", 1)])
    return model


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
def test_fused_onnx_nodes_map_to_registered_plugins(fake_plugins, dtype):
    trt, trtp, _ = fake_plugins
    model = _fused_graph(dtype)
    data, used = tp.prepare_fused_onnx(model.SerializeToString())
    assert tp.graph_op_set(model.SerializeToString()) == "fused" and used == sorted(CONTRACT)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    trt_dtype = {TensorProto.FLOAT: trt.float32, TensorProto.FLOAT16: trt.float16}
    parsed = onnx.load_from_string(data)
    for node in parsed.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain != "fastmlr":
            assert attrs == {}
            continue
        # What TensorRT's parser looks up: op type = plugin name, plugin_namespace, aot; then the input count.
        assert attrs == {"plugin_namespace": b"fastmlr", "aot": 1}
        entry = trtp.REGISTRY[f"{attrs['plugin_namespace'].decode()}::{node.op_type}"]
        assert len(node.input) == len(entry["inputs"]) and len(node.output) == 1
        if all(i in types for i in node.input):  # fed by graph inputs: the shape function keeps their dtype
            descs = [symbolic_desc(trtp, n, len(SHAPES[node.op_type][n]), trt_dtype[types[i]])
                     for n, i in zip(entry["inputs"], node.input)]
            assert entry["register"](*descs).dtype == trt_dtype[dtype]
    # The file's own nodes are untouched (the documented nodes carry no attributes).
    assert all(not n.attribute for n in model.graph.node)
    assert tp.graph_op_set(_standard_graph().SerializeToString()) == "standard"


def test_fused_graph_with_an_unknown_or_miswired_node_is_refused():
    bad = _fused_graph(extra_nodes=[helper.make_node("CarSoftmax", ["sa"], ["z"], domain="fastmlr", name="z1")])
    with pytest.raises(ValueError, match="node 'z1' is fastmlr::CarSoftmax, which has no TensorRT plugin"):
        tp.prepare_fused_onnx(bad.SerializeToString(), "m.onnx")
    wired = _fused_graph()
    del wired.graph.node[0].input[3]
    with pytest.raises(ValueError, match=r"node 'car_sa' \(fastmlr::CarSpatialAttention\) has 3 inputs .* expected 4"):
        tp.prepare_fused_onnx(wired.SerializeToString(), "m.onnx")


def _standard_graph():
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, 8, 8])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "std", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 18)])


# -- the engine build (fake builder) ----------------------------------------------------------------------------
def _install_builder(monkeypatch, with_plugin=True):
    log = []
    trt = fake_tensorrt(log)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if with_plugin:
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", fake_tensorrt_plugin(trt))
    else:
        monkeypatch.delitem(sys.modules, "tensorrt.plugin", raising=False)
    monkeypatch.setattr(probe, "gpu_available", lambda: (True, "fake GPU"))
    monkeypatch.setattr(tp, "_REGISTERED", [])
    return trt, log


def _write(tmp_path, name, model):
    path = tmp_path / name
    onnx.save(model, str(path))
    return str(path)


def test_engine_build_registers_the_plugins_and_records_the_op_set(monkeypatch, tmp_path, capsys):
    trt, log = _install_builder(monkeypatch)
    fused = _write(tmp_path, "m.fused.onnx", _fused_graph(TensorProto.FLOAT16))
    engine = build_trt_engine(fused, str(tmp_path / "m.plan"), min_batch=1, opt_batch=2, max_batch=4,
                              sidecar={"model": "srdl"})
    assert set(trt.plugin.REGISTRY) == set(tp.PLUGIN_IDS)  # registered before the parse below
    calls = {c[0]: c for c in log}
    assert calls["create_network"] == ("create_network", (1 << 0) | (1 << 1))  # STRONGLY_TYPED | PREFER_AOT
    parsed = onnx.load_from_string(calls["parse_bytes"][1])
    assert all({a.name for a in n.attribute} == {"plugin_namespace", "aot"}
               for n in parsed.graph.node if n.domain == "fastmlr")
    side = json.load(open(engine + ".json"))
    assert side["onnx_ops"] == "fused" and side["artifact"]["onnx"] == "m.fused.onnx"
    assert side["tensorrt"]["plugins"] == [f"fastmlr::{op}" for op in sorted(CONTRACT)]
    err = capsys.readouterr().err
    assert "from the fused op set with plugins CarPool, CarSpatialAttention" in err

    std = _write(tmp_path, "m.std.onnx", _standard_graph())
    log.clear()
    engine = build_trt_engine(std, str(tmp_path / "s.plan"), min_batch=1, opt_batch=1, max_batch=1,
                              sidecar={"model": "srdl"})
    assert {c[0]: c for c in log}["create_network"] == ("create_network", 1)
    side = json.load(open(engine + ".json"))
    assert side["onnx_ops"] == "standard" and side["tensorrt"]["plugins"] == []


def test_engine_build_falls_back_to_the_standard_graph_in_one_line(monkeypatch, tmp_path, capsys):
    _, log = _install_builder(monkeypatch, with_plugin=False)
    fused = _write(tmp_path, "m.fused.onnx", _fused_graph())
    std = _write(tmp_path, "m.std.onnx", _standard_graph())
    engine = build_trt_engine(fused, str(tmp_path / "m.plan"), min_batch=1, opt_batch=1, max_batch=2,
                              sidecar={"model": "srdl"}, fallback_onnx=std)
    side = json.load(open(engine + ".json"))
    assert side["onnx_ops"] == "standard" and side["artifact"]["onnx"] == "m.std.onnx"
    assert {c[0]: c for c in log}["parse"][1] == len(open(std, "rb").read())
    err = capsys.readouterr().err.splitlines()
    fallback = [line for line in err if "fused plugins unavailable" in line]
    assert len(fallback) == 1 and "no tensorrt.plugin" in fallback[0] and "m.std.onnx" in fallback[0]
    with pytest.raises(probe.TRTUnavailable, match="has fastmlr's fused nodes, but their TensorRT plugins"):
        build_trt_engine(fused, str(tmp_path / "n.plan"), min_batch=1, opt_batch=1, max_batch=2, sidecar={})


# -- on a GPU host with TensorRT ----------------------------------------------------------------------------------
def _car_graph(dtype):
    def vi(name, shape):
        return helper.make_tensor_value_info(name, dtype, list(shape))

    nodes = [helper.make_node("CarSpatialAttention", ["u", "wc", "s", "b"], ["sa"], domain="fastmlr"),
             helper.make_node("CarPool", ["f", "sa", "ca"], ["feat"], domain="fastmlr"),
             helper.make_node("SecondOrderPool", ["f"], ["cov"], domain="fastmlr"),
             helper.make_node("MultiPerspectiveCosine", ["feat", "w"], ["sim"], domain="fastmlr")]
    inputs = [vi("u", ("N", P, D)), vi("wc", (C, D)), vi("s", (D,)), vi("b", ()), vi("f", ("N", D, P)),
              vi("ca", ("N", C, D)), vi("w", (K, D))]
    outputs = [vi("sa", ("N", C, P)), vi("feat", ("N", C, D)), vi("cov", ("N", D, D)), vi("sim", ("N", C, C))]
    return helper.make_model(helper.make_graph(nodes, "car", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("fastmlr", 1)])


def _build_and_run(trt, onnx_bytes, feeds, max_batch):
    """Build an engine from ``onnx_bytes`` with the plugins; run it on ``feeds`` (CUDA tensors)."""
    tp.register_plugins()
    data, _ = tp.prepare_fused_onnx(onnx_bytes)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS"):
        flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        flags |= 0 if flag is None else 1 << int(flag)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(data), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = tuple(feeds[inp.name].shape)
        if len(inp.shape) and inp.shape[0] == -1:
            profile.set_shape(inp.name, (1, *shape[1:]), shape, (max_batch, *shape[1:]))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    ctx = engine.create_execution_context()
    outs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            ctx.set_input_shape(name, tuple(feeds[name].shape))
            ctx.set_tensor_address(name, feeds[name].data_ptr())
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            outs[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=next(iter(feeds.values())).dtype,
                                     device="cuda")
            ctx.set_tensor_address(name, outs[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return bytes(plan), outs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fused_engine_matches_pytorch_on_gpu(dtype, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed on this GPU host")
    g = torch.Generator(device="cuda").manual_seed(0)
    n = 4

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    feeds = {"u": r(n, P, D, scale=0.5), "wc": r(C, D), "s": r(D, scale=0.2), "b": r(), "f": r(n, D, P),
             "ca": r(n, C, D), "w": r(K, D)}
    onnx_dtype = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.FLOAT16
    plan, outs = _build_and_run(trt, _car_graph(onnx_dtype).SerializeToString(), feeds, max_batch=8)
    f64 = {k: v.double() for k, v in feeds.items()}
    with ops.use_backend("reference"):
        sa = ops.car_spatial_attention(f64["u"], f64["wc"], f64["s"], f64["b"])
        feat = ops.car_pool(f64["f"], sa, f64["ca"])
        ref = {"sa": sa, "feat": feat, "cov": ops.second_order_pool(f64["f"]),
               "sim": ops.multi_perspective_cosine(feat, f64["w"])}
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, want in ref.items():
        got = outs[name].double()
        assert (got - want).abs().max() <= tol * max(1.0, want.abs().max().item()), name
    # The engine runs without Python plugins: trtexec loads it and runs it.
    trtexec = shutil.which("trtexec")
    if trtexec:
        path = tmp_path / "car.plan"
        path.write_bytes(plan)
        shapes = ",".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in feeds.items() if v.dim() == 3)
        run = subprocess.run([trtexec, f"--loadEngine={path}", f"--shapes={shapes}", "--iterations=3"],
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


@pytest.mark.gpu
def test_plugin_kernels_compile_for_this_gpu():
    """The AOT compile for the local GPU's arch (what an engine build runs first)."""
    pytest.importorskip("triton")
    arch = tp.target_arch()
    for op, spec in tp.OPS.items():
        k = tp.compile_kernel(op, ("fp16",) * (len(spec.inputs) + 1), arch)
        assert len(tp.entry_params(k.ptx, k.name)) == k.num_args
    assert arch >= 80


@pytest.mark.slow
@pytest.mark.parametrize("with_plugin", [True, False], ids=["plugins", "no-plugins"])
def test_cli_trt_builds_the_fused_graph_when_the_plugins_register(monkeypatch, tmp_path, capsys, with_plugin):
    from fastmlr import export as ex
    from fastmlr.deploy import onnx as donnx
    from fastmlr.artifact.contract import write_sidecar

    _, log = _install_builder(monkeypatch, with_plugin=with_plugin)
    asked = []
    real_export = donnx.export_onnx

    def export_onnx(model, path, size, **kw):
        asked.append(kw.get("onnx_ops", "standard"))
        if kw.get("onnx_ops") != "fused":
            return real_export(model, path, size, **kw)
        onnx.save(_fused_graph(TensorProto.FLOAT16), path)  # stands in for the fused export
        write_sidecar(path, kw["sidecar"], artifact={"format": "onnx"}, onnx_ops="fused")
        return path

    monkeypatch.setattr(donnx, "export_onnx", export_onnx)  # where the export pipeline finds its builder
    engine = tmp_path / "m.plan"
    rc = ex.main(["--model", "baseline", "--num-classes", "3", "--backbone", "resnet18", "--image-size", "32",
                  "--trt", str(engine), "--max-batch", "2", "--opt-batch", "2", "--no-verify"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    side = json.load(open(str(engine) + ".json"))
    fallback = [line for line in out.splitlines() if "fused plugins unavailable" in line]
    if with_plugin:
        assert asked == ["fused"] and side["onnx_ops"] == "fused" and side["artifact"]["onnx"] == "m.fused.fp16.onnx"
        assert not fallback and "from the fused op set" in err
    else:
        assert asked == [] and side["onnx_ops"] == "standard" and side["artifact"]["onnx"] == "m.fp16.onnx"
        assert len(fallback) == 1 and "no tensorrt.plugin" in fallback[0] and "from the standard op set" in err
