"""The runtime's catalogue of user mistakes (fastmlr.runtime), in the style of test_cli_errors.py.

Each case does one wrong thing to a runner or its artefact and checks the exception
type and that its message is one line naming what was wrong and what was expected.
The artefact is the tiny hand-built ONNX graph of test_deploy_contract.py, whose
reference is NumPy on the same weights; the preprocessing references are NumPy too.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fastmlr import deploy, runtime
from fastmlr.artifact import contract
from test_deploy_contract import S, _Meta, _numpy_reference, _tiny_onnx

MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)


@pytest.fixture
def art(tmp_path):
    """A fresh tiny artefact with classes a, b, c and its sealed sidecar."""
    path = _tiny_onnx(str(tmp_path / "tiny.onnx"))
    side = contract.make_sidecar(_Meta(), S, class_names=["a", "b", "c"], threshold=0.55)
    contract.write_sidecar(path, side, artifact={"format": "onnx"}, precision="fp32", batch={"min": 1, "opt": 2, "max": 4})
    return path


def edit_sidecar(path, **changes):
    side_path = contract.sidecar_path(path)
    side = json.load(open(side_path))
    side.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del side[k]
    with open(side_path, "w") as fh:
        json.dump(side, fh)


def _load(p):
    return runtime.load(p)


def _predict(x):
    return lambda p: runtime.load(p).predict(x)


def _run(x):
    return lambda p: runtime.load(p).run(x)


def _edited(**changes):
    def case(p):
        edit_sidecar(p, **changes)
        return runtime.load(p)
    return case


# id -> (what to do with the artefact path, exception type, substrings the one-line message must contain)
CASES = {
    "sidecar-class-names-edited": (_edited(class_names=["x", "b", "c"]), contract.SidecarMismatch,
                                   ["tiny.onnx.json", "edited after export", "class_names", "re-export",
                                    "verify_hash=False"]),
    "sidecar-mean-edited": (_edited(mean=[0.5, 0.5, 0.5]), contract.SidecarMismatch, ["tiny.onnx.json", "mean"]),
    "sidecar-thresholds-edited": (_edited(thresholds=[0.3, 0.3, 0.3]), contract.SidecarMismatch,
                                  ["thresholds", "set_thresholds"]),
    "sidecar-field-added": (_edited(image_size_note="x"), contract.SidecarMismatch, ["image_size_note"]),
    "sidecar-field-removed": (_edited(model=None), contract.SidecarMismatch, ["model"]),
    "sidecar-record-broken": (_edited(integrity="00"), contract.SidecarMismatch, ["integrity"]),
    "tensor-int64": (_predict(torch.zeros(1, 3, S, S, dtype=torch.int64)), TypeError,
                     ["torch.int64", f"float32 Tensor[N, 3, {S}, {S}]", "uint8", "PIL images"]),
    "tensor-bool": (_predict(torch.zeros(2, 3, S, S, dtype=torch.bool)), TypeError, ["torch.bool", "normalised"]),
    "tensor-int32": (_predict(torch.zeros(3, S, S, dtype=torch.int32)), TypeError, ["torch.int32"]),
    "tensor-wrong-shape": (_predict(torch.zeros(1, 3, 8, 8)), ValueError, [f"(N, 3, {S}, {S})", "(1, 3, 8, 8)"]),
    "image-missing": (_predict("nope.jpg"), ValueError, ["nope.jpg", "cannot read"]),
    "image-list-with-int": (_predict([3]), TypeError, ["int", "PIL images / image paths"]),
    "no-images": (_predict([]), ValueError, ["no images"]),
    "artefact-unknown-type": (lambda p: runtime.load(p + ".bin"), ValueError, ["tiny.onnx.bin", "unknown artefact type",
                                                                              ".onnx"]),
    "artefact-missing": (lambda p: runtime.load("nope.onnx"), FileNotFoundError, ["nope.onnx", "does not exist"]),
    "sidecar-missing": (lambda p: (os.remove(contract.sidecar_path(p)), runtime.load(p)), contract.SidecarMismatch,
                        ["tiny.onnx.json", "no sidecar", "fastmlr.export"]),
    "sidecar-not-json": (lambda p: (open(contract.sidecar_path(p), "w").write("{"), runtime.load(p)),
                         contract.SidecarMismatch, ["tiny.onnx.json", "cannot be read"]),
    "artefact-replaced": (lambda p: (open(p, "ab").write(b"\0"), runtime.load(p)), contract.SidecarMismatch,
                          ["tiny.onnx", "sha256", "re-export"]),
    "request-other-classes": (lambda p: runtime.load(p, class_names=["a", "x", "c"]), contract.SidecarMismatch,
                              ["class 1 is 'b' in the artefact and 'x' requested"]),
    "request-other-size": (lambda p: runtime.load(p, image_size=448), contract.SidecarMismatch,
                           [f"image size: artefact {S}, requested 448"]),
    "device-unknown": (lambda p: runtime.load(p, device="tpu"), ValueError, ["device", "'tpu'"]),
    # run(): the prepared batch is checked against the sidecar before the artefact sees it
    "run-other-size": (_run(torch.zeros(2, 3, 2 * S, 2 * S)), ValueError, [f"shape (2, 3, {2 * S}, {2 * S})",
                                                                        f"Tensor[n, 3, {S}, {S}]"]),
    "run-batch-over-max": (_run(torch.zeros(5, 3, S, S)), ValueError, ["(5, 3", "n in 1..4"]),
    "run-float64": (_run(torch.zeros(1, 3, S, S, dtype=torch.float64)), TypeError, ["torch.float64", "float32"]),
    "run-channels-last": (_run(torch.zeros(1, S, S, 3).permute(0, 3, 1, 2)), ValueError, ["non-contiguous",
                                                                                      ".contiguous()"]),
    "run-nan": (_run(torch.zeros(2, 3, S, S).index_fill_(0, torch.tensor([1]), float("nan"))), ValueError,
                ["NaN", "image(s) [1]"]),
    "run-not-a-tensor": (_run(np.zeros((1, 3, S, S), np.float32)), TypeError, ["ndarray", "predict()"]),
    "predict-nan": (_predict(torch.full((1, 3, S, S), float("inf"))), ValueError, ["NaN/inf"]),
    "sidecar-nested-deep": (lambda p: (open(contract.sidecar_path(p), "w").write("[" * 100000), runtime.load(p)),
                            contract.SidecarMismatch, ["tiny.onnx.json", "nests too deep"]),
    "sidecar-fifo": (lambda p: (os.remove(contract.sidecar_path(p)), os.mkfifo(contract.sidecar_path(p)),
                                runtime.load(p)), contract.SidecarMismatch, ["tiny.onnx.json", "not a regular file"]),
    "artefact-fifo": (lambda p: (os.mkfifo(p + ".fifo.onnx"), runtime.load(p + ".fifo.onnx")), ValueError,
                      ["fifo.onnx", "not a regular file"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_runtime_user_error_is_one_clear_line(case, art, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    act, exc, needles = CASES[case]
    with pytest.raises(exc) as info:
        act(art)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_verify_hash_false_accepts_an_edit_made_on_purpose(art):
    edit_sidecar(art, class_names=["x", "y", "z"])
    r = runtime.load(art, verify_hash=False)
    assert r.class_names == ["x", "y", "z"]


def test_set_thresholds_rewrites_the_seal(art):
    x = torch.full((1, 3, S, S), 0.2)  # probabilities 0.646, 0.599, 0.525 (see test_deploy_contract)
    assert [n for n, _ in runtime.load(art).labels(x)[0]] == ["a", "b"]
    before = open(art, "rb").read()
    side = deploy.set_thresholds(art, [0.9, 0.5, 0.5])  # the name the refusal message gives
    assert side["thresholds"] == [0.9, 0.5, 0.5] and contract.edited_fields(side) == []
    r = runtime.load(art)
    assert r.thresholds == [0.9, 0.5, 0.5] and [n for n, _ in r.labels(x)[0]] == ["b", "c"]
    assert open(art, "rb").read() == before  # the graph is not touched
    with pytest.raises(ValueError, match="2 per-class thresholds for 3 classes"):
        contract.set_thresholds(art, [0.5, 0.5])
    edit_sidecar(art, class_names=["x", "b", "c"])
    with pytest.raises(contract.SidecarMismatch, match="class_names"):
        contract.set_thresholds(art, [0.5, 0.5, 0.5])  # an edited sidecar is not re-sealed by accident


def test_a_sidecar_from_before_the_seal_loads_with_one_line(art, capsys):
    edit_sidecar(art, integrity=None)
    r = runtime.load(art)
    runtime.load(art)
    err = capsys.readouterr().err.strip().splitlines()
    assert r.class_names == ["a", "b", "c"]
    assert len(err) == 1 and "no 'integrity' record" in err[0] and "re-export" in err[0], err


def test_uint8_tensors_are_pixels_normalised_with_the_sidecar(art):
    g = np.random.default_rng(0)
    u8 = g.integers(0, 256, size=(2, 3, S, S), dtype=np.uint8)
    want = (u8.astype(np.float64) / 255.0 - MEAN) / STD  # float64 reference of the sidecar's preprocessing
    r = runtime.load(art)
    got = r.preprocess(torch.from_numpy(u8))
    assert got.dtype == torch.float32 and np.abs(got.numpy() - want).max() < 1e-5
    assert np.abs(r.predict(torch.from_numpy(u8)).numpy() - _numpy_reference(want)[1]).max() < 1e-5


def test_one_path_or_one_image_is_a_batch_of_one(art, tmp_path):
    a = np.random.default_rng(1).integers(0, 256, size=(S, S, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    want = _numpy_reference(((a.transpose(2, 0, 1) / 255.0 - MEAN) / STD)[None])[1]  # S x S: no resize
    r = runtime.load(art)
    for images in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.open(tmp_path / "a.png"), [str(tmp_path / "a.png")]):
        p = r.predict(images)
        assert p.shape == (1, 3) and np.abs(p.numpy() - want).max() < 1e-5, type(images)
    assert len(r.labels(str(tmp_path / "a.png"))) == 1


def test_sixteen_bit_png_is_scaled_in_the_runtime(art, tmp_path):
    a = (np.arange(S * S).reshape(S, S) * 4000 + 1234).astype(np.uint16)  # 1234 .. 61234
    Image.fromarray(a).save(tmp_path / "deep.png")
    eight = np.floor(a.astype(np.float64) / 257.0 + 0.5)  # float64 reference of v * 255 / 65535, rounded
    want = (np.broadcast_to(eight / 255.0, (3, S, S)) - MEAN) / STD
    r = runtime.load(art)
    for img in (str(tmp_path / "deep.png"), Image.open(tmp_path / "deep.png")):
        got = r.preprocess(img)[0].numpy()
        assert np.abs(got - want).max() < 1e-5
    assert float(np.std(got)) > 0.5  # a clipped image would be almost constant (255 nearly everywhere)


def test_a_copied_artefact_with_its_sidecar_still_loads(art, tmp_path):
    os.makedirs(tmp_path / "elsewhere")
    shutil.copy(art, tmp_path / "elsewhere" / "tiny.onnx")
    shutil.copy(contract.sidecar_path(art), tmp_path / "elsewhere" / "tiny.onnx.json")
    assert runtime.load(str(tmp_path / "elsewhere" / "tiny.onnx")).class_names == ["a", "b", "c"]
