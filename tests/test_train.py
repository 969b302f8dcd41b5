"""Training, resume, evaluation and prediction end to end on tiny configurations of the built-in mosaics.

Every test names its device. The training tests run on the CPU and, marked ``gpu``, on CUDA
(with its default float16 AMP); evaluation and prediction compare with a CPU model on the CPU.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from fakes import fmnist_root
from fastmlr import evaluate, predict, train
from fastmlr.checkpoint import load_checkpoint, model_from_checkpoint
from fastmlr.data import FashionMosaics, load_image

warnings.filterwarnings("ignore", message=".*random")


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return fmnist_root(tmp_path_factory)


def targs(out, fmnist, *extra, model="srdl", epochs=2, device="cpu"):
    return [
        "--model", model, "--backbone", "resnet18", "--weights", "none", "--data", "mosaics",
        "--data-root", fmnist, "--train-size", "48", "--val-size", "32", "--image-size", "64",
        "--epochs", str(epochs), "--batch-size", "8", "--lr", "1e-3", "--workers", "0",
        "--out", str(out), "--device", device, "--no-progress", "--quiet", *extra,
    ]


def _train_run(tmp_path_factory, fmnist, device):
    out = tmp_path_factory.mktemp(f"run-{device}")
    args = train.build_parser().parse_args(targs(out, fmnist, epochs=3, device=device))
    return out, train.train(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist):
    """A CPU run, which the evaluation and prediction tests read."""
    return _train_run(tmp_path_factory, fmnist, "cpu")


@pytest.fixture(scope="module", params=DEVICES)
def trained_on(request, tmp_path_factory, fmnist):
    if request.param == "cpu":
        return request.getfixturevalue("trained")
    return _train_run(tmp_path_factory, fmnist, request.param)


def test_training_loss_falls_and_files_are_written(trained_on):
    out, res = trained_on
    losses = [h["train_loss"] for h in res["history"]]
    assert losses[-1] < losses[0], losses
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["epoch"] == 2 and ckpt["class_names"] == res["classes"]
    assert ckpt["config"]["use_oe"] is True and "label_embeddings" in ckpt["state_dict"]
    assert os.path.exists(out / "best.pt")
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@pytest.mark.parametrize("device", DEVICES)
def test_resume_gives_the_same_result(tmp_path, fmnist, device):
    full = tmp_path / "full"
    train.train(train.build_parser().parse_args(targs(full, fmnist, model="baseline", device=device)))
    part = tmp_path / "part"
    train.train(train.build_parser().parse_args(targs(part, fmnist, model="baseline", epochs=1, device=device)))
    train.train(train.build_parser().parse_args(targs(part, fmnist, "--resume", model="baseline", device=device)))
    a, b = load_checkpoint(str(full / "last.pt")), load_checkpoint(str(part / "last.pt"))
    # Bit-exact on the CPU. CUDA's convolution backward and atomics may sum in another order from run to
    # run, uninterrupted or not: there the resumed run agrees to within float16 AMP's rounding.
    tol = dict(rtol=0, atol=0) if device == "cpu" else dict(rtol=1e-2, atol=1e-3)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k].float(), b["state_dict"][k].float(), **tol, msg=k)
    la, lb = [h["train_loss"] for h in a["history"]], [h["train_loss"] for h in b["history"]]
    if device == "cpu":
        assert la == lb
    else:
        assert la == pytest.approx(lb, rel=1e-2)
        assert a["scaler"] is not None and b["scaler"] is not None  # CUDA AMP's scaler state went through resume
    assert [json.loads(x)["epoch"] for x in open(part / "log.jsonl")] == [1, 2]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    from fastmlr.checkpoint import rng_state, save_checkpoint, set_rng_state

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    path = str(tmp_path / "rng.pt")
    save_checkpoint(path, {"model": "m", "num_classes": 1, "config": {}, "class_names": ["a"], "state_dict": {},
                           "rng": [rng_state()]})
    want = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    set_rng_state(load_checkpoint(path)["rng"][0])  # read back with weights_only=True
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


@pytest.mark.parametrize("device", DEVICES)
def test_resume_refuses_another_model(tmp_path, fmnist, device):
    out = tmp_path / "r"
    train.train(train.build_parser().parse_args(targs(out, fmnist, model="baseline", epochs=1, device=device)))
    with pytest.raises(SystemExit, match="--model srdl differs from the run's 'baseline', which defines its model"):
        train.train(train.build_parser().parse_args(targs(out, fmnist, "--resume", model="srdl", device=device)))
    with pytest.raises(SystemExit, match="does not exist"):
        train.train(train.build_parser().parse_args(targs(tmp_path / "none", fmnist, "--resume", device=device)))


@pytest.mark.parametrize("device", DEVICES)
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fmnist, monkeypatch, capsys, device):
    from fastmlr.models.base import MLRModel

    out = tmp_path / "nan"
    assert train.main(targs(out, fmnist, model="baseline", epochs=1, device=device)) == 0
    before = (out / "last.pt").read_bytes()
    real = MLRModel.loss
    monkeypatch.setattr(MLRModel, "loss", lambda self, *a: real(self, *a) * float("nan"))
    assert train.main(targs(out, fmnist, "--resume", model="baseline", epochs=2, device=device)) == 2
    assert "loss became nan at epoch 2, step 1" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before


def test_evaluate_matches_sklearn(trained, fmnist, tmp_path):
    out, _ = trained
    js = tmp_path / "eval.json"
    rc = evaluate.main(["--checkpoint", str(out / "last.pt"), "--data", "mosaics", "--data-root", fmnist,
                        "--num-images", "32", "--workers", "0", "--json", str(js), "--no-progress", "--device", "cpu"])
    assert rc == 0
    got = json.load(open(js))
    model = model_from_checkpoint(str(out / "last.pt")).eval()
    ds = FashionMosaics("val", num_images=32, image_size=64, seed=1, root=fmnist)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))]).numpy()
    with torch.no_grad():
        p = torch.sigmoid(model(x)).numpy()
    aps = [average_precision_score(y[:, c], p[:, c]) for c in range(y.shape[1]) if y[:, c].any()]
    assert abs(got["mAP"] - float(np.mean(aps))) < 1e-6


def test_evaluate_refuses_other_classes(trained, tmp_path, capsys):
    out, _ = trained
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 20), "red").save(img)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "val.jsonl").write_text(json.dumps({"image": "a.png", "labels": ["cat"]}) + "\n")
    rc = evaluate.main(["--checkpoint", str(out / "last.pt"), "--data", "list", "--data-root",
                        str(tmp_path / "val.jsonl"), "--classes-file", str(tmp_path / "classes.txt"),
                        "--workers", "0", "--no-progress", "--device", "cpu"])
    assert rc == 2
    assert "10 classes in the checkpoint, 2 in the data" in capsys.readouterr().err


def test_predict_scores_and_attention_figure(trained, fmnist, tmp_path, capsys):
    out, res = trained
    ds = FashionMosaics("val", num_images=4, image_size=64, seed=1, root=fmnist)
    paths = []
    for i in range(2):
        p = tmp_path / f"m{i}.png"
        Image.fromarray(ds.render(i)).convert("RGB").save(p)
        paths.append(str(p))
    fig = tmp_path / "att.png"
    rc = predict.main(["--checkpoint", str(out / "last.pt"), "--json", "--attention-maps", str(fig),
                       "--device", "cpu", *paths])
    assert rc == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON Lines
    model = model_from_checkpoint(str(out / "last.pt")).eval()
    assert [r["image"] for r in results] == paths
    for r, path in zip(results, paths):
        with torch.no_grad():
            probs = torch.sigmoid(model(load_image(path, 64)[0][None]))[0]
        assert list(r["probabilities"]) == res["classes"]  # every class, in class order
        got = torch.tensor(list(r["probabilities"].values()))
        torch.testing.assert_close(got, probs, rtol=0, atol=1e-6)
        assert r["labels"] == [c for c in sorted(res["classes"], key=lambda c: -r["probabilities"][c])
                               if r["probabilities"][c] >= 0.5]
        assert set(r["thresholds"].values()) == {0.5}
    im = Image.open(fig)
    assert im.size[1] > 2 * 192 and im.size[0] > 4 * 192  # 2 rows, 1 + top-3 columns, a colour bar


def test_module_entry_points():
    for mod in ("fastmlr.train", "fastmlr.evaluate", "fastmlr.predict"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "--checkpoint" in r.stdout or "--model" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "fastmlr", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--resume" in r.stdout
