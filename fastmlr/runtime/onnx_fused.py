"""Running graphs of the ``fused`` ONNX op set in ONNX Runtime from Python, without rebuilding ONNX Runtime.

The fastmlr-domain nodes (the ops' declared ``OpSpec.onnx`` nodes) become
onnxruntime-extensions Python custom ops ("PyOps"), one per declared fused op:
ONNX Runtime calls back into Python with numpy arrays, which go through
``torch.from_numpy`` to the op's public function (the ordinary dispatch: the C++
kernels where they run, their loops on fastmlr's sleeping pool rather than OpenMP's
spinning threads, else the reference) and back. This module names no op.
PyOps live in onnxruntime-extensions' own domain, so the graph's nodes are moved
into it in memory before the session is created; the file is not changed. float32 only (a PyOp declares one input type).

Outputs go back to ONNX Runtime as flat float32 arrays, not as the Python lists
onnxruntime-extensions' own callback makes of them (``ndarray.tolist()``: 8 ms
for the largest fused node's 164K floats (SRDL, ResNet-101, 448 px), against 0.05 ms for the array;
:func:`_install_array_outputs`). Where that callback is not the one this was
written against, the lists stay and a line on stderr says so.

Without onnxruntime-extensions a fused graph is refused, saying what to do.
"""

from __future__ import annotations

from ..constants import FUSED_DOMAIN  # not fastmlr.ops: a standard graph's runner loads no op

_registered = False
# Whether the PyOps' kernels run their loops on fastmlr's sleeping pool (read on every call;
# benchmarks/runtime_options.py --what pyop-threads times both settings).
SLEEPING_POOL = True


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

    from ..ops import fused_specs, sleeping_threads

    f32 = PyCustomOpDef.dt_float

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def out(x):
        return x.contiguous().numpy()

    def pyop(spec):
        # The kernels' loops on fastmlr's sleeping pool: OpenMP's threads would stay spinning after each
        # PyOp and take the cores from ONNX Runtime's next node (fastmlr/ops/_threads.py).
        def run(*arrays):
            with torch.inference_mode(), sleeping_threads(SLEEPING_POOL):
                return out(spec.function(*(t(a) for a in arrays)))

        run.__name__ = spec.name
        return onnx_op(op_type=spec.onnx.op_type, inputs=[f32] * len(spec.onnx.inputs), outputs=[f32])(run)

    _install_array_outputs({pyop(spec)._id for spec in fused_specs()})
    _registered = True


def _install_array_outputs(ours: set) -> bool:
    """Have onnxruntime-extensions hand the outputs of the PyOps whose Opdef ids are in ``ours`` back as flat
    float32 arrays; every other PyOp keeps the library's own callback. True when installed.

    The library's callback (``_ocos._on_pyop_invocation``, installed with ``PyCustomOpDef.install_hooker``)
    returns ``(id, shape, values.tolist())`` per output; its C++ side reads ``values`` as a float sequence
    and takes a contiguous float32 array as it is (tests/test_onnx_ops.py checks the outputs are equal).
    """
    import sys

    import numpy as np
    from onnxruntime_extensions import PyCustomOpDef, _ocos

    stock = getattr(_ocos, "_on_pyop_invocation", None)
    table = getattr(getattr(_ocos, "Opdef", None), "_odlist", None)
    if stock is None or table is None or not hasattr(PyCustomOpDef, "install_hooker"):
        print("fastmlr.runtime: this onnxruntime-extensions has no _ocos._on_pyop_invocation/Opdef._odlist to "
              "replace; fused-node outputs go back as Python lists (slower)", file=sys.stderr)
        return False

    def invoke(k_id, feed, attributes):
        if k_id not in ours:
            return stock(k_id, feed, attributes)
        op = table[k_id]
        rv = op.body(*feed, **op.cast_attributes(attributes))
        return (k_id, rv.shape, np.ascontiguousarray(rv, dtype=np.float32).reshape(-1))

    PyCustomOpDef.install_hooker(invoke)
    return True


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
