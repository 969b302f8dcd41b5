"""The catalogue of user mistakes: each one ends with one line ``error: ...`` naming the file or flag.

Every case runs a command's ``main(argv)`` in this process on tiny fixtures and checks
the exit status (2), that the message names what was wrong, that it is one line, and
that no traceback was printed. Cases that must fail before any work also check that
nothing was written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import fmnist_root
from fastmlr import evaluate, export, predict, train
from fastmlr.checkpoint import load_checkpoint, save_checkpoint

warnings.filterwarnings("ignore", message=".*random")
warnings.filterwarnings("ignore", message=".*embedding")


def targs(env, out, *extra, model="baseline"):
    return [
        "--model", model, "--backbone", "resnet18", "--weights", "none", "--data", "mosaics",
        "--data-root", env.fm, "--train-size", "8", "--val-size", "8", "--image-size", "32", "--epochs", "1",
        "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--embeddings", "random:8",
        "--out", str(out), "--no-progress", "--quiet", *extra,
    ]


def run_main(mod, argv) -> int:
    try:
        return mod.main([str(a) for a in argv])
    except SystemExit as e:  # argparse, or an error that escaped main
        return e.code if isinstance(e.code, int) else 1


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


class Payload:
    """Pickles as a call that creates a file: loading it must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def two_photo_env(tmp_path_factory, name: str) -> types.SimpleNamespace:
    """A folder with two photos (a.png red, b.png blue), classes.txt (cat, dog) and good.jsonl (each photo four
    times, one label set per image), and the Fashion-MNIST fake: the start of this file's and
    test_reliability.py's fixtures."""
    root = tmp_path_factory.mktemp(name)
    e = types.SimpleNamespace(root=root, fm=fmnist_root(tmp_path_factory))
    Image.new("RGB", (40, 40), "red").save(root / "a.png")
    Image.new("RGB", (40, 40), "blue").save(root / "b.png")
    (root / "classes.txt").write_text("cat\ndog\n")
    # One label set per image (an image listed with different labels is refused: test_reliability.py).
    good = "".join(json.dumps({"image": f, "labels": [c]}) + "\n" for f, c in [("a.png", "cat"), ("b.png", "dog")] * 4)
    (root / "good.jsonl").write_text(good)
    return e


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = two_photo_env(tmp_path_factory, "cli")
    root = e.root
    (root / "unknown.jsonl").write_text(
        json.dumps({"image": "a.png", "labels": ["cat"]}) + "\n" + json.dumps({"image": "a.png", "labels": ["cow"]}) + "\n"
    )
    (root / "badjson.jsonl").write_text(json.dumps({"image": "a.png", "labels": ["cat"]}) + '\n{"image": "a.png", "lab\n')
    (root / "empty.jsonl").write_text("\n")
    for name, xml in (("voc_broken", "<annotation><object><name>cat</name>"),
                      ("voc_noname", "<annotation><object><difficult>0</difficult></object></annotation>")):
        os.makedirs(root / name / "ImageSets" / "Main")
        os.makedirs(root / name / "Annotations")
        for split in ("trainval", "test"):
            (root / name / "ImageSets" / "Main" / f"{split}.txt").write_text("000001\n")
        (root / name / "Annotations" / "000001.xml").write_text(xml)
    os.makedirs(root / "voc_nosplit" / "Annotations")
    cats, ims = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], [{"id": 1, "file_name": "a.png"}]
    for split in ("train", "val"):
        write_json(str(root / "coco_badcat" / "annotations" / f"instances_{split}2014.json"),
                   {"categories": cats, "images": ims, "annotations": [{"id": 5, "image_id": 1, "category_id": 7}]})
        write_json(str(root / "coco_noann" / "annotations" / f"instances_{split}2014.json"),
                   {"categories": cats, "images": ims})
    for model in ("baseline", "srdl"):
        assert run_main(train, targs(e, root / model, model=model)) == 0
    e.ckpt = root / "baseline" / "last.pt"
    e.marker = root / "payload-ran"
    torch.save({"format": "fastmlr-checkpoint-v1", "model": "baseline", "x": Payload(str(e.marker))},
               root / "payload.pt")
    raw = e.ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (root / "a_file").write_text("not a folder")
    return e


