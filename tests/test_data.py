"""Tests for fastmlr.data: every dataset is read from fixtures written in the real file formats.

VOC XML + ImageSets + JPEGs, a COCO instances json, a JSON Lines list, and a
tiny Fashion-MNIST idx set are written into tmp_path; expected labels are
spelled out by hand from what each fixture says.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from itertools import combinations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastmlr import data as D
from fastmlr.data import mosaics as M

from fakes import N_TRAIN_PER_CLASS, N_VAL_PER_CLASS, TRAIN_BASE, VAL_BASE, write_fake_fmnist

MEAN = np.array(D.IMAGENET_MEAN, dtype=np.float64)
STD = np.array(D.IMAGENET_STD, dtype=np.float64)


def write_jpeg(path, color=(200, 30, 90), size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)


def expected_normalised(rgb):
    """Float64 ImageNet normalisation of one 0..255 RGB colour, Tensor-free."""
    return (np.asarray(rgb, dtype=np.float64) / 255.0 - MEAN) / STD


# ---------------------------------------------------------------- transforms


def test_eval_transform_shape_and_normalisation():
    color = (255, 0, 128)
    t = D.build_transform(32, train=False)(Image.new("RGB", (50, 20), color))
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    want = expected_normalised(color)
    for c in range(3):
        np.testing.assert_allclose(t[c].double().numpy(), want[c], atol=1e-6)


def test_train_transform_crop_sides_follow_the_paper_at_448():
    tf = D.build_transform(448, train=True)
    resize_big, crop = tf.transforms[0], tf.transforms[1]
    assert tuple(resize_big.size) == (512, 512)
    assert sorted(crop.sides, reverse=True) == [512, 448, 384, 320, 256]
    out = tf(Image.new("RGB", (300, 200), (10, 20, 30)))
    assert out.shape == (3, 448, 448)


def test_train_transform_crops_and_flips_at_random():
    # Left half black, right half white: a flip moves the white to the left,
    # a small crop can land on one colour only.
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[:, 32:] = 255
    pil = Image.fromarray(img)
    tf = D.build_transform(56, train=True)
    torch.manual_seed(0)
    left_white, right_white, sides_seen = 0, 0, set()
    for _ in range(60):
        out = D.denormalize(tf(pil))
        assert out.shape == (3, 56, 56)
        left_white += bool(out[:, :, 0].mean() > 0.9)
        right_white += bool(out[:, :, -1].mean() > 0.9)
    crop = tf.transforms[1]
    for _ in range(200):
        sides_seen.add(crop(Image.new("L", (64, 64))).size[0])
    assert left_white > 5 and right_white > 5
    assert sides_seen == {64, 56, 48, 40, 32}


def test_denormalize_inverts_normalisation():
    color = (12, 140, 250)
    t = D.build_transform(8, train=False)(Image.new("RGB", (8, 8), color))
    back = D.denormalize(t.unsqueeze(0))
    assert back.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(back[0, :, 0, 0].double().numpy(), np.array(color) / 255.0, atol=1e-6)
    assert float(D.denormalize(torch.full((3, 2, 2), 100.0)).max()) == 1.0
    with pytest.raises(ValueError, match=r"Tensor\[..., 3, H, W\].*\(4, 2, 2\)"):
        D.denormalize(torch.zeros(4, 2, 2))


def test_load_image_returns_tensor_and_pil(tmp_path):
    path = tmp_path / "a.jpg"
    write_jpeg(str(path), size=(40, 30))
    t, pil = D.load_image(path, 24)
    assert t.shape == (3, 24, 24) and pil.mode == "RGB" and pil.size == (40, 30)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="bad.jpg"):
        D.load_image(bad, 24)
    with pytest.raises(ValueError, match="missing.png"):
        D.load_image(tmp_path / "missing.png", 24)


# ---------------------------------------------------------------- VOC

VOC_FIXTURE = {
    # image id -> list of (class, difficult)
    "000001": [("dog", 0), ("person", 1)],
    "000002": [("cat", 1), ("cat", 0), ("car", 1), ("car", 1)],
    "000003": [("aeroplane", 0), ("tvmonitor", 0), ("aeroplane", 1)],
    "000004": [],
}


def write_voc(root, fixture=VOC_FIXTURE, split="trainval", extra_lines=()):
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for image_id, objects in fixture.items():
        objs = "".join(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{diff}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
            f"</bndbox></object>"
            for name, diff in objects
        )
        xml = (
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>40</width><height>30</height><depth>3</depth></size>{objs}</annotation>"
        )
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(xml)
        write_jpeg(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join([*fixture, "", *extra_lines]) + "\n")


def voc_vectors(names_pos, names_ign):
    t = torch.zeros(20)
    ig = torch.zeros(20, dtype=torch.bool)
    for n in names_pos:
        t[D.VOC_CLASSES.index(n)] = 1
    for n in names_ign:
        ig[D.VOC_CLASSES.index(n)] = True
    return t, ig


def test_voc_classes_standard_order():
    assert len(D.VOC_CLASSES) == 20
    assert D.VOC_CLASSES[0] == "aeroplane" and D.VOC_CLASSES[-1] == "tvmonitor"
    assert D.VOC_CLASSES == sorted(D.VOC_CLASSES)


def test_voc_labels_and_difficult(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root)
    ds = D.VOCDataset(root, split="trainval", image_size=32)
    assert len(ds) == 4 and ds.classes == D.VOC_CLASSES
    expected = {
        "000001": (["dog"], ["person"]),  # difficult person only: ignored, not positive
        "000002": (["cat"], ["car"]),  # a non-difficult cat wins over the difficult one
        "000003": (["aeroplane", "tvmonitor"], []),
        "000004": ([], []),
    }
    for i, image_id in enumerate(VOC_FIXTURE):
        img, target, ignore = ds[i]
        want_t, want_ig = voc_vectors(*expected[image_id])
        assert ds.image_path(i) == os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        assert img.shape == (3, 32, 32)
        assert torch.equal(target, want_t), image_id
        assert torch.equal(ignore, want_ig), image_id
        assert not (target.bool() & ignore).any()


def test_voc_corrupt_image_skipped_with_one_warning(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root)
    bad = os.path.join(root, "JPEGImages", "000002.jpg")
    with open(bad, "rb") as f:
        head = f.read(200)
    with open(bad, "wb") as f:
        f.write(head)  # a truncated JPEG
    ds = D.VOCDataset(root, image_size=16)
    with pytest.warns(UserWarning, match="000002.jpg"):
        assert ds[1] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second read of the same file must not warn again
        assert ds[1] is None
    loader = DataLoader(ds, batch_size=4, collate_fn=D.collate_skip)
    images, targets, ignore, n_skipped = next(iter(loader))
    assert n_skipped == 1
    assert images.shape == (3, 3, 16, 16) and targets.shape == (3, 20) and ignore.dtype == torch.bool
    # The kept rows are images 0, 2, 3 in order.
    assert torch.equal(targets[0], voc_vectors(["dog"], [])[0])
    assert torch.equal(targets[1], voc_vectors(["aeroplane", "tvmonitor"], [])[0])


def test_voc_missing_split_file(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
        D.VOCDataset(root, split="test")


def test_voc_missing_annotation_names_file_and_line(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root, extra_lines=["009999"])
    # Lines: 4 ids, a blank line, then 009999 on line 6.
    with pytest.raises(FileNotFoundError) as e:
        D.VOCDataset(root)
    msg = str(e.value)
    assert "009999.xml" in msg and "trainval.txt:6" in msg


def test_voc_unknown_class_names_file(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root, fixture={"000001": [("dog", 0)], "000007": [("unicorn", 0)]})
    with pytest.raises(ValueError, match=r"unicorn.*000007\.xml"):
        D.VOCDataset(root)


# ---------------------------------------------------------------- COCO


def write_coco(root, split="val", year=2014):
    # Category ids are sparse and listed out of order, as in the real file.
    categories = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images = [
        {"id": 42, "file_name": "b.jpg", "width": 40, "height": 30},
        {"id": 7, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 100, "file_name": "empty.jpg", "width": 40, "height": 30},
    ]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 90, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0},
        {"id": 4, "image_id": 42, "category_id": 3, "iscrowd": 1},
    ]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}{year}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    for im in images:
        write_jpeg(os.path.join(root, f"{split}{year}", im["file_name"]))


def test_coco_labels(tmp_path):
    root = str(tmp_path / "coco")
    write_coco(root)
    ds = D.COCODataset(root, split="val", image_size=16)
    assert ds.classes == ["person", "car", "toothbrush"]  # by category id 1, 3, 90
    assert len(ds) == 3
    # Images sorted by id: 7 (a.jpg), 42 (b.jpg), 100 (empty.jpg).
    want = {"a.jpg": [1, 0, 1], "b.jpg": [0, 1, 0], "empty.jpg": [0, 0, 0]}
    for i in range(3):
        name = os.path.basename(ds.image_path(i))
        assert ds.image_path(i) == os.path.join(root, "val2014", name)
        img, target, ignore = ds[i]
        assert img.shape == (3, 16, 16)
        assert target.tolist() == want[name] and not ignore.any()
    assert [os.path.basename(ds.image_path(i)) for i in range(3)] == ["a.jpg", "b.jpg", "empty.jpg"]


def test_coco_missing_json_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"annotations/instances_train2017\.json"):
        D.COCODataset(str(tmp_path), split="train", year=2017)


# ---------------------------------------------------------------- JSON Lines list


def write_list(tmp_path, lines, classes=("cat", "dog", "bird")):
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n\n")
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "labels.jsonl"), str(tmp_path / "classes.txt")


def test_list_dataset_labels_and_paths(tmp_path):
    write_jpeg(str(tmp_path / "imgs" / "x.jpg"))
    write_jpeg(str(tmp_path / "imgs" / "y.jpg"))
    jsonl, classes = write_list(
        tmp_path,
        [
            json.dumps({"image": "imgs/x.jpg", "labels": ["dog", "cat"]}),
            "",
            json.dumps({"image": "imgs/y.jpg", "labels": [], "ignore": ["bird"]}),
        ],
    )
    ds = D.ListDataset(jsonl, classes, image_size=16)
    assert ds.classes == ["cat", "dog", "bird"] and len(ds) == 2
    assert ds.image_path(0) == os.path.join(str(tmp_path), "imgs/x.jpg")
    _, t0, i0 = ds[0]
    _, t1, i1 = ds[1]
    assert t0.tolist() == [1, 1, 0] and i0.tolist() == [False, False, False]
    assert t1.tolist() == [0, 0, 0] and i1.tolist() == [False, False, True]
    other = D.ListDataset(jsonl, classes, image_size=16, root="/elsewhere")
    assert other.image_path(1) == os.path.join("/elsewhere", "imgs/y.jpg")


def test_list_dataset_bad_json_names_line(tmp_path):
    jsonl, classes = write_list(tmp_path, [json.dumps({"image": "a.jpg", "labels": []}), "", '{"image": "b.jpg", '])
    with pytest.raises(ValueError, match=r"labels\.jsonl:3: invalid JSON"):
        D.ListDataset(jsonl, classes)


def test_list_dataset_unknown_label_names_line(tmp_path):
    jsonl, classes = write_list(
        tmp_path, [json.dumps({"image": "a.jpg", "labels": ["cat"]}), json.dumps({"image": "b.jpg", "labels": ["owl"]})]
    )
    with pytest.raises(ValueError, match=r"labels\.jsonl:2: unknown label.*owl"):
        D.ListDataset(jsonl, classes)


def test_classes_file_duplicate_names_line(tmp_path):
    (tmp_path / "c.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"c\.txt:3: class 'cat' repeats the one at line 1"):
        D.read_classes_file(tmp_path / "c.txt")


# ---------------------------------------------------------------- collate_skip


def test_collate_skip_drops_none_and_counts():
    item = lambda k: (torch.full((3, 4, 4), float(k)), torch.tensor([k % 2, 1.0]), torch.tensor([False, k == 2]))
    images, targets, ignore, n = D.collate_skip([item(0), None, item(2), None, item(3)])
    assert n == 2 and images.shape == (3, 3, 4, 4)
    assert images[:, 0, 0, 0].tolist() == [0, 2, 3]
    assert targets.tolist() == [[0, 1], [0, 1], [1, 1]]
    assert ignore.tolist() == [[False, False], [False, True], [False, False]]
    assert D.collate_skip([None, None]) is None


# ---------------------------------------------------------------- build_dataset


def test_build_dataset_names_splits_and_train_default(tmp_path):
    root = str(tmp_path / "VOC2007")
    write_voc(root)
    write_voc(root, split="test")
    ds = D.build_dataset("voc", root, split="train", image_size=16)
    assert isinstance(ds, D.VOCDataset) and ds.split == "trainval" and ds.train
    ds = D.build_dataset("voc", root, split="val", image_size=16)
    assert ds.split == "test" and not ds.train
    coco = str(tmp_path / "coco")
    write_coco(coco, split="val")
    ds = D.build_dataset("coco", coco, split="val", image_size=16, train=True)
    assert isinstance(ds, D.COCODataset) and ds.train
    jsonl, classes = write_list(tmp_path, [json.dumps({"image": "a.jpg", "labels": ["cat"]})])
    ds = D.build_dataset("list", jsonl, classes_file=classes, image_size=16)
    assert isinstance(ds, D.ListDataset) and ds.train
    with pytest.raises(ValueError, match="voc, coco, list, mosaics"):
        D.build_dataset("imagenet", root)
    with pytest.raises(ValueError, match="no split 'minival'"):
        D.build_dataset("coco", coco, split="minival")


# ---------------------------------------------------------------- FashionMosaics

@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return write_fake_fmnist(str(tmp_path_factory.mktemp("fmnist")))


def reference_canvas(layout, grid, base):
    """Naive canvas from the placement record: each item fills its square with its photo's constant value."""
    canvas = np.zeros((grid * 28, grid * 28), dtype=np.uint8)
    for it in layout["items"]:
        y = (it["cell"] // grid) * 28 + it["top"]
        x = (it["cell"] % grid) * 28 + it["left"]
        canvas[y : y + it["side"], x : x + it["side"]] = base + it["photo"]
    return canvas


def test_mosaic_labels_equal_placed_items_and_render_matches(fmnist):
    ds = D.FashionMosaics("train", num_images=60, image_size=32, root=fmnist, grid=2)
    assert ds.classes == D.FASHION_CLASSES and len(ds) == 60
    sides, offsets, counts = set(), set(), set()
    for i in range(len(ds)):
        lay = ds._layout(i)
        cells = [it["cell"] for it in lay["items"]]
        assert 0 < len(cells) <= 4 and len(set(cells)) == len(cells)
        counts.add(len(cells))
        for it in lay["items"]:
            # The photo really is of the recorded class (fake labels are photo index mod 10).
            assert it["photo"] % 10 == it["class"]
            assert 0 <= it["top"] <= 28 - it["side"] and 0 <= it["left"] <= 28 - it["side"]
            sides.add(it["side"])
            offsets.add((it["top"], it["left"]))
        img, target, ignore = ds[i]
        assert img.shape == (3, 32, 32) and not ignore.any()
        want = torch.zeros(10)
        want[[it["class"] for it in lay["items"]]] = 1
        assert torch.equal(target, want)
        np.testing.assert_array_equal(ds.render(i), reference_canvas(lay, 2, TRAIN_BASE))
    assert counts == {1, 2, 3, 4}
    assert min(sides) < 22 and max(sides) > 25  # items are scaled, not all full-cell
    assert len(offsets) > 5  # and positioned, not all at the corner


def test_mosaic_grey_path_equals_rgb_transform(fmnist):
    ds = D.FashionMosaics("val", num_images=4, image_size=40, root=fmnist)
    rgb = Image.fromarray(ds.render(2)).convert("RGB")
    assert torch.equal(ds[2][0], D.build_transform(40, train=False)(rgb))
    tr = D.FashionMosaics("val", num_images=4, image_size=40, root=fmnist, train=True)
    torch.manual_seed(3)
    a = tr[2][0]
    torch.manual_seed(3)
    assert torch.equal(a, D.build_transform(40, train=True)(rgb))
    custom = D.FashionMosaics("val", num_images=4, root=fmnist, transform=lambda im: torch.tensor(im.size + (len(im.mode),)))
    assert custom[0][0].tolist() == [56, 56, 3]  # a user transform gets the RGB canvas


def test_mosaic_deterministic_by_seed_and_index(fmnist):
    a = D.FashionMosaics("train", num_images=50, image_size=24, root=fmnist, seed=5)
    b = D.FashionMosaics("train", num_images=50, image_size=24, root=fmnist, seed=5)
    c = D.FashionMosaics("train", num_images=50, image_size=24, root=fmnist, seed=6)
    for i in (0, 17, 49, 17):
        assert a._layout(i) == b._layout(i)
        assert torch.equal(a[i][0], b[i][0])
    assert [a._layout(i) for i in range(50)] != [c._layout(i) for i in range(50)]
    # Neighbouring indices are not the same mosaic.
    assert len({json.dumps(a._layout(i)) for i in range(50)}) == 50


def test_mosaic_same_in_worker_processes(fmnist):
    ds = D.FashionMosaics("val", num_images=12, image_size=16, root=fmnist, seed=1)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=D.collate_skip)
    images = torch.cat([b[0] for b in loader])
    targets = torch.cat([b[1] for b in loader])
    assert torch.equal(targets, ds.targets())
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(12)]))


