"""AOTInductor runner: a ``.pt2`` package from :func:`fastmlr.deploy.aoti.export_aoti`, through torch's loader.

A package exported with ``--aoti-ops cpp`` calls ``fastmlr::`` custom ops; they are
registered by fastmlr's compiled extension, which is loaded here before the package.
"""

from __future__ import annotations

import zipfile

import torch

from .base import Runner

# How the package's files name its custom-op calls (the proxy executor's JSON, the generated C++).
OPS_NAMESPACE = "fastmlr::"


class OpsLibraryMissing(RuntimeError):
    """The package calls fastmlr:: ops and fastmlr's ops library cannot be loaded."""


def package_needs_ops(path: str, sidecar: dict | None = None) -> bool:
    """Whether the package at ``path`` calls ``fastmlr::`` ops: its sidecar says so, else its files do."""
    if sidecar is not None and "aoti_ops" in sidecar:
        return sidecar["aoti_ops"] == "cpp" and bool(sidecar.get("custom_ops", True))
    return bool(package_custom_ops(path))


def package_custom_ops(path: str) -> list[str]:
    """The ``fastmlr::`` ops a ``.pt2`` package calls, read from its files (nothing is loaded)."""
    found = set()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith((".json", ".cpp")):
                continue
            text = zf.read(info).decode("utf-8", "replace")
            at = text.find(OPS_NAMESPACE)
            while at >= 0:
                end = at + len(OPS_NAMESPACE)
                while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                    end += 1
                if end > at + len(OPS_NAMESPACE):
                    found.add(text[at:end])
                at = text.find(OPS_NAMESPACE, end)
    return sorted(found)


def load_ops_library(path: str) -> None:
    """Load ``fastmlr._C`` (which registers the fastmlr:: ops); raise :class:`OpsLibraryMissing` in one line if it cannot."""
    try:
        import fastmlr._C  # noqa: F401  (its TORCH_LIBRARY initialisers register the ops)
    except ImportError as e:
        raise OpsLibraryMissing(
            f"{path} needs fastmlr's ops library (fastmlr._C: {e}); build it "
            "(pip install --no-build-isolation -e .), or re-export with --aoti-ops reference"
        ) from None


def load_package(path: str, sidecar: dict | None = None):
    """torch's loaded package at ``path``, with fastmlr's ops library loaded first where it needs it.

    Loading imports ``torch.utils.cpp_extension``, which logs "No CUDA runtime is found, using
    CUDA_HOME=..." on a machine with a CUDA toolkit and no GPU: a remark for extension builders, not for
    a CPU package's user, so its logger is held at ERROR while it is first imported.
    """
    import logging

    probe_log = logging.getLogger("torch.utils.cpp_extension")
    level = probe_log.level
    probe_log.setLevel(logging.ERROR)
    try:
        from torch._inductor import aoti_load_package
        import torch.utils.cpp_extension  # noqa: F401  (imported here, under the raised level)
    finally:
        probe_log.setLevel(level)
    if package_needs_ops(path, sidecar):
        load_ops_library(path)
    return aoti_load_package(path)


class AOTIRunner(Runner):
    def __init__(self, path: str, sidecar: dict, device: str | None = None):
        super().__init__(path, sidecar)
        built_for = sidecar.get("device", "cpu")
        if device not in (None, built_for):
            raise RuntimeError(f"{path} was compiled for {built_for!r}; it cannot run on {device!r} (re-export there)")
        self._device = torch.device(built_for)
        self._fn = load_package(path, sidecar)
        self.provider = f"aotinductor:{built_for}"

    @torch.no_grad()
    def run(self, x: torch.Tensor):
        # The compiled package reads out of bounds on another shape (it checks nothing itself): checked here.
        self.check_input(x, device_types=("cpu", self._device.type))
        logits, probs = self._fn(x.to(self._device))
        return logits, probs
