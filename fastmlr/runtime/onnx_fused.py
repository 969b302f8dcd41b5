"""Running graphs of the ``fused`` ONNX op set in ONNX Runtime from Python, without rebuilding ONNX Runtime.

The fastmlr-domain nodes (the ops' declared ``OpSpec.onnx`` nodes) become
onnxruntime-extensions Python custom ops ("PyOps"), one per declared fused op:
ONNX Runtime calls back into Python with numpy arrays, which go through
``torch.from_numpy`` to the op's public function (the ordinary dispatch: the C++
kernels where they run, else the reference) and back. This module names no op.
PyOps live in onnxruntime-extensions' own domain, so the graph's nodes are moved
into it in memory before the session is created; the file is not changed. float32 only (a PyOp declares one input type).

Without onnxruntime-extensions a fused graph is refused, saying what to do.
"""

from __future__ import annotations

from ..constants import FUSED_DOMAIN  # not fastmlr.ops: a standard graph's runner loads no op

_registered = False


def missing_message(path: str) -> str:
    return (f"{path} holds fastmlr-domain nodes (exported with --onnx-ops fused); ONNX Runtime runs them only with "
            "onnxruntime-extensions: pip install onnxruntime-extensions, or export with --onnx-ops standard")


def fused_node_types(model) -> list[str]:
    """Op types of the graph's fastmlr-domain nodes, sorted (empty for a standard graph)."""
    return sorted({n.op_type for n in model.graph.node if n.domain == FUSED_DOMAIN})


def _register_pyops() -> None:
    """Declare the fused nodes as PyOps once per process."""
    global _registered
    if _registered:
        return
    import numpy as np
    import torch
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from ..ops import fused_specs

    f32 = PyCustomOpDef.dt_float

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def out(x):
        return x.contiguous().numpy()

    def pyop(spec):
        def run(*arrays):
            with torch.inference_mode():
                return out(spec.function(*(t(a) for a in arrays)))

        run.__name__ = spec.name
        onnx_op(op_type=spec.onnx.op_type, inputs=[f32] * len(spec.onnx.inputs), outputs=[f32])(run)

    for spec in fused_specs():
        pyop(spec)
    _registered = True


def fused_session_input(path: str, model, opts):
    """The serialised graph to open, with its fastmlr nodes moved to the PyOps' domain; registers the PyOps
    library on ``opts``. Raises ValueError (:func:`missing_message`) without onnxruntime-extensions."""
    try:
        from onnxruntime_extensions import get_library_path
        from onnxruntime_extensions._ocos import default_opset_domain
    except ImportError:
        raise ValueError(missing_message(path)) from None
    _register_pyops()
    contrib = default_opset_domain()
    for n in model.graph.node:
        if n.domain == FUSED_DOMAIN:
            n.domain = contrib
    imports = [o for o in model.opset_import if o.domain != FUSED_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    if not any(o.domain == contrib for o in imports):
        model.opset_import.add(domain=contrib, version=1)
    opts.register_custom_ops_library(get_library_path())
    return model.SerializeToString()


__all__ = ["FUSED_DOMAIN", "missing_message", "fused_node_types", "fused_session_input"]
