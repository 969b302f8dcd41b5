"""AOTInductor runner: a ``.pt2`` package from :func:`fastmlr.deploy.aoti.export_aoti`, through torch's loader."""

from __future__ import annotations

import torch

from .base import Runner


class AOTIRunner(Runner):
    def __init__(self, path: str, sidecar: dict, device: str | None = None):
        super().__init__(path, sidecar)
        built_for = sidecar.get("device", "cpu")
        if device not in (None, built_for):
            raise RuntimeError(f"{path} was compiled for {built_for!r}; it cannot run on {device!r} (re-export there)")
        from torch._inductor import aoti_load_package

        self._device = torch.device(built_for)
        self._fn = aoti_load_package(path)
        self.provider = f"aotinductor:{built_for}"

    @torch.no_grad()
    def run(self, x: torch.Tensor):
        logits, probs = self._fn(x.to(self._device))
        return logits, probs
