"""Small fakes in real file formats, shared by several test files."""

import os

import numpy as np

from fastmlr.gpucheck.synthetic import write_fmnist

N_TRAIN_PER_CLASS, N_VAL_PER_CLASS = 3, 2
TRAIN_BASE, VAL_BASE = 20, 150  # photo k of a split is filled with BASE + k


def write_fake_fmnist(folder, gz=True):
    """Tiny Fashion-MNIST: photo k of a split is uniformly BASE + k, labels k % 10 (tests read the values back)."""
    images, labels = {}, {}
    for split, per_class, base in (("train", N_TRAIN_PER_CLASS, TRAIN_BASE), ("val", N_VAL_PER_CLASS, VAL_BASE)):
        n = 10 * per_class
        labels[split] = np.arange(n) % 10
        images[split] = (base + np.arange(n))[:, None, None] * np.ones((1, 28, 28))
    return write_fmnist(folder, images, labels, gz)


REAL_FMNIST = "/usr/share/datasets/fashion-mnist"


def fmnist_root(tmp_factory):
    """The real Fashion-MNIST idx folder when installed (make data), else a tiny fake one."""
    if os.path.exists(os.path.join(REAL_FMNIST, "train-images-idx3-ubyte.gz")):
        return REAL_FMNIST
    return write_fake_fmnist(str(tmp_factory.mktemp("fmnist")))


class FakeTRT:
    """The parts of the ``tensorrt`` module a runner reads: enums only (no GPU, no engine file)."""

    class DataType:
        FLOAT, HALF, INT32 = "DataType.FLOAT", "DataType.HALF", "DataType.INT32"

    class TensorIOMode:
        INPUT, OUTPUT = "TensorIOMode.INPUT", "TensorIOMode.OUTPUT"


