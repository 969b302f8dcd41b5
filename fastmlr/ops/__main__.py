"""python -m fastmlr.ops: which backends run here, and why the others do not."""

import torch

from . import available_backends
from ._dispatch import _BACKENDS, _UNAVAILABLE

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    print(f"{dev}: {', '.join(available_backends(dev))} (in order of preference)")
for name, why in sorted(_UNAVAILABLE.items()):
    print(f"{name}: unavailable: {why}")
if "cuda" not in devices:
    print("cuda: no CUDA device on this machine")
