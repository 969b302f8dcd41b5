"""Per-class thresholds: the fit against a brute-force float64 search, the metrics against scikit-learn,
the checkpoint round trip, and the path from evaluate --calibrate-thresholds to predict and the sidecars."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score

from fakes import fmnist_root
from fastmlr import evaluate, predict, runtime
from fastmlr import export as ex
from fastmlr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, store_thresholds
from fastmlr.data import FASHION_CLASSES, FashionMosaics
from fastmlr.metrics import multilabel_metrics
from fastmlr.models import create_model
from fastmlr.thresholds import HIGH, LOW, fit_thresholds, per_class_f1

SIZE = 64


# -- the reference: a naive float64 loop over every candidate threshold --------------------------------------
def brute_force(scores, targets, valid, min_positives, default=0.5):
    """Per class: (best F1, the set of predicted rows at the best candidate, the candidate, the next lower score).

    Candidates are the distinct valid scores, visited from the highest down; a later candidate
    replaces the best only with a strictly higher F1 (so ties go to the highest threshold).
    """
    out = []
    for c in range(scores.shape[1]):
        rows = [n for n in range(scores.shape[0]) if valid[n, c]]
        n_pos = sum(1 for n in rows if targets[n, c] == 1)
        if n_pos < min_positives:
            out.append(None)
            continue
        cands = sorted({float(scores[n, c]) for n in rows}, reverse=True)
        best = (-1.0, None, None, None)
        for i, t in enumerate(cands):
            tp = sum(1 for n in rows if scores[n, c] >= t and targets[n, c] == 1)
            pp = sum(1 for n in rows if scores[n, c] >= t)
            f1 = 2.0 * tp / (pp + n_pos)
            if f1 > best[0]:
                lower = cands[i + 1] if i + 1 < len(cands) else None
                best = (f1, {n for n in rows if scores[n, c] >= t}, t, lower)
        out.append(best)
    return out


def random_case(seed, n=60, c=7, levels=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    s = rng.random((n, c))
    if levels:  # few distinct values: many ties (inside (0, 1): exact 0 and 1 are the clipping test's)
        s = (np.round(s * levels) + 1) / (levels + 2)
    s = s.astype(dtype)
    y = (rng.random((n, c)) < 0.35).astype(np.int64)
    y[:, 0] = 0  # no positive
    y[:, 1] = 0
    y[rng.integers(n), 1] = 1  # one positive
    y[:, 2] = 1  # every entry positive
    ignore = rng.random((n, c)) < 0.1
    ignore[:, :3] = False
    return s, y, ignore


@pytest.mark.parametrize("seed,levels,dtype", [(0, None, np.float32), (1, 8, np.float32), (2, 3, np.float64),
                                               (3, None, np.float64), (4, 20, np.float32)])
@pytest.mark.parametrize("min_positives", [1, 5])
def test_fit_equals_a_brute_force_search(seed, levels, dtype, min_positives):
    s, y, ignore = random_case(seed, levels=levels, dtype=dtype)
    valid = ~ignore
    fit = fit_thresholds(s, y, ignore, min_positives=min_positives)
    ref = brute_force(s.astype(np.float64), y, valid, min_positives)
    assert fit["positives"] == [int(((y == 1) & valid)[:, c].sum()) for c in range(s.shape[1])]
    for c, r in enumerate(ref):
        t = fit["thresholds"][c]
        if r is None:  # too few positives (class 0 always: it has none)
            assert t == 0.5 and not fit["fitted"][c]
            continue
        best_f1, best_rows, cand, lower = r
        assert fit["fitted"][c]
        assert fit["f1"][c] == pytest.approx(best_f1, abs=1e-12)
        # The same decisions as the best candidate, with the threshold between it and the next lower score.
        assert {n for n in range(s.shape[0]) if valid[n, c] and s[n, c] >= t} == best_rows, c
        if lower is None:
            assert t == pytest.approx(min(max(cand, LOW), HIGH))
        else:
            assert lower < t <= cand
            assert abs(t - 0.5 * (lower + cand)) <= 1e-7 * max(1.0, cand)  # the midpoint, to float32 rounding
    assert 0 not in [i for i, f in enumerate(fit["fitted"]) if f]


def test_a_single_positive_is_fitted_only_when_allowed():
    s, y, ignore = random_case(5)
    assert fit_thresholds(s, y, ignore, min_positives=1)["fitted"][1]
    assert not fit_thresholds(s, y, ignore, min_positives=2)["fitted"][1]
    assert fit_thresholds(s, y, ignore, min_positives=2)["thresholds"][1] == 0.5
    assert fit_thresholds(s, y, ignore, min_positives=2, default=0.3)["thresholds"][1] == 0.3


def test_float32_thresholds_decide_the_same_in_float32():
    """Runtimes compare float32 probabilities: the stored threshold must not round onto a score."""
    s = np.array([[0.5], [np.nextafter(np.float32(0.5), np.float32(1))], [0.2]], dtype=np.float32)
    y = np.array([[0], [1], [0]])
    t = fit_thresholds(s, y, min_positives=1)["thresholds"][0]
    assert float(np.float32(t)) == t  # exactly a float32 value
    assert s[0, 0] < t <= s[1, 0]
    got = (torch.from_numpy(s)[:, 0] >= t).tolist()
    assert got == [False, True, False]


def test_saturated_scores_give_thresholds_a_sidecar_accepts():
    from fastmlr.artifact.contract import check_thresholds

    s = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.0]], dtype=np.float32)
    y = np.array([[1, 1], [1, 1], [0, 1]])
    fit = fit_thresholds(s, y, min_positives=1)
    assert all(0.0 < t < 1.0 for t in fit["thresholds"])
    assert fit["thresholds"][1] == LOW  # every score is 0: predict every entry, at the lowest allowed threshold
    check_thresholds(fit["thresholds"], 2, "test")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_at_per_class_thresholds_equal_sklearn(seed):
    s, y, _ = random_case(seed, levels=10)
    t = fit_thresholds(s, y, min_positives=3)["thresholds"]
    m = multilabel_metrics(s, y, threshold=t)
    pred = (s.astype(np.float64) >= np.array(t)[None, :]).astype(int)
    cp = precision_score(y, pred, average="macro", zero_division=0)
    cr = recall_score(y, pred, average="macro", zero_division=0)
    assert m["CP"] == pytest.approx(cp, abs=1e-12) and m["CR"] == pytest.approx(cr, abs=1e-12)
    assert m["CF1"] == pytest.approx(2 * cp * cr / (cp + cr), abs=1e-12)
    assert m["OP"] == pytest.approx(precision_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["OR"] == pytest.approx(recall_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    assert m["OF1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0), abs=1e-12)
    np.testing.assert_allclose(per_class_f1(s, y, None, t), f1_score(y, pred, average=None, zero_division=0),
                               atol=1e-12)
    assert m["threshold"] == t


def test_per_class_f1_with_ignored_entries_equals_sklearn_with_weights():
    s, y, ignore = random_case(7)
    t = fit_thresholds(s, y, ignore, min_positives=2)["thresholds"]
    got = per_class_f1(s, y, ignore, t)
    for c in range(s.shape[1]):
        pred = (s[:, c] >= t[c]).astype(int)
        ref = f1_score(y[:, c], pred, sample_weight=(~ignore[:, c]).astype(float), zero_division=0)
        assert got[c] == pytest.approx(ref, abs=1e-12), c


def test_fitting_never_lowers_a_class_f1_below_the_single_threshold():
    s, y, ignore = random_case(8)
    fit = fit_thresholds(s, y, ignore, min_positives=1)
    at_half = per_class_f1(s, y, ignore, 0.5)
    assert all(a >= b - 1e-12 for a, b in zip(fit["f1"], at_half))


# -- checkpoints --------------------------------------------------------------------------------------------
def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = create_model("baseline", 10, backbone="resnet18", weights="none")
    save_checkpoint(str(path), {"model": "baseline", "num_classes": 10, "config": m.config,
                                "class_names": list(FASHION_CLASSES), "image_size": SIZE,
                                "state_dict": m.state_dict(), "args": {"seed": 0}})
    return str(path)


def test_thresholds_round_trip_through_a_checkpoint(tmp_path):
    path = _checkpoint(tmp_path / "c.pt")
    before = load_checkpoint(path)
    values = [0.1 * (i + 1) - 0.05 for i in range(10)]
    fit = {"data": "mosaics", "split": "val", "num_images": 40, "fitted": [True] * 10, "positives": list(range(10))}
    store_thresholds(path, values, fit)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert raw["thresholds"] == values and raw["thresholds_fit"] == fit
    after = load_checkpoint(path)
    assert set(after) == set(before) | {"thresholds", "thresholds_fit"}
    for k, v in before["state_dict"].items():
        assert torch.equal(v, after["state_dict"][k]), k
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(ValueError, match="3 thresholds for a model with 10 classes"):
        store_thresholds(path, [0.5] * 3, fit)
    assert load_checkpoint(path)["thresholds"] == values  # the refused write left the file as it was


# -- the commands ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return fmnist_root(tmp_path_factory)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, fmnist):
    """A checkpoint, calibrated by the command on 40 validation mosaics, and what the command printed."""
    d = tmp_path_factory.mktemp("calib")
    path = _checkpoint(d / "c.pt")
    plain = _checkpoint(d / "plain.pt")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = evaluate.main(["--checkpoint", path, "--data", "mosaics", "--data-root", fmnist, "--num-images", "40",
                            "--workers", "0", "--calibrate-thresholds", "--min-positives", "3", "--per-class",
                            "--json", str(d / "eval.json"), "--device", "cpu"])
    assert rc == 0
    return {"dir": d, "path": path, "plain": plain, "out": buf.getvalue(), "json": json.load(open(d / "eval.json"))}


def _val_scores(path, fmnist, n=40):
    model = model_from_checkpoint(path).eval()
    ds = FashionMosaics("val", num_images=n, image_size=SIZE, seed=1, root=fmnist)
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.stack([ds[i][1] for i in range(n)]).numpy()
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy(), y, x


def test_evaluate_calibrates_reports_both_and_stores(calibrated, fmnist):
    p, y, _ = _val_scores(calibrated["plain"], fmnist)
    ref = fit_thresholds(p, y, min_positives=3)
    ckpt = load_checkpoint(calibrated["path"])
    np.testing.assert_allclose(ckpt["thresholds"], ref["thresholds"], rtol=0, atol=2e-6)
    fit = ckpt["thresholds_fit"]
    assert (fit["data"], fit["split"], fit["num_images"], fit["seed"], fit["min_positives"]) == ("mosaics", "val", 40, 1, 3)
    assert fit["fitted"] == ref["fitted"]
    got = calibrated["json"]
    at_half = multilabel_metrics(p, y, threshold=0.5)
    at_cal = multilabel_metrics(p, y, threshold=ckpt["thresholds"])
    for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert got[k] == pytest.approx(at_half[k], abs=1e-6)
        assert got["calibrated"][k] == pytest.approx(at_cal[k], abs=1e-6)
    out = calibrated["out"]
    assert "| metric (%) | threshold 0.5 | per-class, fitted here |" in out
    assert "per-class thresholds fitted on mosaics/val (40 images, seed 1)" in out
    assert f"stored 10 thresholds in {calibrated['path']}" in out


def test_evaluate_measures_a_checkpoints_thresholds_on_other_data(calibrated, fmnist, capsys):
    rc = evaluate.main(["--checkpoint", calibrated["path"], "--data", "mosaics", "--data-root", fmnist,
                        "--num-images", "24", "--seed", "7", "--workers", "0", "--device", "cpu",
                        "--json", str(calibrated["dir"] / "other.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "per-class, checkpoint's" in out and "fitted on mosaics/val (40 images, seed 1)" in out
    assert load_checkpoint(calibrated["path"])["thresholds_fit"]["num_images"] == 40  # not refitted


def _images(tmp_path, fmnist, n=3):
    ds = FashionMosaics("val", num_images=n, image_size=SIZE, seed=1, root=fmnist)
    paths = []
    for i in range(n):
        p = tmp_path / f"m{i}.png"
        Image.fromarray(ds.render(i)).convert("RGB").save(p)
        paths.append(str(p))
    return paths


def _predict(capsys, *argv):
    assert predict.main(["--json", "--device", "cpu", *argv]) == 0
    cap = capsys.readouterr()
    return [json.loads(line) for line in cap.out.splitlines()], cap.err


def test_predict_applies_the_checkpoints_thresholds(calibrated, fmnist, tmp_path, capsys):
    paths = _images(tmp_path, fmnist)
    t = load_checkpoint(calibrated["path"])["thresholds"]
    model = model_from_checkpoint(calibrated["path"]).eval()
    from fastmlr.data import load_image

    with torch.no_grad():
        probs = [torch.sigmoid(model(load_image(p, SIZE)[0][None]))[0] for p in paths]
    res, err = _predict(capsys, "--checkpoint", calibrated["path"], *paths)
    assert "thresholds: per-class, from the checkpoint" in err
    for r, p in zip(res, probs):
        want = {FASHION_CLASSES[c] for c in range(10) if float(p[c]) >= t[c]}
        assert set(r["labels"]) == want
        assert list(r["thresholds"].values()) == t
    # --threshold overrides with one value for every class; a file overrides per class.
    res, err = _predict(capsys, "--checkpoint", calibrated["path"], "--threshold", "0.5", *paths)
    assert "0.5 for every class (--threshold)" in err
    assert [set(r["labels"]) for r in res] == [
        {FASHION_CLASSES[c] for c in range(10) if float(p[c]) >= 0.5} for p in probs]
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"thresholds": [0.01] * 10}))
    res, err = _predict(capsys, "--checkpoint", calibrated["path"], "--thresholds", str(f), *paths)
    assert f"per-class, from {f}" in err and all(len(r["labels"]) == 10 for r in res)
    f.write_text(json.dumps([0.5] * 3))
    assert predict.main(["--checkpoint", calibrated["path"], "--thresholds", str(f), *paths]) == 2
    assert "3 per-class thresholds for 10 classes" in capsys.readouterr().err


def test_predict_without_stored_thresholds_keeps_the_single_one(calibrated, fmnist, tmp_path, capsys):
    paths = _images(tmp_path, fmnist, n=2)
    res, err = _predict(capsys, "--checkpoint", calibrated["plain"], *paths)
    assert "0.5 for every class (the checkpoint has no per-class thresholds)" in err
    assert all(set(r["thresholds"].values()) == {0.5} for r in res)
    assert all(r["probabilities"][n] >= 0.5 for r in res for n in r["labels"])


def test_export_copies_them_into_every_sidecar_and_runners_apply_them(calibrated, fmnist, tmp_path, capsys):
    t = load_checkpoint(calibrated["path"])["thresholds"]
    repo = tmp_path / "repo"
    rc = ex.main(["--checkpoint", calibrated["path"], "--onnx", str(tmp_path / "m.onnx"), "--fp16",
                  "--triton-repo", str(repo), "--max-batch", "4", "--opt-batch", "2", "--no-verify"])
    assert rc == 0, capsys.readouterr().err
    assert "thresholds in every sidecar: per-class, 10 from the checkpoint" in capsys.readouterr().out
    sides = [tmp_path / "m.onnx.json", tmp_path / "m.fp16.onnx.json", repo / "fastmlr_baseline" / "fastmlr.json"]
    for side in sides:
        assert json.load(open(side))["thresholds"] == t, side
    r = runtime.load(str(tmp_path / "m.onnx"))
    assert r.thresholds == t
    p, _, x = _val_scores(calibrated["path"], fmnist, n=6)
    got = r.labels(x)
    probs = r.predict(x)
    for row, pr in zip(got, probs):
        assert {name for name, _ in row} == {FASHION_CLASSES[c] for c in range(10) if float(pr[c]) >= t[c]}
    # A checkpoint without them: sidecars without the key, every class at the single threshold.
    rc = ex.main(["--checkpoint", calibrated["plain"], "--onnx", str(tmp_path / "p.onnx"), "--max-batch", "4",
                  "--opt-batch", "2", "--no-verify", "--threshold", "0.4"])
    assert rc == 0
    assert "0.4 for every class (the checkpoint has none" in capsys.readouterr().out
    assert "thresholds" not in json.load(open(tmp_path / "p.onnx.json"))
    assert runtime.load(str(tmp_path / "p.onnx")).thresholds == [0.4] * 10
    # --single-threshold leaves them out on purpose.
    rc = ex.main(["--checkpoint", calibrated["path"], "--onnx", str(tmp_path / "s.onnx"), "--max-batch", "4",
                  "--opt-batch", "2", "--no-verify", "--single-threshold"])
    assert rc == 0 and "thresholds" not in json.load(open(tmp_path / "s.onnx.json"))


@pytest.mark.parametrize("cmd,argv,expected", [
    ("evaluate", ["--calibrate-thresholds", "--min-positives", "0"], "--min-positives 0: expected >= 1"),
    ("evaluate", ["--calibrate-thresholds", "--threshold", "1.5"], "--threshold 1.5: expected a probability in (0, 1)"),
    ("predict", ["--thresholds", "{missing}"], "no such file"),
    ("predict", ["--thresholds", "{bad}"], "cannot be read as JSON"),
    ("predict", ["--thresholds", "{obj}"], "holds no 'thresholds' list"),
    ("predict", ["--thresholds", "{out_of_range}"], "thresholds must be in (0, 1)"),
    ("predict", ["--thresholds", "{obj}", "--threshold", "0.3"], "contradict each other"),
    ("predict", ["--threshold", "0"], "--threshold 0.0: expected a probability in (0, 1)"),
])
def test_threshold_flags_fail_in_one_line(calibrated, fmnist, tmp_path, capsys, cmd, argv, expected):
    files = {"missing": tmp_path / "none.json", "bad": tmp_path / "bad.json", "obj": tmp_path / "obj.json",
             "out_of_range": tmp_path / "range.json"}
    files["bad"].write_text("[0.5,")
    files["obj"].write_text(json.dumps({"threshold": 0.5}))
    files["out_of_range"].write_text(json.dumps([0.5] * 9 + [1.0]))
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    if cmd == "evaluate":
        rc = evaluate.main(["--checkpoint", calibrated["plain"], "--data", "mosaics", "--data-root", fmnist,
                            "--num-images", "8", "--workers", "0", *argv])
    else:
        rc = predict.main(["--checkpoint", calibrated["plain"], *argv, *_images(tmp_path, fmnist, n=1)])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_tensorrt_and_triton_plan_sidecars_carry_them(calibrated, tmp_path, monkeypatch, capsys):
    """The TensorRT path with the recording stand-in for tensorrt of test_export (no GPU needed)."""
    import sys

    from fakes import fake_tensorrt

    from fastmlr.artifact import probe

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt([]))
    monkeypatch.setattr(probe, "gpu_available", lambda: (True, "fake GPU"))
    t = load_checkpoint(calibrated["path"])["thresholds"]
    repo = tmp_path / "repo"
    rc = ex.main(["--checkpoint", calibrated["path"], "--trt", str(tmp_path / "m.plan"), "--triton-repo", str(repo),
                  "--max-batch", "4", "--opt-batch", "2", "--no-verify"])
    assert rc == 0, capsys.readouterr().err
    assert json.load(open(tmp_path / "m.plan.json"))["thresholds"] == t
    served = json.load(open(repo / "fastmlr_baseline" / "fastmlr.json"))
    assert served["artifact"]["format"] == "tensorrt" and served["thresholds"] == t
