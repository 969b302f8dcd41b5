"""Engine code the commands share: device choice and the prediction loop.

Commands (train, evaluate, predict, export, bench) parse flags and call these;
none of them owns a loop another command imports.
"""

from __future__ import annotations

import torch


class DeviceUnavailable(ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(requested: str | torch.device | None = None, *, flag: str = "--device") -> torch.device:
    """The device a command runs on: ``requested``, else CUDA when present, else the CPU.

    Raises :class:`DeviceUnavailable` (a ``ValueError`` naming ``flag``) when CUDA is asked for
    and absent, or when ``cuda:N`` names a GPU that does not exist.
    """
    if requested is None or requested == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as e:
        raise DeviceUnavailable(f"{flag} {requested}: not a device name ({e}); expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"{flag} {requested}: no CUDA device is available on this machine (use {flag} cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"{flag} {requested}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ...)"
            )
    return dev


@torch.no_grad()
def predict_dataset(model, loader, device, progress: bool = False, desc: str = "eval"):
    """Run ``model`` over ``loader``; returns (scores, targets, ignore, n_skipped) on the CPU."""
    from tqdm import tqdm

    model.eval()
    scores, targets, ignores, skipped = [], [], [], 0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if batch is None:
            skipped += loader.batch_size
            continue
        images, y, ign, n_skip = batch
        skipped += n_skip
        scores.append(torch.sigmoid(model(images.to(device)).float()).cpu())
        targets.append(y)
        ignores.append(ign)
    if not scores:
        raise RuntimeError("no readable image in the evaluation data")
    return torch.cat(scores), torch.cat(targets), torch.cat(ignores), skipped