def test_mosaic_train_and_val_use_different_files(fmnist):
    tr = D.FashionMosaics("train", num_images=40, root=fmnist)
    va = D.FashionMosaics("val", num_images=40, root=fmnist)
    assert tr._photos.shape[0] == 10 * N_TRAIN_PER_CLASS and va._photos.shape[0] == 10 * N_VAL_PER_CLASS
    train_values = set(range(TRAIN_BASE, TRAIN_BASE + 10 * N_TRAIN_PER_CLASS))
    val_values = set(range(VAL_BASE, VAL_BASE + 10 * N_VAL_PER_CLASS))
    seen_tr = set(np.unique(np.stack([tr.render(i) for i in range(40)]))) - {0}
    seen_va = set(np.unique(np.stack([va.render(i) for i in range(40)]))) - {0}
    assert seen_tr <= train_values and seen_va <= val_values and seen_tr and seen_va
    # Same seed and index in the two splits give different mosaics.
    assert [tr._layout(i)["scene"] for i in range(40)] != [va._layout(i)["scene"] for i in range(40)]


def test_mosaic_cooccurrence_matches_naive_count(fmnist):
    ds = D.FashionMosaics("train", num_images=40, image_size=8, root=fmnist, seed=2)
    ref = np.zeros((10, 10))
    for i in range(len(ds)):
        labels = ds[i][1].double().numpy()
        for a in range(10):
            for b in range(10):
                ref[a, b] += labels[a] * labels[b]
    got = ds.cooccurrence()
    assert got.shape == (10, 10)
    np.testing.assert_array_equal(got.double().numpy(), ref)


