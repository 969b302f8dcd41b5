"""The ``fastmlr`` command: ``fastmlr CMD ...`` runs ``python -m fastmlr.CMD ...`` (same flags, output and exit status).

``fastmlr`` alone, or an unknown command, prints the usage and exits 2; ``fastmlr --help`` prints it and exits 0.
"""

from __future__ import annotations

import runpy
import sys

# Each command is the module ``python -m`` runs; the line is what the usage says of it.
COMMANDS = {
    "train": "train a model on mosaics, VOC, COCO or your own labelled photos",
    "evaluate": "metrics of a checkpoint; --calibrate-thresholds stores per-class thresholds",
    "predict": "labels of image files, folders or globs (text or JSON Lines)",
    "export": "ONNX, fp16, TensorRT, AOTInductor artefacts and their checks",
    "cooccurrence": "ML-GCN's label co-occurrence matrix of a dataset",
    "bench": "the paper's table 3 on this machine",
    "ops": "which op backends run here, and why not",
    "demo": "train, compare, export and time on the built-in data",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return "usage: fastmlr CMD [options]   (fastmlr CMD --help for each; same as python -m fastmlr.CMD)\n" + "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        if argv:
            print(f"fastmlr: unknown command {argv[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module = f"fastmlr.{argv[0]}"
    saved = sys.argv
    sys.argv = [f"fastmlr {argv[0]}", *argv[1:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # what the command's own ``sys.exit(main())`` returned
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
