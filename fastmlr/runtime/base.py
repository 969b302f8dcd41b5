"""The interface every runner offers: preprocessing from the sidecar, batching, probabilities and labels."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..artifact.contract import class_thresholds
from ..results import labels_at, prediction_record


def _is_pil(obj) -> bool:
    """Whether ``obj`` is a PIL image, without importing PIL for callers that pass tensors."""
    return any(c.__module__.startswith("PIL.") and c.__name__ == "Image" for c in type(obj).__mro__)


class Runner:
    """What every runner offers. Subclasses implement :meth:`run`.

    Attributes: ``sidecar`` (dict), ``class_names``, ``image_size``,
    ``threshold`` (the sidecar's single threshold), ``thresholds`` (one per
    class: the sidecar's ``thresholds``, else ``threshold`` for every class),
    ``provider`` (what runs it, e.g. "onnxruntime:CPUExecutionProvider").
    """

    provider = "?"

    def __init__(self, path: str, sidecar: dict):
        self.path = path
        self.sidecar = sidecar
        self.class_names = list(sidecar["class_names"])
        self.image_size = int(sidecar["image_size"])
        self.threshold = float(sidecar["threshold"])
        self.thresholds = class_thresholds(sidecar)
        self.max_batch = int(sidecar.get("batch", {}).get("max", 0)) or None
        self.min_batch = int(sidecar.get("batch", {}).get("min", 1)) or 1
        self._mean = torch.tensor(sidecar["mean"], dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(sidecar["std"], dtype=torch.float32).view(3, 1, 1)

    # -- preprocessing from the sidecar ------------------------------------------------------------
    def preprocess(self, images) -> Tensor:
        """Images as the artefact takes them: float32 Tensor[N, 3, S, S], normalised with the sidecar's mean/std.

        ``images``: a float Tensor[N, 3, S, S] or [3, S, S], already normalised
        (passed through); a uint8 Tensor of the same shape, pixels 0..255
        (divided by 255, then normalised); PIL images or image paths, one alone
        or a list (resized to S x S; 16-bit grey scaled to 8 bits, as in
        training). Other tensor dtypes are refused.
        """
        S = self.image_size
        expected = (f"a float32 Tensor[N, 3, {S}, {S}] normalised with the sidecar's mean/std, a uint8 one "
                    f"of pixels 0..255, or PIL images / image paths")
        if isinstance(images, Tensor):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, S, S):
                raise ValueError(f"{self.path} takes images of shape (N, 3, {S}, {S}), got {tuple(images.shape)}")
            if images.dtype == torch.uint8:
                x = images.detach().to("cpu", torch.float32) / 255.0
                return ((x - self._mean) / self._std).contiguous()
            if not images.dtype.is_floating_point:
                raise TypeError(f"{self.path}: a {images.dtype} tensor has no known pixel scale; expected {expected}")
            x = images.detach().to("cpu", torch.float32).contiguous()
            _refuse_non_finite(self.path, x)
            return x
        if isinstance(images, (str, os.PathLike)) or _is_pil(images):
            images = [images]  # one image alone is a batch of one (a path is not a list of characters)
        from PIL import Image
        from torchvision.transforms import functional as TF

        from ..data.transforms import IMAGE_ERRORS, open_rgb, to_rgb

        out = []
        for img in images:
            if isinstance(img, (str, os.PathLike)):
                try:
                    img = open_rgb(img)
                except IMAGE_ERRORS as e:
                    raise ValueError(f"cannot read image {os.fspath(img)!r}: {type(e).__name__}: {e}") from None
            elif isinstance(img, Image.Image):
                img = to_rgb(img)
            else:
                raise TypeError(f"{self.path}: got a {type(img).__name__} among the images; expected {expected}")
            img = TF.resize(img, [S, S])
            out.append((TF.to_tensor(img) - self._mean) / self._std)
        if not out:
            raise ValueError("predict got no images")
        return torch.stack(out)

    def run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The artefact on one prepared batch: float32 Tensor[n, 3, S, S] (n within the batch range) -> (logits, probs).

        No preprocessing and no splitting; the outputs stay where the runtime
        put them (CPU tensors, or CUDA tensors for TensorRT with ``io="torch"``).
        Every runner checks ``x`` first (:meth:`check_input`).
        """
        raise NotImplementedError

    def check_input(self, x, device_types: tuple[str, ...] = ("cpu",)) -> None:
        """Refuse a batch the artefact was not built for, in one line: not a Tensor, not float32, not [n, 3, S, S]
        with n in the sidecar's batch range, not contiguous (NCHW), on a device the runner cannot read, or holding
        NaN/inf values (their probabilities would be NaN, and no label would be given without a word)."""
        S, lo, hi = self.image_size, self.min_batch, self.max_batch
        want = f"a contiguous float32 Tensor[n, 3, {S}, {S}] (NCHW) with n in {lo}..{hi or 'any'}"
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.path}: run() got a {type(x).__name__}; expected {want} (predict() takes images)")
        if x.dtype != torch.float32:
            raise TypeError(f"{self.path}: run() got a {x.dtype} tensor; expected {want}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, S, S) or x.shape[0] < lo or (hi and x.shape[0] > hi):
            raise ValueError(f"{self.path}: run() got shape {tuple(x.shape)}; expected {want}")
        if not x.is_contiguous():
            raise ValueError(f"{self.path}: run() got a non-contiguous tensor (strides {x.stride()}); expected {want}: "
                             "call .contiguous()")
        if x.device.type not in device_types:
            raise ValueError(f"{self.path}: run() got a tensor on {x.device}; this runner takes "
                             f"{' or '.join(device_types)} tensors")
        _refuse_non_finite(self.path, x)

    def _batches(self, images):
        x = self.preprocess(images)
        step = self.max_batch or x.shape[0]
        return [self.run(x[i : i + step]) for i in range(0, x.shape[0], step)]

    def predict_logits(self, images) -> Tensor:
        """Logits, float32 Tensor[N, C] on the CPU."""
        return torch.cat([lg.float().cpu() for lg, _ in self._batches(images)])

    def predict(self, images) -> Tensor:
        """Probabilities (the graph's fp32 sigmoid), float32 Tensor[N, C] on the CPU."""
        return torch.cat([p.float().cpu() for _, p in self._batches(images)])

    def labels(self, images) -> list[list[tuple[str, float]]]:
        """Per image, the (class name, probability) pairs at or above their class's threshold, best first."""
        return [labels_at(p.tolist(), self.thresholds, self.class_names) for p in self.predict(images)]

    def records(self, paths) -> list[dict]:
        """Per image path, the JSON Lines record ``predict --json`` and the C++ program write (fastmlr.results)."""
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        return [prediction_record(os.fspath(path), p.tolist(), self.thresholds, self.class_names)
                for path, p in zip(paths, self.predict(paths))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, provider={self.provider!r}, classes={len(self.class_names)})"


def _refuse_non_finite(path: str, x: Tensor) -> None:
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{path}: the input holds {int((~finite).sum())} NaN/inf value(s) (image(s) {bad[:8]} of the "
                         f"batch); their probabilities would be NaN: fix the images or their normalisation")


__all__ = ["Runner"]
