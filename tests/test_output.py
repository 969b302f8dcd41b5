"""What a person reads: bars on a terminal only, one summary line per epoch everywhere, the demo's first line."""

import os
import pty
import re
import subprocess
import sys

import pytest

from fakes import fmnist_root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = re.compile(r"^epoch (\d+)/(\d+): loss \d+\.\d{4}, val mAP \d+\.\d\d CF1 \d+\.\d\d OF1 \d+\.\d\d, "
                     r"\d+\.\d s \(\d+\.\d img/s\)$")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "FASTMLR_PROGRESS"}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    return fmnist_root(tmp_path_factory)


def test_training_into_a_log_file_has_no_bar_frames_and_one_line_per_epoch(tmp_path, fmnist):
    log = tmp_path / "log.txt"
    with open(log, "wb") as fh:  # stdout and stderr into one file, as `make demo > log 2>&1`
        r = subprocess.run(
            [sys.executable, "-m", "fastmlr.train", "--model", "baseline", "--backbone", "resnet18", "--weights", "none",
             "--data", "mosaics", "--data-root", fmnist, "--train-size", "32", "--val-size", "16",
             "--image-size", "64", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--workers", "0",
             "--device", "cpu", "--out", str(tmp_path / "run")],  # no --no-progress: the bars decide themselves
            stdout=fh, stderr=subprocess.STDOUT, env=_env(), timeout=600)
    text = log.read_bytes().decode()
    assert r.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    summaries = [SUMMARY.match(line) for line in text.splitlines()]
    assert [(m.group(1), m.group(2)) for m in summaries if m] == [("1", "2"), ("2", "2")], text
    assert not [line for line in text.splitlines() if line.startswith("epoch ") and not SUMMARY.match(line)]


_BARS = ("from fastmlr.progress import progress_bar\n"
         "for _ in progress_bar(range(3), desc='x', mininterval=0): pass\n")


def _bars_on_a_terminal(env) -> bytes:
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-c", _BARS], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=slave, env=env, timeout=120)
        os.close(slave)
        slave = None
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            out += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert r.returncode == 0
    return out


def test_bars_are_drawn_on_a_terminal_only():
    assert b"\r" in _bars_on_a_terminal(_env())  # a terminal: tqdm's frames
    assert b"\r" not in _bars_on_a_terminal(_env(FASTMLR_PROGRESS="0"))  # turned off by the variable
    r = subprocess.run([sys.executable, "-c", _BARS], capture_output=True, env=_env(), timeout=120)
    assert r.returncode == 0 and r.stderr == b""  # a pipe: nothing at all
    r = subprocess.run([sys.executable, "-c", _BARS], capture_output=True, env=_env(FASTMLR_PROGRESS="1"), timeout=120)
    assert b"\r" in r.stderr  # forced on


def test_progress_bars_come_from_one_helper():
    """Every tqdm bar of the package goes through fastmlr.progress (which decides by the terminal)."""
    users = []
    for folder, _, files in os.walk(os.path.join(ROOT, "fastmlr")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                src = open(path).read()
                if re.search(r"^\s*(from tqdm import|import tqdm)", src, re.M):
                    users.append(os.path.relpath(path, ROOT))
    assert users == [os.path.join("fastmlr", "progress.py")], users


def test_demo_first_line_says_what_and_how_long(capsys):
    from fastmlr import demo

    args = demo.build_parser().parse_args([])
    line = demo.plan_line(args)
    assert line.startswith("fastmlr demo: trains baseline and SRDL on 1500 mosaics (3 epochs, 96 px)")
    minutes = float(re.search(r"about (\d+(?:\.\d+)?) minutes", line).group(1))
    assert 2 <= minutes <= 7, line  # make demo's budget: about 6 minutes on an idle machine
    parts = demo.estimate_seconds(args)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert abs(parts["total"] / 60 - minutes) <= 0.5
    # The estimate follows the configuration: twice the images, about twice the training.
    big = demo.estimate_seconds(demo.build_parser().parse_args(["--train-size", "3000", "--val-size", "1000"]))
    for name in ("baseline", "srdl"):
        ratio = big[f"train {name}"] / parts[f"train {name}"]
        assert ratio > 1.8 and ratio < 2.0
    assert demo.estimate_seconds(demo.build_parser().parse_args(["--epochs", "6"]))["total"] > parts["total"]
    quick = demo.plan_line(demo.build_parser().parse_args(["--quick"]))
    assert "64 mosaics" in quick and "1 epoch" in quick
