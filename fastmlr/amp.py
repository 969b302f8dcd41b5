"""Mixed-precision training: one code path for every device, parametrised by device type and dtype.

``--amp`` of ``python -m fastmlr.train`` resolves to a :class:`MixedPrecision`:
CUDA runs the forward pass and the loss under float16 autocast with a gradient
scaler; the CPU under bfloat16 autocast without one (bfloat16 has float32's
exponent range, so its gradients need no scaling). "auto" is on for CUDA and off
for the CPU (bfloat16 is slower than float32 on CPUs without bfloat16 units).
Parameters, gradients and the optimiser state stay float32 throughout.
:func:`forward_loss` and :func:`optimizer_step` are the training step that
``fastmlr.train`` runs, so a CPU run under ``--amp on`` exercises the very code
CUDA AMP runs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# The autocast dtype of ``--amp on`` per device type.
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}
# Dtypes whose gradients need loss scaling (their exponent range is narrower than float32's).
SCALED_DTYPES = (torch.float16,)


@dataclass(frozen=True)
class MixedPrecision:
    """Autocast on ``device_type`` in ``dtype`` (None: float32, no autocast)."""

    device_type: str
    dtype: torch.dtype | None = None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for the dtypes that need one (a disabled one passes through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype in SCALED_DTYPES)

    def describe(self) -> str:
        if self.dtype is None:
            return "float32"
        name = str(self.dtype).removeprefix("torch.")
        return f"{name} autocast" + (" with loss scaling" if self.dtype in SCALED_DTYPES else "")


def resolve_amp(mode: str, device: torch.device) -> MixedPrecision:
    """``--amp auto|on|off`` on ``device`` -> :class:`MixedPrecision` (ValueError naming the flag when impossible)."""
    dev = torch.device(device).type
    if mode == "off" or (mode == "auto" and dev != "cuda"):
        return MixedPrecision(dev)
    if mode not in ("auto", "on"):
        raise ValueError(f"--amp {mode}: expected auto, on or off")
    if dev not in AMP_DTYPES:
        raise ValueError(f"--amp on: no mixed precision for device {dev} (fastmlr has it for {', '.join(AMP_DTYPES)})")
    return MixedPrecision(dev, AMP_DTYPES[dev])


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> str | None:
    """Restore a checkpoint's scaler state into ``scaler``; returns a note when nothing could be restored.

    A run saved without loss scaling (float32, or bfloat16) has no state (None): an
    enabled scaler then starts from its initial scale. A disabled scaler ignores any state.
    """
    if not scaler.is_enabled():
        return None
    if not state:
        return "the checkpoint holds no loss-scaler state (saved without float16 AMP); loss scaling starts afresh"
    scaler.load_state_dict(state)
    return None


def scaler_state(scaler: torch.amp.GradScaler) -> dict | None:
    """What a checkpoint keeps of ``scaler``: its state when it scales, else None."""
    return scaler.state_dict() if scaler.is_enabled() else None


def forward_loss(model, forward, images, targets, ignore, amp: MixedPrecision) -> torch.Tensor:
    """The forward pass and the loss under ``amp``'s autocast. ``forward``: the model's forward_train (or its DDP wrapper)."""
    with amp.autocast():
        out = forward(images)
        return model.loss(out, targets, ignore)


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward through the (possibly scaled) loss and one optimiser step; outside autocast, as PyTorch's AMP recipe has it."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
