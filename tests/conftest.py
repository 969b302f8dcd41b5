import os
import sys

import pytest
import torch

# tests/ holds shared test helpers (naive_ref.py) imported by name.
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none is present on this machine")
    for item in items:
        # The marker, not the keyword: keywords also hold the names of the folders above the test
        # (a checkout in a folder called "gpu" would skip everything).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
