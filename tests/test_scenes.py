"""FashionScenes (fastmlr/data/scenes.py, ``--data scenes``): determinism, labels of visible objects,
sizes, the co-occurrence prior, the train command on it; prints its rendering speed."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch

from fastmlr.data import SCENES, FashionScenes, build_dataset
from fastmlr.data.scenes import MAX_OBJECTS, MIN_VISIBLE


def test_a_scene_is_a_pure_function_of_seed_split_and_index():
    a = FashionScenes("train", num_images=20, seed=3)
    b = FashionScenes("train", num_images=20, seed=3)
    for i in (17, 0, 5):  # any order, fresh instances
        xa, ya, _ = a[i]
        xb, yb, _ = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert np.array_equal(a.render(7), b.render(7))
    other_seed = FashionScenes("train", num_images=20, seed=4)
    other_split = FashionScenes("val", num_images=20, seed=3)
    assert not np.array_equal(a.render(7), other_seed.render(7))
    assert not np.array_equal(a.render(7), other_split.render(7))


def test_every_labelled_object_is_visible():
    ds = FashionScenes("train", num_images=60, seed=0)
    counts = []
    for i in range(len(ds)):
        layout = ds._layout(i)
        canvas = ds.render(i)
        objs = layout["objects"]
        counts.append(len(objs))
        assert len(objs) >= 1 and len(objs) <= MAX_OBJECTS
        want = torch.zeros(10)
        for o in objs:
            want[o["class"]] = 1
        assert torch.equal(ds[i][1], want)
        for o in objs:
            s, t, l = o["side"], o["top"], o["left"]
            assert 0 <= t and t + s <= ds.canvas and 0 <= l and l + s <= ds.canvas
            photo = ds._scaled(o["photo"], s)
            mask = photo > 16
            # Pixels of the drawn canvas that still show this object's own grey values.
            shown = (canvas[t : t + s, l : l + s] == photo) & mask
            assert shown.sum() >= MIN_VISIBLE * mask.sum() > 0, (i, o)
        assert min(ds.visible_fractions(i)) >= MIN_VISIBLE
    # Scenes hold several objects, and some overlap.
    assert np.mean(counts) > 2
    overlapping = sum(min(ds.visible_fractions(i)) < 1.0 for i in range(len(ds)))
    assert overlapping > 5


def test_sizes_reach_a_7x7_map_at_stride_32():
    from fastmlr.models.backbones import Backbone

    ds = build_dataset("scenes", split="val", image_size=224, num_images=3, seed=1)
    x, y, ign = ds[0]
    assert x.shape == (3, 224, 224) and y.shape == (10,) and ign.dtype == torch.bool and not ign.any()
    assert ds.render(0).shape == (224, 224) and ds.render(0).dtype == np.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = Backbone("resnet18", weights="none").eval()
    with torch.no_grad():
        assert bb(x[None]).shape == (1, 512, 7, 7)
    # Object sizes vary by more than 2x.
    sides = [o["side"] for i in range(40) for o in FashionScenes("train", num_images=40)._layout(i)["objects"]]
    assert max(sides) / min(sides) > 2
    with pytest.raises(ValueError, match="split must be one of"):
        FashionScenes("test")
    with pytest.raises(IndexError, match="out of range"):
        ds[3]


def test_labels_follow_the_scene_prior():
    ds = FashionScenes("train", num_images=600, seed=0)
    t = ds.targets()
    m = (t.T @ t).double()
    names = ds.classes

    def pair(a, b):
        return float(m[names.index(a), names.index(b)])

    # Same-scene pairs co-occur far more often than cross-scene ones.
    assert pair("Sandal", "Dress") > 4 * max(pair("Sandal", "Coat"), 1)
    assert pair("Coat", "Pullover") > 4 * max(pair("Coat", "Dress"), 1)
    assert set(SCENES) == {"summer", "winter", "office", "sport"}


def test_render_speed():
    ds = FashionScenes("train", num_images=400, seed=0)
    t0 = time.perf_counter()
    for i in range(200):
        ds.render(i)
    renders = 200 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(200, 300):
        ds[i]
    items = 100 / (time.perf_counter() - t0)
    print(f"FashionScenes: {renders:.0f} renders/s, {items:.0f} items/s at 224 px (one core)")
    assert renders > 0 and items > 0


def test_train_command_on_scenes_with_cooccurrence(tmp_path, capsys):
    from fastmlr import train

    out = tmp_path / "run"
    rc = train.main([
        "--model", "mlgcn", "--backbone", "resnet18", "--weights", "none", "--data", "scenes",
        "--train-size", "8", "--val-size", "4", "--image-size", "64", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--adjacency", "cooccurrence", "--out", str(out), "--device", "cpu", "--quiet",
    ])
    assert rc == 0
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["config"]["fixed_adjacency"] is True and "adjacency_hat" in ckpt["state_dict"]
    assert json.loads((out / "args.json").read_text())["adjacency"] == "cooccurrence"
    capsys.readouterr()
    rc = train.main(["--model", "baseline", "--backbone", "resnet18", "--weights", "none", "--data", "scenes",
                     "--train-size", "4", "--val-size", "4", "--image-size", "64", "--epochs", "1",
                     "--workers", "0", "--adjacency", "cooccurrence", "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "--adjacency cooccurrence: model 'baseline' has no label graph" in capsys.readouterr().err