def test_mosaic_cooccurrence_shows_scene_prior(fmnist):
    ds = D.FashionMosaics("train", num_images=2000, root=fmnist)
    co = ds.cooccurrence().double()
    idx = {c: k for k, c in enumerate(D.FASHION_CLASSES)}
    together = set()
    for probs in D.SCENES.values():
        for a, b in combinations(sorted(idx[c] for c in probs), 2):
            together.add((a, b))
    within = [float(co[a, b]) for a, b in together]
    cross = [float(co[a, b]) for a, b in combinations(range(10), 2) if (a, b) not in together]
    assert cross, "every pair shares a scene; the prior would carry no structure"
    assert np.mean(within) > 4 * np.mean(cross), (np.mean(within), np.mean(cross))
    # Off-scene items keep every pair possible.
    assert min(cross) > 0
    sandal, dress, coat = idx["Sandal"], idx["Dress"], idx["Coat"]
    assert co[sandal, dress] > 4 * co[sandal, coat]


def test_mosaic_uncompressed_idx_and_cache(tmp_path, fmnist):
    plain = write_fake_fmnist(str(tmp_path / "plain"), gz=False)
    a = D.FashionMosaics("val", num_images=5, root=plain)
    b = D.FashionMosaics("val", num_images=5, root=fmnist)
    np.testing.assert_array_equal(a._photos, b._photos)
    c = D.FashionMosaics("train", num_images=5, root=plain, grid=3)
    d = D.FashionMosaics("train", num_images=5, root=plain)
    assert c._photos is d._photos  # read once per process
    assert c.render(0).shape == (84, 84)


