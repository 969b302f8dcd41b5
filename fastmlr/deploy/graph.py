"""The graph every exporter traces, and what tracing needs: eval mode, the reference ops, example inputs.

The exported graph is the model's inference path. Exporters trace inside
:func:`export_mode`, which selects the fused ops' implementation with
:func:`fastmlr.ops.use_backend`: ``reference`` unless told otherwise; the ONNX
builder passes ``decomposed`` (standard ONNX ops, in chunks of categories) or
``nodes`` (one ``fastmlr::`` op each), see :mod:`fastmlr.deploy.onnx_ops`. Object erasing is training-only and
absent. Image-independent computations (SRDL's label graph, ML-GCN's
classifiers) are folded into fp32 constants by the model's own
``fold_constants()`` on the copy that is exported.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import torch
import torch.nn as nn

from .. import ops

# The implementation of the fused ops that graphs are traced through unless asked otherwise.
EXPORT_BACKEND = "reference"


@contextlib.contextmanager
def export_mode(model: nn.Module, backend: str = EXPORT_BACKEND):
    """Eval mode, and every fastmlr op inside the block on ``backend``; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with ops.use_backend(backend):
            yield model
    finally:
        model.train(was_training)


class InferenceGraph(nn.Module):
    """images (float32 Tensor[N, 3, S, S], normalised) -> (logits, probs), both float32 Tensor[N, C].

    Wraps an eval-mode copy of ``model`` whose image-independent parts are
    folded into fp32 constants (``model.fold_constants()``). ``fp16``: the
    network runs in half precision between a cast of the input and a cast of
    the logits; the sigmoid, the one op whose output the threshold reads, runs
    in fp32. The fused ops run on whatever backend is selected when it is
    called or traced: build and trace it inside :func:`export_mode`.
    """

    def __init__(self, model: nn.Module, fp16: bool = False):
        super().__init__()
        net = copy.deepcopy(model).eval()
        fold = getattr(net, "fold_constants", None)  # every MLRModel has it; a plain nn.Module folds nothing
        if callable(fold):
            with torch.no_grad():
                fold()
        self.fp16 = bool(fp16)
        self.net = net.half() if self.fp16 else net.float()

    def forward(self, images: torch.Tensor):
        x = images.half() if self.fp16 else images
        logits = self.net(x).float()
        return logits, torch.sigmoid(logits)


# The largest batch an artefact is built for: the export traces and checks with real batches of this order.
MAX_BATCH = 1024


def check_batch_range(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch <= MAX_BATCH:
        raise ValueError(
            f"batch range must satisfy 1 <= --min-batch <= --opt-batch <= --max-batch <= {MAX_BATCH}, "
            f"got {min_batch}, {opt_batch}, {max_batch}"
        )


def example_images(image_size: int, batch: int, dtype=torch.float32) -> torch.Tensor:
    """A fixed random batch (seed 0), for tracing and for the random-image checks."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, image_size, image_size, generator=g, dtype=dtype)


def batch_dim(min_batch: int, max_batch: int):
    # torch.export specialises sizes 0 and 1; a range starting at 1 is still symbolic with Dim's min=1.
    return torch.export.Dim("batch", min=max(1, min_batch), max=max(max_batch, 2))


@contextlib.contextmanager
def quiet():
    """Silence the exporters' progress chatter; errors still raise."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield


__all__ = ["EXPORT_BACKEND", "InferenceGraph", "export_mode", "check_batch_range", "example_images", "batch_dim",
           "quiet"]
