"""The ``fastmlr`` command: ``fastmlr train|evaluate|predict|demo ...`` (same as ``python -m fastmlr.<cmd>``)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "fastmlr.train",
    "evaluate": "fastmlr.evaluate",
    "predict": "fastmlr.predict",
    "demo": "fastmlr.demo",
    "bench": "fastmlr.bench",
    "export": "fastmlr.export",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = {k: v for k, v in COMMANDS.items() if importlib.util.find_spec(v) is not None}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"fastmlr: unknown command {argv[0]!r}", file=sys.stderr)
        print(f"usage: fastmlr {{{','.join(available)}}} [options]   (fastmlr CMD --help for each)")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    return importlib.import_module(available[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
