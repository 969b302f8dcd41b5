"""Run the reliability catalogue's command cases as a user would, each in its own process, and count the outcomes.

    python tools/catalogue.py [--tree DIR] [--timeout S] [--only SUBSTRING] [--tables reliability,cli]

The cases are the tables of tests/test_reliability.py and tests/test_cli_errors.py (``CASES``); the
fixtures are built once with the tree under test (``--tree``, default this checkout: run it with another
checkout's folder to measure that one). Each case runs ``python -m fastmlr.<command> ARGS`` with a time
limit and is classified:

- clean: exit status 2, one ``error:`` line naming what the case names, no traceback, nothing changed;
- unclear: refused without a traceback, but the line does not name what was wrong (or several lines);
- traceback / crash (killed by a signal) / hang (over the time limit);
- data lost: a file that was there before changed or vanished;
- silently wrong: exit status 0 (the case must be refused).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Factory:
    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="fastmlr-catalogue-")

    def mktemp(self, name):
        import pathlib

        return pathlib.Path(tempfile.mkdtemp(prefix=name, dir=self.base))


def _snapshot(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[p] = fh.read()
    return out


def classify(rc, err, needles, before, after) -> str:
    if rc is None:
        return "hang"
    if rc < 0:
        return "crash"
    if any(p not in after or after[p] != b for p, b in before.items()):
        return "data lost"
    if rc == 0:
        return "silently wrong"
    if "Traceback" in err:
        return "traceback"
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if rc == 2 and len(lines) == 1 and all(n in lines[0] for n in needles):
        return "clean"
    return "unclear"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", default=HERE, help="the checkout whose fastmlr is tried (default: this one)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a case counts as a hang")
    p.add_argument("--only", default="", help="run the cases whose id holds this")
    p.add_argument("--tables", default="reliability", help="reliability (issue 22's catalogue), cli (the earlier "
                   "one), or both: reliability,cli")
    args = p.parse_args(argv)
    tree = os.path.abspath(args.tree)
    sys.path[:0] = [tree, os.path.join(HERE, "tests")]
    os.environ["PYTHONPATH"] = tree
    import test_cli_errors as cli
    import test_reliability as rel

    fac = _Factory()
    try:
        return _run(args, tree, fac, cli, rel)
    finally:  # every case's folder and the fixtures (~1 GB of checkpoints) go with the run, on an error or Ctrl-C too
        shutil.rmtree(fac.base, ignore_errors=True)


def _run(args, tree, fac, cli, rel) -> int:
    envs = {"reliability": rel.env._get_wrapped_function()(fac), "cli": cli.env._get_wrapped_function()(fac)}
    tables = [(n, t) for n, t in (("reliability", rel.CASES), ("cli", cli.CASES)) if n in args.tables.split(",")]
    counts, rows = collections.Counter(), []
    for name, table in tables:
        for case, (mod, make_argv, needles) in table.items():
            if args.only not in case:
                continue
            tmp = fac.mktemp("case")
            argv_ = [str(a) for a in make_argv(envs[name], tmp)]
            watched = [tmp, envs[name].root]
            before = {k: v for d in watched for k, v in _snapshot(d).items()}
            cmd = [sys.executable, "-m", mod.__name__, *argv_]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=tmp,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
                rc, err = r.returncode, r.stderr
            except subprocess.TimeoutExpired:
                rc, err = None, ""
                with_fifo = [a for a in argv_ if "fifo" in a]
                for f in with_fifo:  # release a reader blocked on the FIFO
                    try:
                        os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:
                        pass
            after = {k: v for d in watched for k, v in _snapshot(d).items()}
            kind = classify(rc, err, needles, before, after)
            counts[kind] += 1
            last = (err.strip().splitlines() or [""])[-1][:160]
            rows.append((f"{name}:{case}", kind, last))
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"{kind:15s} {name}:{case}  {last}", flush=True)
    total = sum(counts.values())
    order = ["clean", "unclear", "traceback", "crash", "hang", "data lost", "silently wrong"]
    print(f"\n{total} cases tried on {tree}: " + ", ".join(f"{counts[k]} {k}" for k in order))
    return 0


if __name__ == "__main__":
    sys.exit(main())
