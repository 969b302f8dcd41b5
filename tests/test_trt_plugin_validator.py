"""fastmlr's TensorRT plugin registration through NVIDIA's own ``tensorrt.plugin`` (not our fake).

The package comes from the ``tensorrt-cu13-bindings`` wheel (PyPI; ``make setup`` downloads it, or the
fixture does); only the compiled ``tensorrt`` module under it is stood in for (tests/trt_shim.py).
Registration must pass its validators (``register``, ``aot_impl``); a plugin it creates must give the
PyTorch op's output shape through its own ``get_output_shapes`` and a launch through its own
``get_launch_params``, as TensorRT calls them while building an engine.
"""

import sys

import pytest
import torch

import trt_shim
from fastmlr.artifact import probe
from fastmlr.deploy import trt_plugins as tp
from test_trt_plugins import CONTRACT, NO_COMPILE, SHAPES, _run_op, _torch_inputs

WHEEL = trt_shim.wheel_path()
pytestmark = pytest.mark.skipif(WHEEL is None, reason=f"{trt_shim.WHEEL} could not be downloaded into "
                                                      f"{trt_shim.WHEEL_DIR} (make setup does it)")


@pytest.fixture
def real_plugin(monkeypatch, tmp_path):
    """(shim tensorrt, real tensorrt.plugin, its _lib module), fresh for each test (it keeps a global registry)."""
    def ours():
        return [n for n in sys.modules if n == "tensorrt" or n.startswith("tensorrt.")]

    for name in ours():
        monkeypatch.delitem(sys.modules, name)
    trt, trtp = trt_shim.real_tensorrt_plugin(WHEEL, str(tmp_path), sys.modules)
    monkeypatch.setattr(probe, "gpu_available", lambda: (True, "a GPU, for the registration's probe"))
    monkeypatch.setattr(tp, "_REGISTERED", [])
    yield trt, trtp, sys.modules["tensorrt.plugin._lib"]
    for name in ours():  # then monkeypatch puts back whatever was there before
        del sys.modules[name]


def test_every_fused_op_registers_through_nvidias_validators(real_plugin):
    trt, trtp, lib = real_plugin
    assert tp.register_plugins() == list(tp.PLUGIN_IDS)
    for op, inputs in CONTRACT.items():
        pdef = lib.QDP_REGISTRY[f"fastmlr::{op}"]
        assert pdef.input_tensor_names == inputs and pdef.num_outputs == 1 and pdef.input_attrs == {}
        assert pdef.aot_impl_func is not None and pdef.aot_impl_attr_names == []
        assert getattr(trtp.op.fastmlr, op) is pdef
        assert trt.get_plugin_registry().get_creator(op, "1", "fastmlr") is not None  # registered eagerly


def test_a_refused_aot_implementation_is_one_reason_and_a_retry_completes_it(real_plugin, monkeypatch):
    """A failure after ``register`` (which cannot be undone) must not leave ops without an AOT implementation."""
    trt, trtp, lib = real_plugin
    real_aot_impl = trtp.aot_impl
    monkeypatch.setattr(trtp, "aot_impl", lambda plugin_id: (_ for _ in ()).throw(ValueError("refused by a test")))
    with pytest.raises(probe.TRTUnavailable, match="tensorrt.plugin refused fastmlr::CarSpatialAttention: refused "
                                                   "by a test"):
        tp.register_plugins()
    assert lib.QDP_REGISTRY["fastmlr::CarSpatialAttention"].aot_impl_func is None  # half registered
    monkeypatch.setattr(trtp, "aot_impl", real_aot_impl)
    assert tp.register_plugins() == list(tp.PLUGIN_IDS)
    assert all(lib.QDP_REGISTRY[f"fastmlr::{op}"].aot_impl_func is not None for op in CONTRACT)


def _aot_plugin(trt, op):
    creator = trt.get_plugin_registry().get_creator(op, "1", "fastmlr")
    return creator.create_plugin(op, "fastmlr", [], trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)


def _dims(trt, shape):
    exprs = trt.DimsExprs(len(shape))
    for i, d in enumerate(shape):
        exprs[i] = trt.IExprBuilder().constant(d)
    return exprs


