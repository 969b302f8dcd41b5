"""The TensorRT runner's checks, against a fake engine (no GPU, no TensorRT here).

The runner itself needs CUDA tensors; its checks are functions of the engine, the
execution context and the requested shape (fastmlr/runtime/trt.py), tested here one by one.
"""

import pytest

from fakes import FakeContext, FakeEngine, FakeTRT
from fastmlr.artifact.contract import INPUT_NAME, OUTPUT_NAMES
from fastmlr.runtime import trt as rt

SIDECAR = {"image_size": 64, "class_names": [f"c{i}" for i in range(10)]}


def test_a_contract_engine_passes_and_gives_its_profile():
    assert rt.check_engine(FakeEngine(profile=(2, 4, 16)), FakeTRT, "m.plan", SIDECAR) == (2, 16)
    assert INPUT_NAME == "images" and OUTPUT_NAMES == ("logits", "probs")  # the names the fake engine uses


def _tensors(**change):
    t = FakeEngine().tensors.copy()
    t.update(change)
    return t


I, O, F, H = FakeTRT.TensorIOMode.INPUT, FakeTRT.TensorIOMode.OUTPUT, FakeTRT.DataType.FLOAT, FakeTRT.DataType.HALF


@pytest.mark.parametrize("tensors,match", [
    (_tensors(images=(I, H, (-1, 3, 64, 64))), "tensor 'images' is DataType.HALF in the engine"),
    (_tensors(probs=(O, H, (-1, 10))), "tensor 'probs' is DataType.HALF"),
    (_tensors(images=(I, F, (-1, 3, 32, 32))), r"'images' has shape \(-1, 3, 32, 32\).*\(N, 3, 64, 64\)"),
    (_tensors(logits=(O, F, (-1, 12))), r"'logits' has shape \(-1, 12\).*\(N, 10\)"),
    ({"input": (I, F, (-1, 3, 64, 64)), "logits": (O, F, (-1, 10)), "probs": (O, F, (-1, 10))},
     "expected one input 'images', found \\['input'\\]"),
    ({"images": (I, F, (-1, 3, 64, 64)), "logits": (O, F, (-1, 10))}, r"lacks outputs \['probs'\]"),
], ids=["input-fp16", "output-fp16", "input-size", "classes", "input-name", "missing-output"])
def test_engine_io_is_checked_against_the_contract_and_sidecar(tensors, match):
    with pytest.raises(RuntimeError, match=match):
        rt.check_engine(FakeEngine(tensors=tensors), FakeTRT, "m.plan", SIDECAR)


def test_an_engine_without_a_profile_is_refused():
    with pytest.raises(RuntimeError, match="no optimisation profile"):
        rt.check_engine(FakeEngine(profiles=0), FakeTRT, "m.plan", SIDECAR)


def test_a_batch_outside_the_profile_is_refused_before_tensorrt():
    rt.check_batch("m.plan", (8, 3, 64, 64), (1, 8))
    for n in (0, 9):
        with pytest.raises(ValueError, match=f"m.plan: input 'images' batch {n} is outside .*profile 0 \\(batch 1..8\\)"):
            rt.check_batch("m.plan", (n, 3, 64, 64), (1, 8))


def test_every_tensorrt_refusal_is_an_error_naming_the_tensor_and_profile():
    engine = FakeEngine(profile=(1, 4, 8))
    ctx = engine.create_execution_context()
    rt.set_input_shape(ctx, "images", (4, 3, 64, 64))
    assert rt.output_shape(ctx, "logits") == (4, 10)
    rt.set_tensor_address(ctx, "logits", 1234)
    assert ctx.addresses == {"logits": 1234}
    with pytest.raises(RuntimeError, match=r"refused shape \(9, 3, 64, 64\) for input 'images' \(optimisation profile 0\)"):
        rt.set_input_shape(ctx, "images", (9, 3, 64, 64))
    with pytest.raises(RuntimeError, match="refused the device address of tensor 'probs' .*profile 0"):
        rt.set_tensor_address(ctx, "probs", 0)
    refusing = FakeContext(engine, refuse={"logits"})
    with pytest.raises(RuntimeError, match="tensor 'logits'"):
        rt.set_tensor_address(refusing, "logits", 99)
    fresh = engine.create_execution_context()  # no input shape set: outputs stay dynamic
    with pytest.raises(RuntimeError, match=r"output 'probs' with an unresolved shape \(-1, 10\)"):
        rt.output_shape(fresh, "probs")