class FakeEngine:
    """An ``ICudaEngine`` built by fastmlr.deploy.trt: ``images`` [-1, 3, S, S] -> ``logits``, ``probs`` [-1, C].

    ``tensors``: name -> (mode, dtype, shape), to make a wrong engine; ``profile``: (min, opt, max) batch.
    """

    def __init__(self, image_size=64, classes=10, profile=(1, 4, 8), tensors=None, profiles=1):
        trt = FakeTRT
        self.tensors = tensors or {
            "images": (trt.TensorIOMode.INPUT, trt.DataType.FLOAT, (-1, 3, image_size, image_size)),
            "logits": (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, (-1, classes)),
            "probs": (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, (-1, classes)),
        }
        self.profile, self.num_optimization_profiles = profile, profiles
        self.image_size = image_size

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile):
        assert profile < self.num_optimization_profiles
        tail = tuple(self.tensors[name][2][1:])
        return [(b, *tail) for b in self.profile]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    """An ``IExecutionContext``: ``set_input_shape`` answers False outside the profile (as TensorRT does),
    ``set_tensor_address`` False for a null pointer or an unknown name; ``refuse`` forces False for a name."""

    def __init__(self, engine, refuse=()):
        self.engine, self.refuse, self.shapes, self.addresses = engine, set(refuse), {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        ok = name in self.engine.tensors and name not in self.refuse and lo <= shape[0] <= hi
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def get_tensor_shape(self, name):
        shape = self.engine.get_tensor_shape(name)
        n = self.shapes.get("images", (-1,))[0]
        return (n, *shape[1:])

    def set_tensor_address(self, name, ptr):
        ok = name in self.engine.tensors and name not in self.refuse and ptr != 0
        if ok:
            self.addresses[name] = ptr
        return ok


# -- TensorRT's builder, parser and tensorrt.plugin, as fakes that record what they get ---------------------------
def fake_tensorrt(log: list, *, size: int = 64, strongly_typed_flag: bool = True, parse_ok: bool = True):
    """A ``tensorrt`` module whose builder, parser and config append their calls to ``log``."""
    import importlib.machinery
    import types

    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # what find_spec-based probes expect
    trt.__version__ = "11.0.fake" if not strongly_typed_flag else "10.9.fake"
    trt.float32, trt.float16, trt.bfloat16, trt.int32 = "DataType.FLOAT", "DataType.HALF", "DataType.BF16", "DataType.INT32"

    class Logger:
        WARNING, VERBOSE = "W", "V"

        def __init__(self, level):
            log.append(("Logger", level))

    flags = {"PREFER_AOT_PYTHON_PLUGINS": 1, "PREFER_JIT_PYTHON_PLUGINS": 2}
    if strongly_typed_flag:
        flags["STRONGLY_TYPED"] = 0  # TensorRT 10's value; TensorRT 11 drops EXPLICIT_BATCH and FP16
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.BuilderFlag = types.SimpleNamespace(TF32=7, REFIT=1)  # no FP16: touching it raises AttributeError
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Tensor:
        name, shape = "images", (-1, 3, size, size)

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return Tensor()

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            log.append(("parse", len(data)))
            log.append(("parse_bytes", bytes(data)))
            return parse_ok

        def get_error(self, i):
            return "In node 3: unsupported op"

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timed"

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            log.append(("set_shape", name, tuple(mn), tuple(opt), tuple(mx)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            log.append(("workspace", pool, size))

        def add_optimization_profile(self, p):
            log.append(("add_profile",))

        def create_timing_cache(self, data):
            log.append(("create_timing_cache", bytes(data)))
            self._cache = Cache(bytes(data))
            return self._cache

        def set_timing_cache(self, cache, ignore_mismatch):
            log.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self._cache

        def set_flag(self, flag):
            log.append(("set_flag", flag))

    class Builder:
        def __init__(self, logger):
            log.append(("Builder",))

        def create_network(self, flags):
            log.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log.append(("build",))
            return b"PLAN-BYTES"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


class Expr:
    """A stand-in for TensorRT's symbolic shape expressions: a formula over input dims, evaluated later.

    ``Expr.dim("u", 1)`` is dimension 1 of input ``u``; ``+ - * //`` and
    :func:`cdiv` build formulas; ``expr(env)`` evaluates one with ``env`` mapping
    each input name to a concrete shape. Like the real ones, an expression has
    no truth value (code that branches on a shape cannot be symbolic).
    """

    def __init__(self, fn, text):
        self.fn, self.text = fn, text

    @staticmethod
    def dim(tensor, i):
        return Expr(lambda env: int(env[tensor][i]), f"{tensor}[{i}]")

    @staticmethod
    def of(v):
        if isinstance(v, Expr):
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"shape expressions combine with ints, got {type(v).__name__}")
        return Expr(lambda env: v, str(v))

    def _op(self, other, f, sym, swap=False):
        a, b = (Expr.of(other), self) if swap else (self, Expr.of(other))
        return Expr(lambda env: f(a.fn(env), b.fn(env)), f"({a.text}{sym}{b.text})")

    def __add__(self, o): return self._op(o, lambda x, y: x + y, "+")
    def __radd__(self, o): return self._op(o, lambda x, y: x + y, "+", True)
    def __sub__(self, o): return self._op(o, lambda x, y: x - y, "-")
    def __mul__(self, o): return self._op(o, lambda x, y: x * y, "*")
    def __rmul__(self, o): return self._op(o, lambda x, y: x * y, "*", True)
    def __floordiv__(self, o): return self._op(o, lambda x, y: x // y, "//")

    def __bool__(self):
        raise TypeError(f"a shape expression ({self.text}) has no truth value")

    def __call__(self, env) -> int:
        return self.fn(env)

    def __repr__(self):
        return self.text


def fake_tensorrt_plugin(trt):
    """A ``tensorrt.plugin`` for ``trt`` whose decorators check signatures as TensorRT's do and record them.

    ``plugin.REGISTRY[plugin_id]`` holds the registered shape function, its
    input names, the AOT implementation and the plugin's definition (what
    ``plugin.op.NS.NAME`` is). The decorators enforce what the real package's
    validators do (tests/test_trt_plugin_validator.py runs the real one):
    TensorDesc annotations, the input schema, and the AOT implementation's
    4-tuple return annotation.
    """
    import importlib.machinery
    import inspect
    import types
    import typing

    trtp = types.ModuleType("tensorrt.plugin")
    trtp.__spec__ = importlib.machinery.ModuleSpec("tensorrt.plugin", None)
    trtp.REGISTRY = {}
    trtp.op = types.SimpleNamespace()

    class ShapeExprs(list):
        def numel(self):
            out = Expr.of(1)
            for e in self:
                out = out * e
            return out

    class TensorDesc:
        def __init__(self, shape_expr=None, dtype=None):
            self.shape_expr, self.dtype = ShapeExprs(shape_expr or ()), dtype

        @property
        def ndim(self):
            return len(self.shape_expr)

    class SymInt32:
        def __init__(self, value):
            self.expr = Expr.of(value)

    class SymExprs(list):
        pass

    class SymIntExprs(SymExprs):
        @classmethod
        def from_tuple(cls, items):
            items = list(items)
            for it in items:
                if not isinstance(it, SymInt32):
                    raise TypeError(f"Extra args must be SymInt32, got {type(it).__name__}")
            return cls(items)

    class KernelLaunchParams:
        _FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

        def __init__(self):
            for f in self._FIELDS:
                setattr(self, f, 1 if f != "shared_mem" else 0)

        def __setattr__(self, name, value):
            if name not in self._FIELDS:
                raise AttributeError(f"KernelLaunchParams object has no attribute '{name}'")
            self.__dict__[name] = SymInt32(value)

    def cdiv(a, b):
        return Expr.of(a)._op(b, lambda x, y: -(-x // y), " cdiv ")

    def from_shape_expr(shape, dtype):
        return TensorDesc(list(shape), dtype)

    class PluginDef(types.SimpleNamespace):
        """What tensorrt.plugin keeps per plugin (trtp.op.NS.NAME): the register function, later the AOT one."""

    def register(plugin_id):
        def deco(fn):
            ns, name = plugin_id.split("::")
            if hasattr(getattr(trtp.op, ns, types.SimpleNamespace()), name):
                raise ValueError(f"'_Op' already has a defintion for '{name}'")
            sig = inspect.signature(fn)
            for pname, p in sig.parameters.items():
                if not (inspect.isclass(p.annotation) and issubclass(p.annotation, TensorDesc)):
                    raise ValueError(f"Argument {pname} is not annotated as TensorDesc: {p.annotation!r}")
            ret = sig.return_annotation
            if not (inspect.isclass(ret) and issubclass(ret, TensorDesc)) and typing.get_origin(ret) is not tuple:
                raise ValueError(f"Return annotation must be TensorDesc or Tuple[TensorDesc], got {ret!r}")
            if not hasattr(trtp.op, ns):
                setattr(trtp.op, ns, types.SimpleNamespace())
            pdef = PluginDef(register_func=fn, aot_impl_func=None, input_tensor_names=list(sig.parameters))
            setattr(getattr(trtp.op, ns), name, pdef)
            trtp.REGISTRY[plugin_id] = {"register": fn, "inputs": list(sig.parameters), "aot_impl": None, "def": pdef}
            return fn
        return deco

    def _check_aot_annotations(sig, inputs):
        """What tensorrt/plugin/_validate.py (_validate_aot_impl, TensorRT 10.8+) enforces on the annotations."""
        for name, p in sig.parameters.items():
            ann = p.annotation
            if ann is inspect.Parameter.empty:
                continue
            if name == "outputs":
                if typing.get_origin(ann) is not tuple or not all(
                        inspect.isclass(a) and issubclass(a, TensorDesc) for a in typing.get_args(ann)):
                    raise ValueError(f"'outputs' should be of type Tuple[TensorDesc]. Received {ann}.")
            elif name == "tactic":
                if not (inspect.isclass(ann) and issubclass(ann, int)):
                    raise ValueError("'tactic' input argument should be an int")
            elif not (inspect.isclass(ann) and issubclass(ann, TensorDesc) and name in inputs):
                raise ValueError(f"Unexpected attribute '{name}' specified in aot_impl function.")
        ret = sig.return_annotation
        if ret is inspect.Parameter.empty:
            raise ValueError(f"No return annotation found for aot_impl function. Received signature {sig}.")
        args = typing.get_args(ret)
        if typing.get_origin(ret) is not tuple or len(args) != 4:
            raise ValueError(f"Return annotation is {ret}. Expected tuple[str | bytes, str | bytes, "
                             "tensorrt.plugin.KernelLaunchParams, tensorrt.plugin.SymIntExprs].")
        for i in (0, 1):
            union = typing.get_origin(args[i]) in (typing.Union, types.UnionType)
            if any(a not in (str, bytes) for a in (typing.get_args(args[i]) if union else (args[i],))):
                raise ValueError(f"Return annotation for argument at {i} is '{args[i]}'. Expected 'str' or 'bytes'.")
        if not (inspect.isclass(args[2]) and issubclass(args[2], KernelLaunchParams)):
            raise ValueError(f"Argument at index 2 of return annotation is '{args[2]}'. "
                             "Expected 'tensorrt.plugin.KernelLaunchParams'.")
        if not (inspect.isclass(args[3]) and issubclass(args[3], SymExprs)):
            raise ValueError(f"Argument at index 3 of return annotation is '{args[3]}'. "
                             "Expected a descendent of tensorrt.plugin.SymExprs.")

    def aot_impl(plugin_id):
        """The checks of tensorrt.plugin's _validate_aot_impl (11.4): the schema, then a 4-tuple return annotation."""
        def deco(fn):
            if plugin_id not in trtp.REGISTRY:
                raise ValueError(f"Plugin {plugin_id} is not registered.")
            expected = trtp.REGISTRY[plugin_id]["inputs"] + ["outputs", "tactic"]
            sig = inspect.signature(fn)
            got = list(sig.parameters)
            if got != expected:
                raise ValueError(f"aot_impl signature {got} does not match the expected schema {expected}")
            _check_aot_annotations(sig, trtp.REGISTRY[plugin_id]["inputs"])
            trtp.REGISTRY[plugin_id]["aot_impl"] = fn
            trtp.REGISTRY[plugin_id]["def"].aot_impl_func = fn
            return fn
        return deco

    for name, obj in dict(TensorDesc=TensorDesc, SymInt32=SymInt32, SymIntExprs=SymIntExprs, SymExprs=SymExprs,
                          KernelLaunchParams=KernelLaunchParams, cdiv=cdiv, from_shape_expr=from_shape_expr,
                          register=register, aot_impl=aot_impl, ShapeExprs=ShapeExprs).items():
        setattr(trtp, name, obj)
    trt.plugin = trtp
    return trtp


def symbolic_desc(trtp, name: str, rank: int, dtype):
    """A TensorDesc of input ``name`` whose dims are the symbols name[0..rank-1]."""
    return trtp.TensorDesc([Expr.dim(name, i) for i in range(rank)], dtype)
