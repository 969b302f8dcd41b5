"""fastmlr's hot ops: the public functional API.

Each op is declared once (an :class:`OpSpec`, fastmlr/ops/opspec.py) in the
module named after it: ``car`` (car_spatial_attention, car_pool), ``oe``
(oe_boxes, oe_erase), ``second_order`` (second_order_pool), ``cosine``
(multi_perspective_cosine). :func:`specs` lists them in declaration order,
:func:`spec` gives one by name, :func:`declare` adds one. One definition of
what each op computes (its ``reference``, docs/srdl.md), several
implementations behind :func:`available_backends`. Which implementation runs:
an op's ``backend=`` argument, else the innermost ``with use_backend(name):``
block, else ``$FASTMLR_BACKEND``, else the fastest backend that accepts the
call (:func:`dispatch`, which an op's public function ends with).
:func:`backend_status` says, per device (and op), which backends run and
why the others refuse; ``python -m fastmlr.ops`` prints it. The optional
backends ("cpp", "triton", "nodes") are imported when selection first asks
each one, not by ``import fastmlr.ops`` (see fastmlr/ops/_dispatch.py): a call
the C++ kernels run never imports Triton.

Under ``torch.autocast`` every op follows its declared rule, whichever backend
runs it (:data:`AUTOCAST_RULES`, explained in fastmlr/ops/_autocast.py): "lower"
casts its float32/16 inputs to the autocast dtype (a fused linear layer), "fp32"
to float32 (a cosine similarity), "promote" to the widest floating dtype among
its inputs; the op then runs with autocast disabled. So an op may be handed
float16/bfloat16 activations with float32 parameters there. Outside autocast,
the floating inputs of an op must share one dtype.

The C++ CPU kernels spread their loops over ATen's intra-op threads (OpenMP);
a caller inside another runtime's thread pool (the fused ONNX graph's PyOps)
wraps its calls in :func:`sleeping_threads`, which has them use fastmlr's own
pool, whose threads sleep as soon as their share is done (fastmlr/ops/_threads.py).
"""

from __future__ import annotations

from ._autocast import RULES as AUTOCAST_RULES
from ._dispatch import (
    PRIORITY,
    Backend,
    BackendError,
    BackendStatus,
    available_backends,
    backend_status,
    current_backend,
    register_backend,
    select,
    use_backend,
)
from ._dispatch import call as dispatch
from . import decomposed, reference  # noqa: F401  (ops.reference.<op>_ref, ops.decomposed's chunking)

# The op modules, in declaration order (specs() lists the ops so): SRDL's, AAMN's, MMDSR's.
from . import car, oe, second_order, cosine  # noqa: F401, I001  (declaring is the effect)
from .car import car_pool, car_spatial_attention
from .cosine import multi_perspective_cosine
from .oe import oe_boxes, oe_erase
from .second_order import second_order_pool
from .opspec import FUSED_DOMAIN, Impl, OnnxNode, OpSpec, TrtPlugin, declare, fused_specs, spec, specs, withdraw
from ._threads import sleeping_threads

# The built-in ops, in declaration order (specs() also lists ops declared later).
OPS = tuple(s.name for s in specs())

__all__ = [
    "car_spatial_attention",
    "car_pool",
    "oe_boxes",
    "oe_erase",
    "second_order_pool",
    "multi_perspective_cosine",
    "available_backends",
    "backend_status",
    "BackendStatus",
    "use_backend",
    "current_backend",
    "BackendError",
    "register_backend",
    "select",
    "OPS",
    "AUTOCAST_RULES",
    "OpSpec",
    "OnnxNode",
    "TrtPlugin",
    "Impl",
    "declare",
    "withdraw",
    "dispatch",
    "sleeping_threads",
    "spec",
    "specs",
    "fused_specs",
    "FUSED_DOMAIN",
]

register_backend(Backend(name="reference", priority=dict(PRIORITY["reference"]), derive=lambda op: op.reference))
# The portable ONNX op set traces through it, in chunks of categories (fastmlr/ops/decomposed.py).
register_backend(Backend(name="decomposed", priority=dict(PRIORITY["decomposed"]), auto=False,
                         derive=lambda op: op.decomposition))
