"""python -m fastmlr.ops: which backends run each op here, in order of preference, and why the others do not."""

import torch

from . import OPS, available_backends
from ._dispatch import _BACKENDS, _UNAVAILABLE

devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
for dev in devices:
    probe = (torch.zeros(1, 1, 1, device=dev),)
    print(f"{dev}:")
    for op in OPS:
        runs, refusals = [], []
        for name in available_backends(dev):
            reason = _BACKENDS[name].refuse(op, dev, probe)
            (refusals.append(f"{name} ({reason})") if reason else runs.append(name))
        print(f"  {op}: {', '.join(runs)}" + (f"; refused: {'; '.join(refusals)}" if refusals else ""))
for name, why in sorted(_UNAVAILABLE.items()):
    print(f"{name}: unavailable: {why}")
if "cuda" not in devices:
    print("cuda: no CUDA device on this machine")