def test_mosaic_missing_files_say_how_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        D.FashionMosaics("train", root=str(empty))
    msg = str(e.value)
    assert str(empty) in msg and "make data" in msg and "apt-get install dataset-fashion-mnist" in msg
    monkeypatch.setenv("FASTMLR_FMNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent.*make data"):
        D.FashionMosaics("val")


def test_idx_bad_header_and_size(tmp_path):
    p = tmp_path / "x-idx"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x0D, 1) + struct.pack(">i", 2) + b"\0" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte idx"):
        D.read_idx(str(p))
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 2) + struct.pack(">2i", 2, 3) + b"\0" * 5)
    with pytest.raises(ValueError, match=r"dims \(2, 3\) \(6 bytes\), found 5"):
        D.read_idx(str(p))


def test_build_dataset_mosaics(fmnist):
    ds = D.build_dataset("mosaics", fmnist, split="test", image_size=20, num_images=7)
    assert isinstance(ds, D.FashionMosaics) and ds.split == "val" and not ds.train and len(ds) == 7
    assert ds[0][0].shape == (3, 20, 20)


def test_mosaics_on_real_fashion_mnist():
    folder = M.DEFAULT_FMNIST_DIR
    if not os.path.exists(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST not installed in {folder} (apt-get install dataset-fashion-mnist)")
    tr = D.FashionMosaics("train", num_images=16, root=folder)
    va = D.FashionMosaics("val", num_images=16, root=folder)
    assert tr._photos.shape == (60000, 28, 28) and va._photos.shape == (10000, 28, 28)
    img, target, _ = tr[3]
    assert img.shape == (3, 64, 64) and 1 <= target.sum() <= 4
    # Real photos: bright item pixels on a black background.
    canvas = tr.render(3)
    assert canvas.max() > 150 and (canvas == 0).mean() > 0.2


def test_open_rgb_applies_exif_orientation(tmp_path):
    """A photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view) loads upright."""
    import numpy as np
    from PIL import Image

    from fastmlr.data.transforms import open_rgb

    stored = np.zeros((20, 30, 3), np.uint8)  # 30 wide, 20 high, as the sensor stored it
    stored[:, :5] = 255  # a white band along the stored left edge
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "side.png", exif=exif)
    seen = np.asarray(open_rgb(tmp_path / "side.png"))
    # Orientation 6: the stored left edge becomes the top row once viewed.
    assert seen.shape == (30, 20, 3)
    assert seen[:5].min() == 255 and seen[5:].max() == 0
