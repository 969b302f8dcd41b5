"""The third reliability catalogue (issue 22): no artefact overwrites an input, one run per folder, data that
cannot train is refused, sizes are bounded, disk full / SIGINT / FIFOs are answered in one line.

Command cases run a command's ``main(argv)`` in this process on tiny fixtures, as test_cli_errors.py does,
and check the exit status, the one ``error:`` line and what it names, and that the files that were there
are intact afterwards (byte for byte) and nothing else was written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import torch

from fastmlr import cooccurrence, evaluate, export, predict, train
from test_cli_errors import run_main, targs, two_photo_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = two_photo_env(tmp_path_factory, "rel")
    root = e.root
    line = lambda img, labels: json.dumps({"image": img, "labels": labels}) + "\n"  # noqa: E731
    (root / "conflict.jsonl").write_text(line("a.png", ["cat"]) + line("b.png", ["dog"]) + line("a.png", ["dog"])
                                         + line("./a.png", ["cat", "dog"]))
    (root / "repeat.jsonl").write_text(line("a.png", ["cat"]) * 3 + line("b.png", ["dog"]) * 5)
    (root / "missing.jsonl").write_text("".join(line(f"gone{i}.png", ["cat"]) for i in range(8)))
    (root / "junk.png").write_bytes(b"not an image at all")
    (root / "unreadable.jsonl").write_text(line("junk.png", ["cat"]) * 4)
    voc = root / "voc_nojpeg"
    os.makedirs(voc / "ImageSets" / "Main")
    os.makedirs(voc / "Annotations")
    os.makedirs(voc / "JPEGImages")
    ids = [f"{i:06d}" for i in range(8)]
    for split in ("trainval", "test"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for i in ids:
        (voc / "Annotations" / f"{i}.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    cats, ims = [{"id": 1, "name": "cat"}], [{"id": 1, "name": "a.png"}]
    for split in ("train", "val"):
        os.makedirs(root / "coco_nofile" / "annotations", exist_ok=True)
        (root / "coco_nofile" / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(
            {"categories": cats, "images": ims, "annotations": [{"id": 5, "image_id": 1, "category_id": 1}]}))
    assert run_main(train, targs(e, root / "run")) == 0
    e.ckpt = root / "run" / "last.pt"
    os.mkfifo(root / "fifo.png")
    (root / "deep.json").write_text("[" * 100000)
    (root / "deep.jsonl").write_text(json.dumps({"image": "a.png", "labels": ["cat"]}) + "\n" + "[" * 100000 + "\n")
    return e


def lst(env, train_file, val_file="good.jsonl"):
    return ["--data", "list", "--data-root", env.root / train_file, "--val-data-root", env.root / val_file,
            "--classes-file", env.root / "classes.txt"]


def victim(env, t, name="victim.pt"):
    """A copy of the trained checkpoint that a refused export must leave as it was."""
    shutil.copy(env.ckpt, t / name)
    return t / name


def linked(env, t):
    os.symlink(victim(env, t), t / "link.onnx")
    return t / "link.onnx"


def exp(env, ckpt, *extra):
    return ["--checkpoint", ckpt, "--no-verify", *extra]


# id -> (command, argv(env, tmp), substrings the error line must contain)
CASES = {
    "export-onto-its-checkpoint": (export, lambda e, t: exp(e, victim(e, t), "--onnx", t / "victim.pt"),
                                   ["--onnx", "victim.pt", "--checkpoint", "input", "overwritten"]),
    "export-onto-its-checkpoint-through-a-link": (export, lambda e, t: exp(e, t / "victim.pt", "--onnx", linked(e, t)),
                                                  ["--onnx", "link.onnx", "--checkpoint", "victim.pt"]),
    "export-onto-its-checkpoint-dotted": (export, lambda e, t: exp(e, victim(e, t), "--aoti",
                                                                   f"{t}/./sub/../victim.pt"), ["--aoti", "--checkpoint"]),
    "export-two-targets-one-file": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "same.pt2", "--aoti",
                                                             t / "same.pt2"), ["--aoti", "same.pt2", "--onnx",
                                                                               "another target"]),
    "export-target-is-a-sidecar": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "m.onnx", "--trt",
                                                            t / "m.onnx.json"), ["m.onnx.json", "--onnx sidecar"]),
    "export-onto-a-verify-image": (export, lambda e, t: (shutil.copy(e.root / "a.png", t / "v.onnx"),
                                                         ["--checkpoint", e.ckpt, "--onnx", t / "v.onnx",
                                                          "--verify-images", t / "v.onnx"])[1],
                                   ["--onnx", "v.onnx", "--verify-images"]),
    "export-fp16-fused": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "f.onnx", "--fp16", "--onnx-ops", "fused"),
                          ["--onnx-ops fused", "--fp16", "standard op set"]),
    "export-trt-fused": (export, lambda e, t: exp(e, e.ckpt, "--trt", t / "f.plan", "--onnx-ops", "fused"),
                         ["--onnx-ops fused", "--trt"]),
    "export-image-size-16": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "s.onnx", "--image-size", 16),
                             ["--image-size 16", ">= 32"]),
    "export-image-size-huge": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "s.onnx", "--image-size", 100000),
                               ["--image-size 100000", "<= 4096"]),
    "predict-image-size-huge": (predict, lambda e, t: ["--checkpoint", e.ckpt, "--device", "cpu", e.root / "a.png",
                                                       "--image-size", 100000], ["--image-size 100000", "<= 4096"]),
    "predict-fifo-checkpoint": (predict, lambda e, t: ["--checkpoint", e.root / "fifo.png", "--device", "cpu",
                                                       e.root / "a.png"], ["fifo.png", "not a regular file"]),
    "predict-fifo-thresholds": (predict, lambda e, t: ["--checkpoint", e.ckpt, "--device", "cpu", e.root / "a.png",
                                                       "--thresholds", e.root / "fifo.png"], ["--thresholds", "FIFO"]),
    "predict-deep-thresholds": (predict, lambda e, t: ["--checkpoint", e.ckpt, "--device", "cpu", e.root / "a.png",
                                                       "--thresholds", e.root / "deep.json"], ["--thresholds",
                                                                                              "nests too deep"]),
    "export-fifo-checkpoint": (export, lambda e, t: exp(e, e.root / "fifo.png", "--onnx", t / "m.onnx"),
                               ["fifo.png", "not a regular file"]),
    "train-weights-text": (train, lambda e, t: targs(e, t / "o", "--weights", e.root / "classes.txt"),
                           ["classes.txt", "not a torch state dict"]),
    "export-batch-huge": (export, lambda e, t: exp(e, e.ckpt, "--onnx", t / "b.onnx", "--opt-batch", 100000,
                                                   "--max-batch", 100000), ["--max-batch <= 1024", "100000"]),
    "evaluate-json-onto-its-checkpoint": (evaluate, lambda e, t: ["--checkpoint", victim(e, t), "--data", "mosaics",
                                                                  "--data-root", e.fm, "--num-images", 8, "--workers",
                                                                  0, "--no-progress", "--device", "cpu", "--json",
                                                                  t / "victim.pt"], ["--json", "--checkpoint",
                                                                                     "overwritten"]),
    "predict-maps-onto-its-image": (predict, lambda e, t: (shutil.copy(e.root / "a.png", t / "in.png"),
                                                           ["--checkpoint", e.ckpt, "--device", "cpu", t / "in.png",
                                                            "--attention-maps", t / "in.png"])[1],
                                    ["--attention-maps", "in.png", "image", "overwritten"]),
    "cooccurrence-onto-its-classes-file": (cooccurrence, lambda e, t: (
        shutil.copy(e.root / "classes.txt", t / "c.txt"),
        ["--data", "list", "--data-root", e.root / "good.jsonl", "--classes-file", t / "c.txt", "--out", t / "c.txt",
         "--cache-dir", ""])[1], ["--out", "c.txt", "--classes-file"]),
    "train-list-deep-json": (train, lambda e, t: targs(e, t / "o", *lst(e, "deep.jsonl")),
                             ["deep.jsonl:2", "nests too deep"]),
    "train-voc-no-jpeg": (train, lambda e, t: targs(e, t / "o", "--data", "voc", "--data-root", e.root / "voc_nojpeg"),
                          ["training data", "none of its 8 images exists", "000000.jpg"]),
    "train-list-missing": (train, lambda e, t: targs(e, t / "o", *lst(e, "missing.jsonl")),
                           ["missing.jsonl", "none of its 8 images exists"]),
    "train-list-unreadable": (train, lambda e, t: targs(e, t / "o", *lst(e, "unreadable.jsonl")),
                              ["unreadable.jsonl", "none of its 4 images can be read", "junk.png"]),
    "val-list-unreadable": (train, lambda e, t: targs(e, t / "o", *lst(e, "good.jsonl", "unreadable.jsonl")),
                            ["validation data", "can be read"]),
    "train-list-conflicting-labels": (train, lambda e, t: targs(e, t / "o", *lst(e, "conflict.jsonl")),
                                      ["conflict.jsonl", "a.png", "different labels", "['cat']", "['dog']"]),
    "train-coco-no-file-name": (train, lambda e, t: targs(e, t / "o", "--data", "coco", "--data-root",
                                                          e.root / "coco_nofile"), ["instances_train2014.json",
                                                                                    "file_name"]),
    "cooccurrence-out-folder": (cooccurrence, lambda e, t: ["--data", "list", "--data-root", e.root / "good.jsonl",
                                                            "--classes-file", e.root / "classes.txt", "--out", t,
                                                            "--cache-dir", ""], ["--out", "is a folder"]),
}


def _snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


@contextlib.contextmanager
def fifo_watchdog(path, after=60.0):
    """A reader blocked on the FIFO ``path`` is released (it reads EOF) after ``after`` s: a regression fails, not hangs."""
    done = threading.Event()

    def release():
        if not done.wait(after):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    th = threading.Thread(target=release, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()


@pytest.mark.parametrize("case", list(CASES))
def test_catalogue_case_is_one_clean_line_and_loses_nothing(case, env, tmp_path, capsys):
    cmd, argv, needles = CASES[case]
    argv = argv(env, tmp_path)
    before = _snapshot(tmp_path)
    with fifo_watchdog(env.root / "fifo.png"):
        rc = run_main(cmd, argv)
    out, err = capsys.readouterr()
    assert rc == 2, (case, out, err)
    assert "Traceback" not in err + out, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert _snapshot(tmp_path) == before, "a refused command changed or wrote files"
    if cmd is train:
        assert not os.path.exists(tmp_path / "o"), "a refused run left its folder"


def test_predict_skips_a_fifo_image_in_one_line_and_predicts_the_rest(env, capsys):
    """An image argument that is a FIFO is not opened (it would block): one line names it, the readable
    image is still predicted, and the exit status says something was skipped (predict's own-photos rule)."""
    with fifo_watchdog(env.root / "fifo.png"):
        rc = run_main(predict, ["--checkpoint", env.ckpt, "--device", "cpu", "--json", env.root / "fifo.png",
                                env.root / "a.png"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in err + out, err
    skipped = [ln for ln in err.splitlines() if ln.startswith("skipped")]
    assert len(skipped) == 1 and "fifo.png" in skipped[0] and "FIFO" in skipped[0], err
    records = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert [os.path.basename(r["image"]) for r in records if "error" not in r] == ["a.png"], out


def test_repeated_entries_with_the_same_labels_are_reported(env, tmp_path, capsys):
    with pytest.warns(UserWarning, match="repeat.jsonl.*6 entries repeat an image already listed"):
        assert run_main(train, targs(env, tmp_path / "o", *lst(env, "repeat.jsonl"))) == 0


# -- the run folder's lock ------------------------------------------------------------------------------------
def test_a_second_training_into_a_locked_folder_is_refused(env, tmp_path, capsys):
    from fastmlr.runlock import LOCK_NAME, run_lock

    out = tmp_path / "o"
    with run_lock(str(out)) as lock:
        holder = json.load(open(lock))
        rc = run_main(train, targs(env, out))
        assert sorted(os.listdir(out)) == [LOCK_NAME], "the refused run wrote into the locked folder"
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "being written by another training" in line[0]
    assert f"pid {os.getpid()}" in line[0] and holder["pid"] == os.getpid() and LOCK_NAME in line[0]
    assert not out.exists(), "the lock's folder was created by the lock and is removed with it"


def test_the_lock_of_a_dead_process_is_taken_over_in_one_line(env, tmp_path, capsys):
    from fastmlr.runlock import LOCK_NAME

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o"
    os.makedirs(out)
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": "h", "started": 0, "command": "train"}))
    assert run_main(train, [a for a in targs(env, out) if a != "--quiet"]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if "took over the lock" in ln]
    assert len(said) == 1 and f"pid {dead.pid}" in said[0]
    assert sorted(os.listdir(out)) == ["args.json", "best.pt", "last.pt", "log.jsonl", "metrics.json"]


def test_two_trainings_started_together_one_is_refused(env, tmp_path):
    """Two processes, one --out: exactly one trains; the log holds one run."""
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "fastmlr.train", *[str(a) for a in targs(env, out)]]
    envv = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envv)
             for _ in range(2)]
    res = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in res)
    refused = [err for rc, err in res if rc == 2]
    if codes == [0, 0]:
        pytest.skip("the two runs did not overlap on this machine (one ended before the other took the lock)")
    assert codes == [0, 2], res
    assert ("being written by another training" in refused[0]) or ("holds an earlier run" in refused[0]), refused
    assert [json.loads(x)["epoch"] for x in open(out / "log.jsonl")] == [1]


