"""export/cpp as a service: JPEG/PNG decoding, per-class thresholds, --serve, the installed CMake package.

References are independent of the C++ code: fastmlr's Python reader (Pillow's decoder, EXIF orientation)
(pixels), ``fastmlr.runtime`` on the same files (probabilities), and the thresholds applied here in
Python to the probabilities (labels). The artefact comes from the public export CLI.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastmlr import runtime

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP = os.path.join(ROOT, "export", "cpp")
SIZE = 64
# One build folder reused across sessions (git-ignored): a rebuild only recompiles what changed.
BUILD = os.environ.get("FASTMLR_CPP_TEST_BUILD", os.path.join(ROOT, "build", "cpp-service-test"))


def _missing_tools() -> str | None:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is needed to build export/cpp"
    for header, package in (("jpeglib.h", "libjpeg62-turbo-dev"), ("png.h", "libpng-dev")):
        probe = subprocess.run(["g++", "-E", "-x", "c++", "-"], input=f"#include <cstdio>\n#include <{header}>\n",
                               capture_output=True, text=True)
        if probe.returncode != 0:
            return f"{header} not found: install {package} (make setup does)"
    return None


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(scope="module")
def build():
    why = _missing_tools()
    if why:
        pytest.skip(why)
    cfg = subprocess.run(["cmake", "-S", CPP, "-B", BUILD, f"-DPython3_EXECUTABLE={sys.executable}"],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    b = subprocess.run(["cmake", "--build", BUILD, "-j2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    return os.path.join(BUILD, "fastmlr_classify")


@pytest.fixture(scope="module")
def artefact(tmp_path_factory):
    """A random SRDL (resnet18, 64 px, 3 classes) through the export CLI, AOTInductor package."""
    path = str(tmp_path_factory.mktemp("artefact") / "m.pt2")
    r = subprocess.run([sys.executable, "-m", "fastmlr.export", "--model", "srdl", "--num-classes", "3",
                        "--backbone", "resnet18", "--image-size", str(SIZE), "--min-batch", "1", "--opt-batch", "2",
                        "--max-batch", "4", "--aoti", path, "--no-verify"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return path


# -- test images, written by Pillow (and 16-bit PNGs by hand: Pillow cannot write 16-bit colour) ----------
def _png16(arr: np.ndarray, color_type: int) -> bytes:
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _picture(h, w, seed):
    """A smooth, asymmetric colour picture with noise: every flip or rotation of it differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255.0 / w, y * 255.0 / h, (x + 2 * y) * 100.0 / (w + 2 * h) + 80], -1)
    return np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    pic = Image.fromarray(_picture(61, 83, 0))  # downscaled to 64 x 64 horizontally, upscaled vertically
    files = {}

    def save(name, img, **kw):
        img.save(d / name, **kw)
        files[name] = str(d / name)

    save("rgb.jpg", pic, quality=90)
    save("rgb444.jpg", pic, quality=95, subsampling=0)
    save("progressive.jpg", pic, quality=80, progressive=True)
    save("grey.jpg", Image.fromarray(_picture(50, 70, 1)[..., 0]))
    save("cmyk.jpg", pic.convert("CMYK"))
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        save(f"exif{o}.jpg", pic, exif=exif.tobytes())
        save(f"exif{o}.png", pic, exif=exif.tobytes())
    alpha = rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)
    save("rgba.png", Image.fromarray(np.concatenate([_picture(40, 50, 2), alpha], -1), "RGBA"))
    save("palette.png", pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=37))
    save("palette4_trns.png", pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), bits=4, transparency=3)
    save("grey.png", Image.fromarray(_picture(30, 44, 3)[..., 0]))
    save("grey_alpha.png", Image.fromarray(_picture(30, 44, 3)[..., 0]).convert("LA"))
    save("bilevel.png", Image.fromarray(_picture(30, 44, 3)[..., 0] > 128))
    v16 = rng.integers(0, 65536, (33, 47, 3)).astype(np.uint16)
    for name, arr, ct in (("rgb16.png", v16, 2), ("rgba16.png", np.concatenate([v16, v16[..., :1]], -1), 6),
                          ("grey16.png", rng.integers(0, 65536, (33, 47)).astype(np.uint16), 0)):
        (d / name).write_bytes(_png16(arr, ct))
        files[name] = str(d / name)
    big = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    save("big.jpg", big, quality=75)
    (d / "not_an_image.jpg").write_bytes(b"hello, not a JPEG\n")
    buf = io.BytesIO()
    pic.save(buf, "PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return d, files


def _pillow_rgb(path):
    """What fastmlr's Python side sees: Pillow's decode, EXIF orientation, 16-bit grey scaled, alpha dropped."""
    from fastmlr.data.transforms import open_rgb

    return open_rgb(path)


def _classify_json(exe, artefact, paths, *extra):
    r = subprocess.run([exe, artefact, "--json", *extra, *paths], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# -- decoding ------------------------------------------------------------------------------------------
def test_decoded_pixels_match_pillow(build, images, tmp_path):
    d, files = images
    worst = {}
    cmd = [build]
    for name, path in files.items():
        cmd += ["--decode", path, str(tmp_path / (name + ".ppm"))]
    r = subprocess.run(cmd, capture_output=True, text=True)  # one process: libtorch loads once
    assert r.returncode == 0, r.stderr
    for name, path in files.items():
        cpp = np.asarray(Image.open(tmp_path / (name + ".ppm")), dtype=np.int16)
        ref = np.asarray(_pillow_rgb(path), dtype=np.int16)
        assert cpp.shape == ref.shape, (name, cpp.shape, ref.shape)
        worst[name] = int(np.abs(cpp - ref).max())
    # PNG decoding is exact by definition; for JPEG both sides run libjpeg-turbo's integer IDCT and
    # fancy upsampling, which agree bit for bit across its versions (measured: 0 on every file here).
    assert all(v == 0 for k, v in worst.items() if k.endswith(".png")), worst
    assert all(v <= 1 for k, v in worst.items() if k.endswith(".jpg")), worst
    # The orientations really differ from each other (the test would not see a wrong transpose otherwise).
    assert len({_pillow_rgb(files[f"exif{o}.png"]).tobytes() for o in range(1, 9)}) == 8


def test_unreadable_files_are_named(build, images, tmp_path):
    d, _ = images
    for name, words in (("not_an_image.jpg", "not a JPEG, PNG"), ("truncated.png", "truncated"),
                        ("missing.png", "cannot open image")):
        r = subprocess.run([build, "--decode", str(d / name), str(tmp_path / "x.ppm")], capture_output=True, text=True)
        assert r.returncode == 1 and name in r.stderr and words in r.stderr, r.stderr
        assert not (tmp_path / "x.ppm").exists()


# -- probabilities and labels ----------------------------------------------------------------------------
PARITY = ["rgb.jpg", "exif6.jpg", "exif3.jpg", "exif7.png", "grey.jpg", "cmyk.jpg", "rgba.png", "rgb16.png", "palette.png",
          "grey.png", "grey16.png", "exif8.png", "big.jpg"]


def test_probabilities_match_python_runtime(build, artefact, images):
    _, files = images
    paths = [files[n] for n in PARITY]
    rows = _classify_json(build, artefact, paths)
    cpp = torch.tensor([list(r["probabilities"].values()) for r in rows])
    assert cpp.shape == (len(PARITY), 3)
    # The export CLI's default package calls fastmlr's kernels where fastmlr._C is built: the C++
    # program runs them through the ops library it links.
    from fastmlr import ops
    from fastmlr.runtime.aoti import package_custom_ops

    expected = ["fastmlr::car_pool", "fastmlr::car_spatial_attention"] if "cpp" in ops.available_backends() else []
    assert package_custom_ops(artefact) == expected
    # Both sides read the files themselves: EXIF orientation, 16-bit scaling and alpha alike.
    py = runtime.load(artefact).predict(paths)
    diff = (cpp - py).abs().amax(dim=1)
    # Identical decoded pixels and, at these sizes (grown or shrunk on one axis, grown on one and shrunk
    # on the other, 320x240 shrunk on both), the resize Pillow computes: float rounding only.
    assert diff.max() <= 1e-4, dict(zip(PARITY, diff.tolist()))
    # The check can see a decoding error: the images' probabilities differ by far more than the tolerance.
    assert (py.amax(dim=0) - py.amin(dim=0)).max() > 100 * 1e-4
    # The rotated files are not classified as their stored (unrotated) pixels would be.
    with Image.open(files["exif6.jpg"]) as im:
        stored = Image.fromarray(np.asarray(im.convert("RGB")))  # the stored pixels, without their EXIF
    unrotated = runtime.load(artefact).predict([stored])
    assert (unrotated[0] - py[PARITY.index("exif6.jpg")]).abs().max() > 1e-3
    for r, p in zip(rows, py):
        assert r["labels"] == [f"class_{c}" for c in p.argsort(descending=True).tolist() if p[c] >= 0.5]


def _edited_sidecar(artefact, tmp_path, seal=True, name="edited.json", **changes):
    """A copy of the artefact's sidecar with ``changes``; resealed (an edit made on purpose, as
    fastmlr.deploy.set_thresholds does) unless ``seal`` is False (a hand edit, which is refused)."""
    from fastmlr.artifact import contract

    side = json.loads(open(artefact + ".json").read())
    side.update(changes)
    side = {k: v for k, v in side.items() if v is not None}
    if seal:
        side = contract.seal(side)
    path = tmp_path / name
    path.write_text(json.dumps(side, indent=2, sort_keys=True))
    return str(path)


def test_per_class_thresholds_from_the_sidecar(build, artefact, images, tmp_path):
    _, files = images
    paths = [files[n] for n in ("rgb.jpg", "grey.jpg", "rgba.png", "grey16.png", "big.jpg")]
    base = _classify_json(build, artefact, paths)
    p = torch.tensor([list(r["probabilities"].values()) for r in base])
    # Thresholds between the images' scores, per class: each class is a label for some images only.
    th = ((p.amax(dim=0) + p.amin(dim=0)) / 2).tolist()
    per_class = _classify_json(build, artefact, paths, "--sidecar", _edited_sidecar(artefact, tmp_path, thresholds=th))
    single = 0.5 * (p.max() + p.min()).item()
    one = _classify_json(build, artefact, paths, "--sidecar",
                         _edited_sidecar(artefact, tmp_path, threshold=single, thresholds=None))
    for k in range(len(paths)):
        order = p[k].argsort(descending=True).tolist()
        assert per_class[k]["labels"] == [f"class_{c}" for c in order if p[k, c] >= th[c]]
        assert one[k]["labels"] == [f"class_{c}" for c in order if p[k, c] >= single]
        assert per_class[k]["probabilities"] == base[k]["probabilities"]
        assert list(per_class[k]["thresholds"].values()) == pytest.approx(th, rel=1e-7)
    assert [r["labels"] for r in per_class] != [r["labels"] for r in base]
    assert [r["labels"] for r in per_class] != [r["labels"] for r in one]

    bad = _edited_sidecar(artefact, tmp_path, thresholds=[0.5, 0.5])
    r = subprocess.run([build, artefact, "--sidecar", bad, paths[0]], capture_output=True, text=True)
    assert r.returncode == 1 and "edited.json" in r.stderr and "thresholds" in r.stderr and "3 numbers" in r.stderr


# -- the long-running mode -----------------------------------------------------------------------------
def _readline(proc, timeout=120):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from --serve within the timeout (output not flushed?)"
    return proc.stdout.readline()


def test_serve_answers_each_line_and_survives_bad_files(build, artefact, images):
    d, files = images
    th = [0.2, 0.9, 0.5]
    sidecar = _edited_sidecar(artefact, d, name="serve.json", thresholds=th)
    proc = subprocess.Popen([build, "--serve", artefact, "--sidecar", str(sidecar)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        # One line in, one line out, before the next line is sent: the answer is flushed at once.
        proc.stdin.write(files["rgb.jpg"] + "\n")
        proc.stdin.flush()
        first = json.loads(_readline(proc))
        lines = [files["exif6.jpg"], str(d / "missing.jpg"), "", files["rgba16.png"], str(d / "not_an_image.jpg"),
                 str(d / "truncated.png"), str(d), files["palette.png"]]
        out, err = proc.communicate("\n".join(lines) + "\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    rows = [first] + [json.loads(line) for line in out.splitlines()]
    asked = [files["rgb.jpg"]] + [x for x in lines if x]
    assert [r["image"] for r in rows] == asked
    errors = {r["image"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {str(d / "missing.jpg"), str(d / "not_an_image.jpg"), str(d / "truncated.png"), str(d)}
    assert "cannot open image" in errors[str(d / "missing.jpg")]
    assert "truncated" in errors[str(d / "truncated.png")]
    assert "not a regular file" in errors[str(d)]
    good = [r for r in rows if "error" not in r]
    batch = _classify_json(build, artefact, [r["image"] for r in good])
    for r, b in zip(good, batch):
        assert r.keys() == b.keys() == {"image", "labels", "probabilities", "thresholds"}
        scores = list(r["probabilities"].values())
        assert np.allclose(scores, list(b["probabilities"].values()), atol=1e-5)
        order = np.argsort(-np.asarray(scores), kind="stable")
        assert r["labels"] == [f"class_{c}" for c in order if scores[c] >= th[c]]
        assert list(r["thresholds"].values()) == pytest.approx(th, rel=1e-7)


# -- embedding: the installed CMake package ----------------------------------------------------------------
def test_installed_package_with_find_package(build, artefact, images, tmp_path):
    _, files = images
    prefix = tmp_path / "prefix"
    inst = subprocess.run(["cmake", "--install", BUILD, "--prefix", str(prefix)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert (prefix / "include" / "fastmlr" / "classifier.h").is_file()
    cfg_dirs = list(prefix.glob("lib*/cmake/fastmlr_service/fastmlr_serviceConfig.cmake"))
    assert len(cfg_dirs) == 1
    consumer = tmp_path / "consumer-build"
    cfg = subprocess.run(["cmake", "-S", os.path.join(CPP, "examples", "consumer"), "-B", str(consumer),
                          f"-DCMAKE_PREFIX_PATH={prefix}"], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    b = subprocess.run(["cmake", "--build", str(consumer), "-j2"], capture_output=True, text=True)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    paths = [files["rgb.jpg"], str(tmp_path / "missing.png"), files["rgba.png"]]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # the run path must suffice
    run = subprocess.run([str(consumer / "consumer"), artefact, *paths], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths
    assert lines[1].split("\t")[1].startswith("error: cannot open image")
    ref = _classify_json(build, artefact, [paths[0], paths[2]])
    for line, r in zip([lines[0], lines[2]], ref):
        _, labels, scores = line.split("\t")
        assert np.allclose([float(s) for s in scores.split()], list(r["probabilities"].values()), atol=1e-5)
        assert [x.split("=")[0] for x in labels.split(",") if x] == r["labels"]


# -- the reliability catalogue (issue 22): the C++ program checks what the Python runtime checks ---------------
def _copy_artefact(artefact, folder, name="m.pt2"):
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, name)
    shutil.copy(artefact, dst)
    shutil.copy(artefact + ".json", dst + ".json")
    return dst


def _npy(path, arr):
    np.save(path, arr.astype(np.float32))
    return str(path)


def _bad_sidecars(artefact, t):
    """name -> (sidecar path, words the one error line must hold)."""
    deep = t / "deep.json"
    deep.write_text("[" * 1_000_000)
    big = t / "big.json"
    big.write_bytes(b" " * (17 << 20) + b"{}")
    return {
        "hand-edited image_size": (_edited_sidecar(artefact, t, seal=False, name="size.json", image_size=32),
                                   ["size.json", "edited after export", "image_size"]),
        "hand-edited class names": (_edited_sidecar(artefact, t, seal=False, name="names.json",
                                                    class_names=["x", "y", "z"]), ["names.json", "class_names"]),
        "integrity record broken": (_edited_sidecar(artefact, t, seal=False, name="rec.json", integrity="00"),
                                    ["rec.json", "integrity"]),
        "another file's sidecar": (_edited_sidecar(artefact, t, name="other.json",
                                                   artifact={"format": "aoti", "sha256": "0" * 64}),
                                   ["m.pt2", "sha256", "other.json"]),
        "nesting of 10^6 [": (str(deep), ["deep.json", "nested deeper than 64"]),
        "17 MiB of blanks": (str(big), ["big.json", "larger than 16 MiB"]),
        "image_size 10^6 (sealed)": (_edited_sidecar(artefact, t, name="huge.json", image_size=1_000_000),
                                     ["huge.json", "image_size outside 1 .. 4096"]),
    }


def test_sidecar_integrity_hash_and_bounds_are_checked(build, artefact, images, tmp_path):
    _, files = images
    for case, (side, words) in _bad_sidecars(artefact, tmp_path).items():
        r = subprocess.run([build, artefact, "--sidecar", side, files["rgb.jpg"]], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 1, (case, r.returncode, r.stderr[-2000:])  # not a crash (negative: a signal)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, r.stderr[-2000:])
        for w in words:
            assert w in lines[0], (case, w, lines[0])
    # The untouched sidecar, resealed after an edit made on purpose, is accepted (the check can pass).
    ok = _edited_sidecar(artefact, tmp_path, name="ok.json", threshold=0.3)
    assert subprocess.run([build, artefact, "--sidecar", ok, files["rgb.jpg"]], capture_output=True).returncode == 0


def test_a_replaced_missing_or_text_package_is_one_line(build, artefact, images, tmp_path):
    from fastmlr.artifact import contract

    _, files = images
    grown = _copy_artefact(artefact, tmp_path / "grown")
    with open(grown, "ab") as fh:
        fh.write(b"\0")
    missing = _copy_artefact(artefact, tmp_path / "missing")
    os.remove(missing)
    text = str(tmp_path / "text.pt2")
    with open(text, "w") as fh:
        fh.write("not a package\n")
    side = json.loads(open(artefact + ".json").read())
    contract.write_sidecar(text, {k: v for k, v in side.items() if k not in ("artifact", "integrity")},
                           artifact={"format": "aoti"})  # a sealed sidecar of the text file: the loader must say so
    for path, words in ((grown, ["m.pt2", "sha256 differs"]), (missing, ["m.pt2", "does not exist"]),
                        (text, ["text.pt2", "cannot load the AOTInductor package"])):
        r = subprocess.run([build, path, files["rgb.jpg"]], capture_output=True, text=True, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (path, r.stderr[-3000:])
        for w in words:
            assert w in lines[0], (w, lines[0])


def test_huge_headers_nan_and_bad_flags_are_one_line(build, artefact, tmp_path):
    ppm = tmp_path / "huge.ppm"
    ppm.write_bytes(b"P6\n100000 100000\n255\n" + b"\0" * 30)
    npy = tmp_path / "huge.npy"
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 64, 64), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    npy.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64)
    nan = np.zeros((1, 3, SIZE, SIZE))
    nan[0, 1, 5, 5] = np.nan
    cases = {
        "ppm header of 10^10 pixels": ([artefact, str(ppm)], 1, ["huge.ppm", "over the limit"]),
        "npy header of 1.2e9 values": ([artefact, str(npy)], 1, ["huge.npy", "more values than the file holds"]),
        "NaN pixels": ([artefact, _npy(tmp_path / "nan.npy", nan)], 1, ["NaN"]),
        "--top abc": ([artefact, "--top", "abc", str(npy)], 2, ["--top", "'abc'"]),
        "--decode onto its input": (["--decode", str(ppm), str(tmp_path / "." / "huge.ppm")], 1,
                                    ["huge.ppm", "would be overwritten"]),
        "--device cuda:99999999999": ([artefact, "--device", "cuda:99999999999", str(npy)], 2, ["--device"]),
    }
    for case, (argv, code, words) in cases.items():
        r = subprocess.run([build, *argv], capture_output=True, text=True, timeout=300)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == code and len(errors) == 1, (case, r.returncode, r.stderr[-2000:])
        assert "stoi" not in r.stderr and "bad_alloc" not in r.stderr, (case, r.stderr)
        for w in words:
            assert w in errors[0], (case, w, errors[0])


def test_serve_answers_a_fifo_and_invalid_utf8_with_json_lines(build, artefact, images, tmp_path):
    _, files = images
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    odd = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as fh:
        fh.write(open(files["rgb.jpg"], "rb").read())
    proc = subprocess.Popen([build, "--serve", artefact], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(os.fsencode(str(fifo)) + b"\n" + odd + b"\n" + files["rgb.jpg"].encode() + b"\n",
                                    timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.decode("utf-8").splitlines()]  # every line is JSON (and UTF-8)
    assert len(rows) == 3
    assert rows[0]["image"] == str(fifo) and "FIFO" in rows[0]["error"]
    assert rows[1]["image"] == str(tmp_path) + "/caf\ufffd.jpg" and "probabilities" in rows[1]
    assert "probabilities" in rows[2] and rows[1]["probabilities"] == rows[2]["probabilities"]


def test_aoti_runner_checks_run_input_against_the_sidecar(artefact):
    r = runtime.load(artefact)
    for x, words in ((torch.zeros(2, 3, 32, 32), ["(2, 3, 32, 32)", f"Tensor[n, 3, {SIZE}, {SIZE}]"]),
                     (torch.zeros(1, 3, 2, 2), ["(1, 3, 2, 2)"]),
                     (torch.zeros(5, 3, SIZE, SIZE), ["(5, 3", "n in 1..4"]),
                     (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float64), ["torch.float64"]),
                     (torch.zeros(1, SIZE, SIZE, 3).permute(0, 3, 1, 2), ["non-contiguous"]),
                     (torch.full((1, 3, SIZE, SIZE), float("nan")), ["NaN", "image(s) [0]"])):
        with pytest.raises((TypeError, ValueError)) as info:
            r.run(x)
        msg = str(info.value)
        assert "\n" not in msg and "m.pt2" in msg and all(w in msg for w in words), msg
    logits, probs = r.run(torch.zeros(4, 3, SIZE, SIZE))  # the contract itself still runs
    assert probs.shape == (4, 3) and torch.isfinite(probs).all()


# -- one output layout: predict --json, the Python runtime and the C++ program -----------------------------
def test_one_json_lines_record_across_predict_runtime_and_cpp(build, images, tmp_path, capsys):
    from fastmlr import export as ex
    from fastmlr import predict
    from fastmlr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, store_thresholds
    from fastmlr.data import load_image
    from fastmlr.models import create_model

    _, files = images
    paths = [files[n] for n in ("rgb.jpg", "grey.jpg", "rgba.png", "palette.png", "big.jpg")]
    torch.manual_seed(0)
    model = create_model("srdl", 3, backbone="resnet18", weights="none", embeddings=torch.randn(3, 8)).eval()
    ckpt = str(tmp_path / "m.pt")
    save_checkpoint(ckpt, {"model": "srdl", "num_classes": 3, "config": model.config, "image_size": SIZE,
                           "class_names": ["cat", "dog", "bird"], "state_dict": model.state_dict()})
    with torch.no_grad():
        eager = torch.sigmoid(model_from_checkpoint(ckpt).eval()(torch.stack([load_image(p, SIZE)[0] for p in paths])))
    # Per-class thresholds in the widest gap between the images' probabilities: each class labels some images.
    th = []
    for c in range(3):
        v = eager[:, c].sort().values
        k = int((v[1:] - v[:-1]).argmax())
        th.append(float((v[k] + v[k + 1]) / 2))
        assert float(v[k + 1] - v[k]) > 2e-3  # far wider than the runtimes' differences (<= 1e-4)
    store_thresholds(ckpt, th, {"data": "test", "split": "gap"})
    assert predict.main(["--checkpoint", ckpt, "--json", "--device", "cpu", *paths]) == 0
    py = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    pt2 = str(tmp_path / "m.pt2")
    assert ex.main(["--checkpoint", ckpt, "--aoti", pt2, "--min-batch", "1", "--opt-batch", "1", "--max-batch", "8",
                    "--no-verify"]) == 0
    rt = runtime.load(pt2).records(paths)
    cpp = _classify_json(build, pt2, paths)
    for a, b, c, p in zip(py, rt, cpp, eager):
        for r in (a, b, c):
            assert r.keys() == {"image", "labels", "probabilities", "thresholds"}
            assert list(r["probabilities"]) == ["cat", "dog", "bird"]
            assert list(r["thresholds"].values()) == pytest.approx(th, rel=1e-7)
            assert np.allclose(list(r["probabilities"].values()), p.tolist(), atol=1e-4)
        want = [n for n, q in sorted(zip(["cat", "dog", "bird"], p.tolist()), key=lambda x: -x[1])
                if q >= th[["cat", "dog", "bird"].index(n)]]
        assert a["labels"] == b["labels"] == c["labels"] == want
        assert a["image"] == b["image"] == c["image"]
    assert any(r["labels"] for r in py) and not all(len(r["labels"]) == 3 for r in py)
