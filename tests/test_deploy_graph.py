"""The graph the exporters trace (fastmlr.deploy.graph): constants folded on the copy, the backend traced in."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from fastmlr import ops
from fastmlr.deploy.graph import InferenceGraph, example_images, export_mode

S, C = 4, 3


class _Folding(nn.Module):
    """A head whose class weights come from an image-independent computation, with a fold_constants hook."""

    num_classes = C

    def __init__(self):
        super().__init__()
        self.seed = nn.Parameter(torch.randn(3, C, generator=torch.Generator().manual_seed(2)))
        self.calls = 0

    def classifiers(self):
        self.calls += 1
        return torch.tanh(self.seed) * 2

    def fold_constants(self):
        w = self.classifiers().detach().float()
        self.register_buffer("folded", w, persistent=False)
        self.classifiers = lambda: self.folded

    def forward(self, x):
        return x.mean(dim=(2, 3)) @ self.classifiers()


def test_inference_graph_folds_constants_on_its_own_copy():
    m = _Folding().train()
    x = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = x.mean(dim=(2, 3)) @ (torch.tanh(m.seed) * 2)
        g = InferenceGraph(m)
        calls_after_fold = g.net.calls
        logits, probs = g(x)
        g(x)
    assert calls_after_fold == 1 and g.net.calls == 1  # computed once, at folding, never per image
    assert "folded" in dict(g.net.named_buffers()) and not hasattr(m, "folded") and m.calls == 0
    assert torch.allclose(logits, want, atol=1e-6) and torch.allclose(probs, torch.sigmoid(want), atol=1e-6)
    assert m.training and not g.net.training


def test_export_mode_selects_the_reference_ops_and_restores_the_model():
    m = nn.Linear(2, 2).train()
    before = ops.current_backend()
    with export_mode(m):
        assert ops.current_backend() == "reference" and not m.training
    assert ops.current_backend() == before and m.training
    with pytest.raises(RuntimeError, match="boom"):
        with export_mode(m):
            raise RuntimeError("boom")
    assert m.training and ops.current_backend() == before


def _fastmlr_ops_in(ep) -> list[str]:
    return sorted({str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "fastmlr" in str(n.target)})


def test_the_backend_of_export_mode_is_what_the_graph_contains():
    if "cpp" not in ops.available_backends("cpu"):
        pytest.skip(f"the cpp backend does not run here (available: {ops.available_backends('cpu')})")
    from fastmlr.models import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random label embeddings: only the graph's ops matter here
        m = create_model("srdl", 3, backbone="resnet18", weights="none", use_oe=False).eval()
    found = {}
    for backend in ("reference", "cpp"):
        with export_mode(m, backend), torch.no_grad():
            ep = torch.export.export(InferenceGraph(m), (example_images(32, 2),))
        found[backend] = _fastmlr_ops_in(ep)
    # The reference decomposes into standard ops; "cpp" keeps the extension's custom ops for libtorch to link.
    assert found["reference"] == []
    assert found["cpp"] == ["fastmlr.car_pool.default", "fastmlr.car_spatial_attention.default"]
