"""Registration of the optional backends ("cpp", "triton").

Each is imported on its own; one that cannot load is marked unavailable with
its reason (shown by BackendError messages and ``python -m fastmlr.ops``),
never an import error of the package.
"""

from __future__ import annotations

import importlib

from ._dispatch import mark_unavailable

for _name, _module in (("cpp", "fastmlr.ops._cpp"), ("triton", "fastmlr.ops._triton")):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as e:
        if e.name == _module:
            mark_unavailable(_name, "not built into this version of fastmlr")
        else:
            mark_unavailable(_name, f"import failed: {e}")
    except Exception as e:  # a broken optional backend must not break the package
        mark_unavailable(_name, f"import failed: {type(e).__name__}: {e}")
