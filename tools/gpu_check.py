#!/usr/bin/env python3
"""`make gpu-check`: fastmlr on a GPU host, within a fixed budget (fastmlr/gpucheck/ holds the parts).

Usage: python3 tools/gpu_check.py [--out runs/gpu-check] [--budget 540]
"""

import sys
from pathlib import Path

sys.dont_write_bytecode = True  # a run without a GPU must leave the tree as it found it
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmlr.gpucheck.cli import main  # noqa: E402 - after the path is set

if __name__ == "__main__":
    sys.exit(main())
