"""NVIDIA's real ``tensorrt.plugin`` package over a minimal stand-in for the compiled ``tensorrt`` module.

``tensorrt.plugin`` (quickly deployable plugins: ``register``, ``aot_impl``, ``_validate.py``, the
``TensorDesc``/``ShapeExpr``/``KernelLaunchParams`` classes) is plain Python inside the
``tensorrt-cu13-bindings`` wheel, which installs from PyPI; only the compiled ``tensorrt`` module it
imports cannot load here (its libraries come from NVIDIA's index). :func:`real_tensorrt_plugin`
extracts the package from the wheel (``make setup`` downloads it with ``pip download``; the
fixture downloads it when missing) and imports it under ``tensorrt.plugin`` over :func:`shim`,
which provides what the package touches when it imports and registers: enums, base classes,
the plugin registry, and an expression builder whose dimension expressions are integers (so the
package's own ``get_output_shapes`` and ``get_launch_params`` evaluate our functions on concrete
shapes, as TensorRT does once the shapes are known).
"""

from __future__ import annotations

import enum
import glob
import importlib
import importlib.machinery
import os
import subprocess
import sys
import types
import zipfile

WHEEL = "tensorrt-cu13-bindings==11.4.0.106"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_DIR = os.environ.get("FASTMLR_WHEEL_DIR", os.path.join(ROOT, ".cache", "wheels"))


def wheel_path(download: bool = True) -> str | None:
    """The bindings wheel in :data:`WHEEL_DIR`, downloaded from PyPI (``pip download --no-deps``) when absent."""
    pattern = os.path.join(WHEEL_DIR, "tensorrt_cu13_bindings-" + WHEEL.split("==")[1] + "-*.whl")
    found = sorted(glob.glob(pattern))
    if not found and download:
        os.makedirs(WHEEL_DIR, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", WHEEL, "-d", WHEEL_DIR],
                       capture_output=True, text=True, timeout=300, check=False)
        found = sorted(glob.glob(pattern))
    return found[-1] if found else None


def extract_plugin_package(wheel: str, dest: str) -> str:
    """Unpack the wheel's ``tensorrt_bindings/plugin/*.py`` into ``dest``; returns the package's parent folder."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith("tensorrt_bindings/plugin/") and n.endswith(".py")]
        if not names:
            raise RuntimeError(f"{wheel} has no tensorrt_bindings/plugin/*.py")
        for n in names:
            zf.extract(n, dest)
    return os.path.join(dest, "tensorrt_bindings")


# -- the stand-in for the compiled module ------------------------------------------------------------------------
class DimensionOperation(enum.IntEnum):
    SUM, PROD, MAX, MIN, SUB, EQUAL, LESS, FLOOR_DIV, CEIL_DIV = range(9)


_OPS = {
    DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
    DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
    DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
    DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b),
}


class IDimensionExpr:
    """A dimension expression whose value is known (TensorRT's are symbolic until the shapes are)."""

    def __init__(self, value: int):
        if not isinstance(value, int):
            raise TypeError(f"a dimension expression needs an int, got {type(value).__name__}")
        self.value = value

    def is_constant(self):
        return True

    def get_constant_value(self):
        return self.value

    def is_size_tensor(self):
        return False


class IExprBuilder:
    """``constant(int)`` and ``operation(op, a, b)`` over :class:`IDimensionExpr`, as TensorRT's builder offers."""

    def constant(self, value):
        return IDimensionExpr(int(value))

    def operation(self, op, a, b):
        if not (isinstance(a, IDimensionExpr) and isinstance(b, IDimensionExpr)):
            raise TypeError(f"operation {op!r} takes two IDimensionExpr, got {type(a).__name__}, {type(b).__name__}")
        return IDimensionExpr(int(_OPS[DimensionOperation(op)](a.value, b.value)))


class DimsExprs(list):
    def __init__(self, n):
        super().__init__([None] * n)


class Dims(tuple):
    MAX_DIMS = 8  # nvinfer1::Dims::MAX_DIMS


class _Base:
    def __init__(self, *a, **k):
        pass


class PluginRegistry:
    """TensorRT's plugin registry: one creator per (name, version, namespace); a second is refused (False)."""

    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace):
        key = (creator.name, str(creator.plugin_version), namespace)
        if key in self.creators:
            return False
        self.creators[key] = creator
        return True

    def get_creator(self, name, version, namespace=""):
        return self.creators.get((name, str(version), namespace))


def shim() -> types.ModuleType:
    """A ``tensorrt`` module with what ``tensorrt.plugin`` needs to import, register, and compute shapes/launches."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None, is_package=True)
    trt.__version__ = "11.4.0.106 (shim over the real tensorrt.plugin)"
    trt.DataType = enum.IntEnum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64 INT4 FP4 E8M0", start=0)
    trt.float32, trt.float16, trt.int8, trt.int32 = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT8,
                                                     trt.DataType.INT32)
    trt.bfloat16, trt.int64, trt.bool, trt.uint8 = (trt.DataType.BF16, trt.DataType.INT64, trt.DataType.BOOL,
                                                    trt.DataType.UINT8)
    trt.fp8, trt.int4 = trt.DataType.FP8, trt.DataType.INT4
    trt.PluginFieldType = enum.IntEnum(
        "PluginFieldType", "FLOAT16 FLOAT32 FLOAT64 INT8 INT16 INT32 CHAR DIMS UNKNOWN BF16 INT64 FP8 INT4", start=0)
    trt.TensorFormat = enum.IntEnum("TensorFormat", "LINEAR CHW2 HWC8 CHW4 CHW16 CHW32", start=0)
    trt.TensorRTPhase = enum.IntEnum("TensorRTPhase", "BUILD RUNTIME", start=0)
    trt.PluginArgType = enum.IntEnum("PluginArgType", "INT", start=0)
    trt.PluginArgDataType = enum.IntEnum("PluginArgDataType", "INT8 INT16 INT32", start=0)
    trt.QuickPluginCreationRequest = enum.IntEnum(
        "QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT", start=0)
    trt.DimensionOperation = DimensionOperation
    trt.IDimensionExpr, trt.IExprBuilder, trt.DimsExprs, trt.Dims = IDimensionExpr, IExprBuilder, DimsExprs, Dims
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickAOTBuild",
                 "IPluginV3QuickRuntime", "IPluginCreatorV3Quick", "ISymExpr", "ITensor", "PluginTensorDesc",
                 "DynamicPluginTensorDesc", "PluginField", "PluginFieldCollection"):
        setattr(trt, name, type(name, (_Base,), {}))

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, *a):
            pass

        def log(self, severity, msg):
            pass

    trt.Logger = Logger
    registry = PluginRegistry()
    trt.get_plugin_registry = lambda: registry
    return trt


def real_tensorrt_plugin(wheel: str, dest: str, modules: dict):
    """(shim tensorrt, the real tensorrt.plugin) imported fresh into ``modules`` (``sys.modules``, or a patch of it)."""
    pkg = extract_plugin_package(wheel, dest)
    for name in [n for n in modules if n == "tensorrt" or n.startswith("tensorrt.")]:
        del modules[name]
    trt = shim()
    trt.__path__ = [pkg]
    modules["tensorrt"] = trt
    trtp = importlib.import_module("tensorrt.plugin")
    trt.plugin = trtp
    return trt, trtp