@pytest.mark.parametrize("op", list(CONTRACT))
def test_the_plugin_gives_the_pytorch_output_shape_through_tensorrt_plugin(real_plugin, op):
    trt, trtp, _ = real_plugin
    tp.register_plugins()
    plugin = _aot_plugin(trt, op)
    shapes = [SHAPES[op][n] for n in CONTRACT[op]]
    for dtype in (trt.DataType.FLOAT, trt.DataType.HALF):
        assert plugin.get_output_data_types([dtype] * len(shapes), [len(s) for s in shapes]) == [dtype]
    out = plugin.get_output_shapes([_dims(trt, s) for s in shapes], [], trt.IExprBuilder())
    assert [tuple(e.get_constant_value() for e in o) for o in out] == [tuple(_run_op(op, _torch_inputs(op)).shape)]
    with pytest.raises(ValueError, match="fp32 or fp16"):
        plugin.get_output_data_types([trt.DataType.BF16] * len(shapes), [len(s) for s in shapes])


@pytest.mark.skipif(NO_COMPILE is not None, reason=str(NO_COMPILE))
@pytest.mark.parametrize("op", list(CONTRACT))
def test_the_plugin_launch_through_tensorrt_plugin(real_plugin, monkeypatch, op):
    """get_launch_params as TensorRT calls it (shapes known): the kernel, its grid, block and integer arguments."""
    import types

    trt, trtp, _ = real_plugin
    monkeypatch.setattr(tp, "target_arch", lambda: 86)
    tp.register_plugins()
    plugin = _aot_plugin(trt, op)
    shapes = [SHAPES[op][n] for n in CONTRACT[op]]
    out_shape = tuple(_run_op(op, _torch_inputs(op)).shape)
    plugin.get_output_data_types([trt.DataType.FLOAT] * len(shapes), [len(s) for s in shapes])
    plugin.get_output_shapes([_dims(trt, s) for s in shapes], [], trt.IExprBuilder())
    plugin.set_tactic(0)

    def io(shape):
        d = trt.DynamicPluginTensorDesc()
        d.desc = types.SimpleNamespace(type=trt.DataType.FLOAT, format=trt.TensorFormat.LINEAR, scale=1.0,
                                       dims=trt.Dims(shape))
        return d

    in_out = [io(s) for s in shapes] + [io(out_shape)]
    launch, extra = types.SimpleNamespace(), type("Setter", (list,), {"nbSymExprs": 0})([None] * 16)
    plugin.get_launch_params([_dims(trt, s) for s in shapes], in_out, len(shapes), launch, extra, trt.IExprBuilder())
    k = tp.compile_kernel(op, ("fp32",) * (len(shapes) + 1), 86)
    grid = tp.launch_grid(op, shapes, k.blocks, lambda a, b: -(-a // b))
    assert tuple(getattr(launch, f"grid_{a}").expr.value for a in "xyz") == grid
    assert (launch.block_x.expr.value, launch.shared_mem.expr.value) == (k.num_warps * 32, k.shared)
    assert extra.nbSymExprs == k.num_args - len(shapes) - 1
    assert [e.expr.value for e in extra[:extra.nbSymExprs]] == tp.kernel_scalars(op, shapes)
    name, code = plugin.get_kernel([d.desc for d in in_out[:-1]], [in_out[-1].desc])
    assert name == k.name.encode() and code == k.code() and f".entry {k.name}(".encode() in code
    assert out_shape[0] == shapes[0][0] and torch.Size(out_shape).numel() > 0


@pytest.mark.parametrize("annotation,message", [
    (None, "No return annotation found for aot_impl function"),
    (tuple[bytes, bytes], "Return annotation is"),
    ("launch-int", "Argument at index 2 of return annotation is .* Expected 'tensorrt.plugin.KernelLaunchParams'"),
], ids=["none", "two-items", "int-launch"])
def test_the_fake_refuses_what_the_real_validator_refuses(real_plugin, annotation, message):
    """tests/fakes.py's tensorrt.plugin stands in where the real one is not loaded: it must refuse the same."""
    import inspect

    from fakes import fake_tensorrt, fake_tensorrt_plugin

    real = real_plugin[1]
    fake = fake_tensorrt_plugin(fake_tensorrt([]))
    for trtp in (real, fake):
        P = inspect.Parameter

        def shape(x):
            return x

        def aot(x, outputs, tactic):
            return None

        shape.__signature__ = inspect.Signature([P("x", P.POSITIONAL_OR_KEYWORD, annotation=trtp.TensorDesc)],
                                                return_annotation=trtp.TensorDesc)
        ret = {None: inspect.Signature.empty, "launch-int": tuple[bytes, bytes, int, trtp.SymIntExprs]}.get(
            annotation, annotation)
        aot.__signature__ = inspect.Signature([P(n, P.POSITIONAL_OR_KEYWORD) for n in ("x", "outputs", "tactic")],
                                              return_annotation=ret)
        trtp.register("probe::Op")(shape)
        with pytest.raises(ValueError, match=message):
            trtp.aot_impl("probe::Op")(aot)
