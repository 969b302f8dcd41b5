"""python -m fastmlr.ops: which backends run each op here, in order of preference, and why the others do not."""

import torch

from . import backend_status, specs
from ._dispatch import _BACKENDS

for dev in ("cpu", "cuda"):
    device_rows = backend_status(dev)
    if not any(r.runs for r in device_rows):
        print(f"{dev}: nothing runs ({'; '.join(sorted({r.reason for r in device_rows}))})")
        continue
    print(f"{dev}:")
    for op in specs():
        rows = backend_status(dev, op.name, torch.float32)
        # Backends that run only when named (export-time forms) are marked so.
        runs = [r.name + ("" if _BACKENDS[r.name].auto else " (when named)") for r in rows if r.runs]
        refused = [f"{r.name} ({r.reason})" for r in rows if not r.runs]
        print(f"  {op.name}: {', '.join(runs) or 'none'}" + (f"; refused: {'; '.join(refused)}" if refused else ""))