# -- disk full, SIGINT ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(folder, size="600k"):
    """A tmpfs of ``size`` at ``folder`` where root may mount one; None otherwise (the caller injects ENOSPC)."""
    os.makedirs(folder)
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _inject_enospc(monkeypatch, after_bytes=2000):
    """Where no small filesystem can be mounted: writes through files.atomic_write_bytes fail as a full disk does."""
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh, self.n = fh, 0

        def write(self, b):
            self.n += len(b)
            if self.n > after_bytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(b)

        def __getattr__(self, k):
            return getattr(self.fh, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.fh.__exit__(*a)

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return Full(fh) if "w" in mode and ".tmp" in os.path.basename(str(path)) else fh

    monkeypatch.setattr(builtins, "open", fake_open)


def test_disk_full_during_training_is_one_line_and_keeps_the_old_files(env, tmp_path, monkeypatch, capsys):
    with small_filesystem(tmp_path / "fs", size="300k") as mounted:
        out = tmp_path / "fs" / "run"
        os.makedirs(out)
        (out / "keep.txt").write_text("an earlier file")
        if not mounted:
            _inject_enospc(monkeypatch)
        rc = run_main(train, targs(env, out))
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        line = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and "no space left on the device" in line[0] and str(out) in line[0], err
        assert (out / "keep.txt").read_text() == "an earlier file"
        assert not [p for p in os.listdir(out) if p.endswith(".tmp") or ".tmp." in p], os.listdir(out)
        assert not (out / "last.pt").exists() or torch.load(out / "last.pt", weights_only=False)


def test_disk_full_during_export_is_one_line(env, tmp_path, monkeypatch, capsys):
    with small_filesystem(tmp_path / "fs", size="200k") as mounted:
        if not mounted:
            _inject_enospc(monkeypatch)
        target = tmp_path / "fs" / "m.onnx"
        rc = run_main(export, ["--checkpoint", env.ckpt, "--no-verify", "--onnx", target])
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        line = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and "no space left on the device" in line[0], err
        assert not [p for p in os.listdir(tmp_path / "fs") if ".tmp" in p]


def test_sigint_during_training_is_one_line_and_status_130(env, tmp_path):
    from fastmlr.runlock import LOCK_NAME

    out = tmp_path / "o"
    argv = [str(a) for a in targs(env, out, "--epochs", "1000", "--train-size", "64") if a != "--quiet"]
    envv = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    # Ctrl-C as in a terminal: a suite started in the background by a non-interactive shell (as CI may start
    # it) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler; the child restores
    # the default so that the run sees the signal a user's Ctrl-C sends.
    p = subprocess.Popen([sys.executable, "-m", "fastmlr.train", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=envv,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:  # the run has started (its header line) before the signal is sent
            if line.startswith("fastmlr "):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "interrupted" in lines[0]
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_disk_full_during_an_aoti_export_is_one_line_not_an_abort(env, tmp_path, monkeypatch, capsys):
    """torch's package writer aborts the process on a full disk; the package is staged and copied by Python."""
    with small_filesystem(tmp_path / "fs", size="2m") as mounted:
        if not mounted:
            _inject_enospc(monkeypatch)
        (tmp_path / "fs" / "m.pt2").write_bytes(b"the earlier package")
        rc = run_main(export, ["--checkpoint", env.ckpt, "--no-verify", "--aoti", tmp_path / "fs" / "m.pt2",
                               "--aoti-ops", "reference"])
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        line = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(line) == 1 and "no space left on the device" in line[0] and "m.pt2" in line[0], err
        assert (tmp_path / "fs" / "m.pt2").read_bytes() == b"the earlier package"
        assert os.listdir(tmp_path / "fs") == ["m.pt2"]