def resume_dir(env, tmp, src):
    """A fresh --out holding ``src`` as last.pt."""
    out = tmp / "resume"
    os.makedirs(out, exist_ok=True)
    shutil.copy(src, out / "last.pt")
    return out


def no_cuda_device():
    return "cuda" if not torch.cuda.is_available() else "cuda:99"


def ev(env, *extra):
    return ["--checkpoint", env.ckpt, "--data", "mosaics", "--data-root", env.fm, "--num-images", "8",
            "--workers", "0", "--no-progress", "--device", "cpu", *extra]


def pr(env, ckpt, *extra):
    return ["--checkpoint", ckpt, "--device", "cpu", env.root / "a.png", *extra]


def exp(env, *extra):
    return ["--checkpoint", env.ckpt, "--no-verify", *extra]


def read_only(folder, name, data=b"old"):
    """A file the user protected (mode 0444) that a refused command must leave as it was."""
    os.makedirs(folder, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    os.chmod(path, 0o444)
    return path


def lst(env, train_file, val_file="good.jsonl"):
    return ["--data", "list", "--data-root", env.root / train_file, "--val-data-root", env.root / val_file,
            "--classes-file", env.root / "classes.txt"]


# id -> (command, argv(env, tmp), substrings the error line must contain)
CASES = {
    # checkpoints
    "payload-predict": (predict, lambda e, t: pr(e, e.root / "payload.pt"), ["payload.pt", "exec", "refused"]),
    "payload-evaluate": (evaluate, lambda e, t: ev(e, "--checkpoint", e.root / "payload.pt"), ["payload.pt", "refused"]),
    "payload-resume": (train, lambda e, t: targs(e, resume_dir(e, t, e.root / "payload.pt"), "--resume", "--epochs", 2),
                       ["last.pt", "refused"]),
    "truncated-resume": (train, lambda e, t: targs(e, resume_dir(e, t, e.root / "truncated.pt"), "--resume",
                                                   "--epochs", 2), ["last.pt", "truncated"]),
    "truncated-evaluate": (evaluate, lambda e, t: ev(e, "--checkpoint", e.root / "truncated.pt"), ["truncated.pt"]),
    "earlier-run": (train, lambda e, t: targs(e, resume_dir(e, t, e.ckpt)), ["earlier run", "last.pt", "--resume",
                                                                             "--overwrite"]),
    "resume-and-overwrite": (train, lambda e, t: targs(e, t / "o", "--resume", "--overwrite"), ["--resume", "--overwrite"]),
    # data
    "list-unknown-label": (train, lambda e, t: targs(e, t / "o", *lst(e, "unknown.jsonl")), ["unknown.jsonl:2", "cow"]),
    "list-bad-json": (train, lambda e, t: targs(e, t / "o", *lst(e, "badjson.jsonl")), ["badjson.jsonl:2", "JSON"]),
    "list-empty": (train, lambda e, t: targs(e, t / "o", *lst(e, "empty.jsonl")), ["empty.jsonl", "no entries"]),
    "val-empty": (train, lambda e, t: targs(e, t / "o", *lst(e, "good.jsonl", "empty.jsonl")), ["empty.jsonl"]),
    "val-fraction-1": (train, lambda e, t: targs(e, t / "o", "--data", "list", "--data-root", e.root / "good.jsonl",
                                                 "--val-fraction", 1), ["--val-fraction 1"]),
    "voc-broken-xml": (train, lambda e, t: targs(e, t / "o", "--data", "voc", "--data-root", e.root / "voc_broken"),
                       ["000001.xml", "malformed"]),
    "voc-no-name": (train, lambda e, t: targs(e, t / "o", "--data", "voc", "--data-root", e.root / "voc_noname"),
                    ["000001.xml", "<name>"]),
    "voc-no-split": (train, lambda e, t: targs(e, t / "o", "--data", "voc", "--data-root", e.root / "voc_nosplit"),
                     ["trainval.txt", "not found"]),
    "coco-bad-category": (train, lambda e, t: targs(e, t / "o", "--data", "coco", "--data-root", e.root / "coco_badcat"),
                          ["instances_train2014.json", "category_id 7"]),
    "coco-no-annotations": (train, lambda e, t: targs(e, t / "o", "--data", "coco", "--data-root",
                                                      e.root / "coco_noann"), ["instances_train2014.json", "annotations"]),
    # flags, all refused before the data is read (the data root does not exist)
    "batch-size-0": (train, lambda e, t: targs(e, t / "o", "--batch-size", 0), ["--batch-size 0"]),
    "oe-alpha-2": (train, lambda e, t: targs(e, t / "o", "--oe-alpha", 2, model="srdl"), ["--oe-alpha 2", "(0, 1]"]),
    "oe-k-0": (train, lambda e, t: targs(e, t / "o", "--oe-k", 0, model="srdl"), ["--oe-k 0"]),
    "no-oe-on-baseline": (train, lambda e, t: targs(e, t / "o", "--no-oe"), ["--no-oe", "use_oe", "baseline"]),
    "unknown-model": (train, lambda e, t: targs(e, t / "o", "--model", "nope", "--data", "voc", "--data-root", t / "x"),
                      ["--model", "nope"]),
    "unknown-backbone": (train, lambda e, t: targs(e, t / "o", "--backbone", "vgg", "--data", "voc", "--data-root", t / "x"),
                         ["--backbone vgg"]),
    "unknown-backend": (train, lambda e, t: targs(e, t / "o", "--backend", "nope", "--data", "voc", "--data-root", t / "x"),
                        ["--backend nope", "known backends"]),
    "evaluate-unknown-backend": (evaluate, lambda e, t: ev(e, "--backend", "nope"), ["--backend nope"]),
    "predict-unknown-backend": (predict, lambda e, t: pr(e, e.ckpt, "--backend", "nope"), ["--backend nope"]),
    "unknown-ablation": (train, lambda e, t: targs(e, t / "o", "--ablation", "nope", model="srdl"), ["--ablation nope"]),
    "unknown-data": (train, lambda e, t: targs(e, t / "o", "--data", "imagenet"), ["--data imagenet"]),
    "out-is-file": (train, lambda e, t: targs(e, e.root / "a_file"), ["--out", "a_file", "is a file"]),
    "out-under-file": (train, lambda e, t: targs(e, e.root / "a_file" / "run"), ["--out", "a_file", "cannot be created"]),
    "epochs-0": (train, lambda e, t: targs(e, t / "o", "--epochs", 0), ["--epochs 0"]),
    "max-steps-0": (train, lambda e, t: targs(e, t / "o", "--max-steps", 0), ["--max-steps 0"]),
    "image-size-7": (train, lambda e, t: targs(e, t / "o", "--image-size", 7), ["--image-size 7", ">= 32"]),
    "lr-huge": (train, lambda e, t: targs(e, t / "o", "--lr", 1e6), ["--lr 1000000.0"]),
    "lr-negative": (train, lambda e, t: targs(e, t / "o", "--lr", -1), ["--lr -1.0"]),
    "weights-missing": (train, lambda e, t: targs(e, t / "o", "--weights", t / "none.pth"), ["--weights", "none.pth"]),
    "train-device": (train, lambda e, t: targs(e, t / "o", "--device", no_cuda_device()), ["--device"]),
    # --resume mismatches
    "resume-missing": (train, lambda e, t: targs(e, t / "o", "--resume", "--epochs", 2), ["last.pt", "does not exist"]),
    "resume-model": (train, lambda e, t: targs(e, resume_dir(e, t, e.ckpt), "--resume", "--epochs", 2, model="srdl"),
                     ["--model srdl", "the run's 'baseline'", "defines its model"]),
    "resume-backbone": (train, lambda e, t: targs(e, resume_dir(e, t, e.ckpt), "--resume", "--epochs", 2, "--backbone",
                                                  "mobilenet_v2"), ["backbone", "mobilenet_v2"]),
    "resume-classes": (train, lambda e, t: targs(e, resume_dir(e, t, e.ckpt), "--resume", "--epochs", 2,
                                                 *lst(e, "good.jsonl")), ["--data list", "the run's 'mosaics'"]),
    "resume-ablation": (train, lambda e, t: targs(e, resume_dir(e, t, e.root / "srdl" / "last.pt"), "--resume", "--epochs",
                                                  2, "--ablation", "car", model="srdl"), ["--resume", "--ablation car"]),
    "resume-embedding-size": (train, lambda e, t: targs(e, resume_dir(e, t, e.root / "srdl" / "last.pt"), "--resume",
                                                        "--epochs", 2, "--embeddings", "random:4", model="srdl"),
                              ["--resume", "--embeddings random:4"]),
    "resume-nothing-left": (train, lambda e, t: targs(e, resume_dir(e, t, e.ckpt), "--resume"), ["--epochs 1",
                                                                                                 "nothing to train"]),
    # evaluate and predict
    "predict-device": (predict, lambda e, t: pr(e, e.ckpt, "--device", no_cuda_device()), ["--device"]),
    "predict-missing-checkpoint": (predict, lambda e, t: pr(e, t / "nope.pt"), ["nope.pt", "does not exist"]),
    "evaluate-device": (evaluate, lambda e, t: ev(e, "--device", no_cuda_device()), ["--device"]),
    "evaluate-batch-size-0": (evaluate, lambda e, t: ev(e, "--batch-size", 0), ["--batch-size 0"]),
    "evaluate-other-classes": (evaluate, lambda e, t: ev(e, "--data", "list", "--data-root", e.root / "good.jsonl",
                                                         "--classes-file", e.root / "classes.txt"), ["other classes"]),
    # export: every target is checked before the first file is written
    "export-read-only-onnx": (export, lambda e, t: exp(e, "--onnx", read_only(t, "ro.onnx")),
                              ["--onnx", "ro.onnx", "read-only", "mode 0444", "chmod u+w"]),
    "export-read-only-sidecar": (export, lambda e, t: (read_only(t, "m.pt2.json"), exp(e, "--onnx", t / "new.onnx",
                                                                                        "--aoti", t / "m.pt2"))[1],
                                 ["--aoti sidecar", "m.pt2.json", "read-only"]),
    "export-read-only-fp16": (export, lambda e, t: (read_only(t, "m.fp16.onnx"), exp(e, "--onnx", t / "m.onnx",
                                                                                     "--fp16"))[1],
                              ["--fp16", "m.fp16.onnx", "read-only"]),
    "export-onnx-is-folder": (export, lambda e, t: exp(e, "--onnx", t), ["--onnx", "is a folder"]),
    "export-under-file": (export, lambda e, t: exp(e, "--onnx", e.root / "a_file" / "m.onnx"),
                          ["--onnx", "a_file", "is a file"]),
    "export-nothing": (export, lambda e, t: exp(e), ["nothing to export"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_clean_line(case, env, tmp_path, capsys):
    cmd, argv, needles = CASES[case]
    rc = run_main(cmd, argv(env, tmp_path))
    out, err = capsys.readouterr()
    assert rc == 2, (case, out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not os.path.exists(env.marker), "the checkpoint's payload ran"
    if cmd is train and os.path.isdir(tmp_path / "o"):
        assert not os.listdir(tmp_path / "o"), "a refused run wrote files"
    if cmd is export:  # refused before any work: the protected files are intact, nothing else was written
        for p in tmp_path.iterdir():
            assert p.read_bytes() == b"old" and (p.stat().st_mode & 0o777) == 0o444, p


def test_debug_shows_the_traceback(env, tmp_path):
    with pytest.raises(SystemExit, match="--batch-size 0"):
        train.main(targs(env, tmp_path / "o", "--batch-size", "0", "--debug"))


def test_evaluate_prints_the_metrics_when_the_json_cannot_be_written(env, capsys):
    rc = run_main(evaluate, ev(env, "--json", env.root / "a_file" / "eval.json"))
    out, err = capsys.readouterr()
    assert rc == 2 and "mAP" in out and "Traceback" not in err
    assert "--json" in err and "a_file" in err


def test_nan_first_seen_in_validation_stops_cleanly(env, tmp_path, monkeypatch, capsys):
    from fastmlr.models.base import MLRModel

    real = MLRModel.forward
    monkeypatch.setattr(MLRModel, "forward", lambda self, x: real(self, x) * (float("nan") if not self.training else 1.0))
    rc = run_main(train, targs(env, tmp_path / "o"))
    err = capsys.readouterr().err
    assert rc == 2 and "validation scores are not finite after epoch 1" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "o" / "last.pt")


def test_weights_overflowing_in_the_optimiser_stop_cleanly(env, tmp_path, monkeypatch, capsys):
    real = torch.optim.Adam.step

    def overflowing_step(self, *a, **k):
        out = real(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", overflowing_step)
    rc = run_main(train, targs(env, tmp_path / "o"))
    err = capsys.readouterr().err
    assert rc == 2 and "weights overflowed at epoch 1, step 1" in err and "--lr" in err and "Traceback" not in err


def test_overwrite_replaces_an_earlier_run(env, tmp_path):
    out = resume_dir(env, tmp_path, env.ckpt)
    (out / "best.pt").write_bytes(b"old")
    (out / "log.jsonl").write_text(json.dumps({"epoch": 7}) + "\n")
    stale = out / ".metrics.json.k1ll3d.tmp"  # a write of an earlier process that was killed
    stale.write_text("{")
    os.utime(stale, (time.time() - 600, time.time() - 600))
    assert run_main(train, targs(env, out, "--overwrite", "--seed", "5")) == 0
    assert load_checkpoint(str(out / "last.pt"))["args"]["seed"] == 5
    assert (out / "best.pt").read_bytes() != b"old"
    assert [json.loads(x)["epoch"] for x in open(out / "log.jsonl")] == [1]
    assert not stale.exists()


def test_resume_with_a_new_lr_applies_it_and_records_it(env, tmp_path):
    out = resume_dir(env, tmp_path, env.ckpt)
    assert run_main(train, targs(env, out, "--resume", "--epochs", "2", "--lr", "2e-4")) == 0
    ck = load_checkpoint(str(out / "last.pt"))
    assert json.load(open(out / "args.json"))["lr"] == 2e-4 == ck["args"]["lr"]
    assert ck["optimizer"]["param_groups"][0]["initial_lr"] == 2e-4
    assert ck["history"][-1]["lr"] == pytest.approx(2e-4)  # no step boundary within 2 epochs (lr step 10)
    # Left out on --resume, the checkpoint's value is kept and recorded, not the default.
    out2 = resume_dir(env, tmp_path / "b", env.ckpt)
    assert run_main(train, _without_lr(targs(env, out2, "--resume", "--epochs", "2"))) == 0
    assert json.load(open(out2 / "args.json"))["lr"] == 1e-3


def _without_lr(argv):
    i = argv.index("--lr")
    return argv[:i] + argv[i + 2:]


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "last.pt"
    stale, live, other = (tmp_path / ".last.pt.abc123.tmp", tmp_path / ".last.pt.def456.tmp",
                          tmp_path / ".best.pt.abc123.tmp")
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    os.utime(live, (time.time() + 60, time.time() + 60))  # written after this process started: a live write
    save_checkpoint(str(target), {"model": "m", "num_classes": 1, "config": {}, "class_names": ["a"], "state_dict": {}})
    assert not stale.exists() and live.exists() and other.exists()
    assert load_checkpoint(str(target))["class_names"] == ["a"]


def test_atomic_writes_respect_the_targets_mode(tmp_path):
    from fastmlr.files import ReadOnlyTarget, atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    new_private, new_public, kept, ro = (tmp_path / n for n in ("private", "public", "kept", "ro"))
    atomic_write_bytes(str(new_private), lambda fh: fh.write(b"x"))
    atomic_write_bytes(str(new_public), lambda fh: fh.write(b"x"), publish=True)
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    atomic_write_bytes(str(kept), lambda fh: fh.write(b"new"), publish=True)
    ro.write_bytes(b"old")
    os.chmod(ro, 0o444)
    with pytest.raises(ReadOnlyTarget, match="ro is read-only \\(mode 0444\\)"):
        atomic_write_bytes(str(ro), lambda fh: fh.write(b"new"))
    mode = {p.name: p.stat().st_mode & 0o777 for p in (new_private, new_public, kept, ro)}
    assert mode == {"private": 0o600, "public": 0o666 & ~umask, "kept": 0o640, "ro": 0o444}
    assert kept.read_bytes() == b"new" and ro.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "private", "public", "ro"]  # no temporaries left


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from fastmlr.data import load_image
    from fastmlr.data.transforms import open_rgb

    a = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(a).save(tmp_path / "deep.png")
    got = np.asarray(open_rgb(tmp_path / "deep.png"))
    want = np.floor(a.astype(np.float64) / 257.0 + 0.5)  # float64 reference of v * 255 / 65535, rounded
    assert got.shape == (64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], want)
    assert (got == 255).mean() < 0.01
    t, _ = load_image(tmp_path / "deep.png", 64)
    assert float(t.std()) > 0.5  # a clipped image would be almost constant



def test_backend_flag_is_the_ops_context_of_the_whole_command(env, tmp_path, monkeypatch):
    from fastmlr import ops
    from fastmlr.models.base import MLRModel

    seen = []
    real = MLRModel.forward
    monkeypatch.setattr(MLRModel, "forward", lambda self, x: (seen.append(ops.current_backend()), real(self, x))[1])
    monkeypatch.delenv("FASTMLR_BACKEND", raising=False)
    assert run_main(train, targs(env, tmp_path / "o", "--backend", "reference")) == 0
    assert run_main(evaluate, ev(env, "--backend", "reference", "--json", tmp_path / "e.json")) == 0
    assert run_main(predict, pr(env, env.ckpt, "--backend", "reference")) == 0
    assert seen and set(seen) == {"reference"}, seen
    assert ops.current_backend() is None  # the block ended with the command


def test_export_keeps_a_replaced_files_mode_and_removes_stale_temporaries(env, tmp_path, capsys):
    from fastmlr.artifact import contract

    target = tmp_path / "m.onnx"
    target.write_bytes(b"old graph")
    os.chmod(target, 0o640)
    stale, other = tmp_path / ".m.onnx.k1ll3d.tmp", tmp_path / ".notes.txt.k1ll3d.tmp"
    for p in (stale, other):
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 600, time.time() - 600))  # an export of an earlier process that was killed
    assert run_main(export, exp(env, "--onnx", target)) == 0
    out = capsys.readouterr().out
    assert f"removed {stale}" in out and not stale.exists() and other.exists()
    assert (target.stat().st_mode & 0o777) == 0o640 and target.read_bytes() != b"old graph"
    side = contract.read_sidecar(str(target))
    assert side["artifact"]["sha256"] == contract.file_sha256(str(target)) and contract.edited_fields(side) == []