# -- the flavour of an engine and TensorRT-RTX's runtime cache ------------------------------------------------
def test_the_flavour_comes_from_the_sidecar_and_must_match_the_file():
    rtx = {"tensorrt": {"flavour": "rtx"}}
    assert rt.engine_flavour("m.plan", rtx, b"vtrt\x00\x00") == "rtx"
    assert rt.engine_flavour("m.plan", {"tensorrt": {"flavour": "enterprise"}}, b"ftrt\x00\x00") == "enterprise"
    assert rt.engine_flavour("m.plan", {}) == "enterprise"  # sidecars written before the field: enterprise TensorRT
    with pytest.raises(RuntimeError, match=r"m.plan: its sidecar says TensorRT-RTX, but the file is not a TensorRT-RTX "
                                           r"engine \(first bytes b'ftrt'\)"):
        rt.engine_flavour("m.plan", rtx, b"ftrt\x00\x00")
    with pytest.raises(RuntimeError, match="its sidecar says TensorRT, but the file is a TensorRT-RTX engine"):
        rt.engine_flavour("m.plan", {}, b"vtrt")
    with pytest.raises(RuntimeError, match="TensorRT flavour 'lean'"):
        rt.engine_flavour("m.plan", {"tensorrt": {"flavour": "lean"}})


def test_an_rtx_engine_is_refused_on_a_gpu_outside_its_targets():
    side = {"tensorrt": {"flavour": "rtx", "targets": ["8.6", "8.9"]}}
    rt.check_target("m.plan", side, (8, 9))
    with pytest.raises(RuntimeError, match=r"built for compute capability 8.6, 8.9; this GPU is 9.0 \(rebuild with "
                                           r"--trt-targets 9.0, or enterprise TensorRT on SM 9.0\)"):
        rt.check_target("m.plan", side, (9, 0))


class FakeRuntimeCache:
    """TensorRT-RTX's IRuntimeCache as documented: ``deserialize`` loads a blob from the same environment (True)
    and refuses any other, leaving the cache unchanged (False); ``serialize`` returns the entries."""

    ENV = b"env:sm89;"

    def __init__(self):
        self.entries = b""

    def deserialize(self, blob):
        if not blob.startswith(self.ENV):
            return False
        self.entries = blob[len(self.ENV):]
        return True

    def serialize(self):
        return self.ENV + self.entries


class FakeRuntimeConfig:
    def __init__(self):
        self.cache = None

    def create_runtime_cache(self):
        return FakeRuntimeCache()

    def set_runtime_cache(self, cache):
        self.cache = cache


def test_the_runtime_cache_is_loaded_set_and_saved_once_per_new_shape(tmp_path, capsys):
    path = tmp_path / "m.plan.runtime.cache"
    assert rt.runtime_cache_path(str(tmp_path / "m.plan")) == str(path)
    path.write_bytes(FakeRuntimeCache.ENV + b"kernelA")
    config = FakeRuntimeConfig()
    cache = rt.RuntimeCache(config, str(path))
    assert config.cache is cache.cache and cache.cache.entries == b"kernelA"  # loaded before the context exists
    cache.cache.entries += b"kernelB"  # what a just-in-time compile adds
    cache.after_run((2, 3, 64, 64))
    assert path.read_bytes() == FakeRuntimeCache.ENV + b"kernelAkernelB"
    cache.cache.entries += b"C"
    cache.after_run((2, 3, 64, 64))  # a shape seen before compiles nothing new: not rewritten
    assert path.read_bytes().endswith(b"kernelB")
    cache.after_run((4, 3, 64, 64))
    assert path.read_bytes().endswith(b"kernelBC")
    assert capsys.readouterr().err == ""


def test_a_runtime_cache_from_another_gpu_is_compiled_anew_in_one_line(tmp_path, capsys):
    path = tmp_path / "m.plan.runtime.cache"
    path.write_bytes(b"env:sm86;kernelA")
    cache = rt.RuntimeCache(FakeRuntimeConfig(), str(path))
    assert cache.cache.entries == b""
    err = capsys.readouterr().err
    assert err == (f"TensorRT-RTX: runtime cache {path} was written for another GPU, driver or version; compiling "
                   "the kernels anew\n")
    cache.after_run((1, 3, 64, 64))
    assert path.read_bytes() == FakeRuntimeCache.ENV  # replaced by this GPU's
