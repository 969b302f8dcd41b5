"""MLRModel.fold_constants: image-independent parts become buffers, outputs do not change."""

import warnings

import pytest
import torch

from fastmlr.models import create_model

warnings.filterwarnings("ignore", message=".*random")


def _images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _model(name, **cfg):
    torch.manual_seed(0)
    m = create_model(name, 5, backbone="resnet18", weights="none", embeddings=torch.randn(5, 6), **cfg)
    return m.double().eval()


# For each model, the parameters and buffers that feed only the folded values.
GRAPH_TENSORS = {
    "srdl": ("label_embeddings", "gcn.adjacency", "gcn.weights.0", "gcn.weights.1", "f_w.weight", "f_w.bias"),
    "mlgcn": ("label_embeddings", "graph.adjacency", "gc1.weight", "gc2.weight"),
    "mlgcn_fixed": ("label_embeddings", "adjacency_hat", "gc1.weight", "gc2.weight"),
}


def _build(kind):
    if kind == "mlgcn_fixed":
        counts = torch.tensor([[9.0, 5, 0, 1, 3], [5, 8, 2, 0, 0], [0, 2, 6, 3, 0], [1, 0, 3, 7, 4], [3, 0, 0, 4, 5]])
        return _model("mlgcn", hidden=16, adjacency=counts).double()
    if kind == "mlgcn":
        return _model("mlgcn", hidden=16)
    return _model("srdl", use_oe=False)


@pytest.mark.parametrize("kind", sorted(GRAPH_TENSORS))
def test_folding_changes_no_output_and_stops_reading_the_graph(kind):
    m = _build(kind)
    x = _images()
    with torch.no_grad():
        before = m(x)
        m.fold_constants()
        after = m(x)
        torch.testing.assert_close(after, before, atol=1e-12, rtol=1e-12)
        state = dict(m.named_parameters()) | dict(m.named_buffers())
        for name in GRAPH_TENSORS[kind]:
            state[name].zero_()
        # Were any of these still read, zeroing them would change the logits.
        torch.testing.assert_close(m(x), before, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(GRAPH_TENSORS))
def test_graph_tensors_matter_before_folding(kind):
    """The check above can fail: without folding, zeroing the graph's tensors changes the logits."""
    m = _build(kind)
    x = _images()
    with torch.no_grad():
        before = m(x)
        state = dict(m.named_parameters()) | dict(m.named_buffers())
        for name in GRAPH_TENSORS[kind]:
            state[name].zero_()
        assert (m(x) - before).abs().max() > 1e-6


def test_folded_buffers_are_float32_and_not_saved():
    m = create_model("srdl", 5, backbone="resnet18", weights="none", embeddings=torch.randn(5, 6), use_oe=False)
    keys = set(m.state_dict())
    m.fold_constants()
    assert m.folded_category_embeddings.dtype == torch.float32
    assert tuple(m.folded_category_embeddings.shape) == (5, m.backbone.out_channels)
    assert set(m.state_dict()) == keys
    g = create_model("mlgcn", 5, backbone="resnet18", weights="none", embeddings=torch.randn(5, 6), hidden=8).half()
    g.fold_constants()
    assert g.folded_classifiers.dtype == torch.float32  # at least fp32, even for a half model


def test_models_without_constants_fold_nothing():
    m = create_model("baseline", 3, backbone="resnet18", weights="none").double().eval()
    with torch.no_grad():
        before = {k: v.clone() for k, v in m.state_dict().items()}
        m.fold_constants()
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
