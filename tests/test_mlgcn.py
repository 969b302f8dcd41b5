"""ML-GCN (fastmlr/models/mlgcn.py): shapes, the head against a float64 loop, the correlation
matrix against a hand-worked graph, gradients, a few training steps, checkpoints, the train CLI."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from fastmlr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fastmlr.models import create_model, list_models
from fastmlr.models.mlgcn import correlation_matrix

C, E, S = 5, 12, 64


def _model(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        kw.setdefault("embeddings", torch.randn(C, E))
        return create_model("mlgcn", C, backbone="resnet18", weights="none", hidden=16, **kw)


def test_registered():
    assert "mlgcn" in list_models()


def test_shapes_learned_and_fixed_graph():
    x = torch.randn(3, 3, S, S)
    for m in (_model(), _model(adjacency=torch.rand(C, C))):
        m.eval()
        assert m(x).shape == (3, C)
        assert m.classifiers().shape == (C, 512)
        assert m.normalized_adjacency().shape == (C, C)


def test_head_matches_float64_loop():
    m = _model().double().eval()
    fmap = torch.randn(2, 512, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        logits = m.forward_head(fmap)
    a0 = m.label_embeddings
    v = m.graph.adjacency.detach()
    a_hat = torch.empty_like(v)
    for i in range(C):  # softmax row by row
        e = [math.exp(float(v[i, j])) for j in range(C)]
        for j in range(C):
            a_hat[i, j] = e[j] / sum(e)
    w1, w2 = m.gc1.weight.detach(), m.gc2.weight.detach()
    h = a_hat @ a0 @ w1
    h = torch.where(h > 0, h, 0.2 * h)
    w = a_hat @ h @ w2
    for n in range(2):
        x = fmap[n].reshape(512, -1).max(dim=1).values
        for c in range(C):
            assert float(logits[n, c]) == pytest.approx(float((x * w[c]).sum()), rel=1e-9, abs=1e-9)


def test_correlation_matrix_hand_worked():
    # 3 labels; counts M[i, j]: label 0 in 10 images, 1 in 5, 2 in 4; 0&1 together 5 times, 0&2 once.
    m = torch.tensor([[10.0, 5.0, 1.0], [5.0, 5.0, 0.0], [1.0, 0.0, 4.0]])
    # P(j|i): row 0 = [1, .5, .1]; row 1 = [1, 1, 0]; row 2 = [.25, 0, 1]. Binarised at 0.4 (off-diagonal):
    # 0->1, 1->0; label 2 has no neighbour and keeps all its weight.
    a = torch.tensor([[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    d = torch.tensor([1.0, 1.0, 1.0])  # every row of a sums to 1
    expected = a / torch.sqrt(d[:, None] * d[None, :])
    got = correlation_matrix(m, tau=0.4, p=0.2)
    torch.testing.assert_close(got, expected)
    # The same graph from probabilities instead of counts.
    probs = m / m.diagonal()[:, None]
    torch.testing.assert_close(correlation_matrix(probs), expected)


def test_correlation_matrix_asymmetric_degrees():
    # P: 0 -> 1 and 0 -> 2 above tau, 1 -> 0 only, 2 none.
    p = torch.tensor([[1.0, 0.5, 0.6], [0.9, 1.0, 0.1], [0.3, 0.2, 1.0]])
    a = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
    d = a.sum(dim=1)
    torch.testing.assert_close(correlation_matrix(p), a / torch.sqrt(d[:, None] * d[None, :]))


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match=r"embeddings must be \(5, E\)"):
        _model(embeddings=torch.randn(4, E))
    with pytest.raises(ValueError, match=r"adjacency must be \(5, 5\)"):
        _model(adjacency=torch.rand(4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        correlation_matrix(-torch.ones(3, 3))


def test_gradients_reach_every_parameter():
    m = _model().train()
    out = m.forward_train(torch.randn(2, 3, S, S))
    m.loss(out, torch.randint(0, 2, (2, C)).float()).backward()
    for name in ("graph.adjacency", "gc1.weight", "gc2.weight", "backbone.body.0.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.slow
def test_a_few_steps_lower_the_loss():
    torch.manual_seed(1)
    m = _model().train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 2, (4, C)).float()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = m.loss(m.forward_train(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("fixed", [False, True])
def test_checkpoint_round_trip(tmp_path, fixed):
    m = _model(adjacency=torch.rand(C, C) if fixed else None).eval()
    with torch.no_grad():  # move away from the initialisation so a fresh model would differ
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = os.path.join(tmp_path, "m.pt")
    save_checkpoint(path, {
        "model": "mlgcn", "num_classes": C, "config": m.config, "class_names": list("abcde"),
        "state_dict": m.state_dict(),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = model_from_checkpoint(load_checkpoint(path)).eval()
    assert back.config["fixed_adjacency"] is fixed
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        torch.testing.assert_close(back(x), m(x), rtol=0, atol=0)
        torch.testing.assert_close(back.normalized_adjacency(), m.normalized_adjacency(), rtol=0, atol=0)


@pytest.mark.slow
def test_train_cli_runs_mlgcn(tmp_path):
    from fastmlr import train

    out = os.path.join(tmp_path, "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = train.main([
            "--model", "mlgcn", "--backbone", "resnet18", "--weights", "none", "--data", "mosaics",
            "--train-size", "8", "--val-size", "8", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
            "--embeddings", "random:16", "--workers", "0", "--device", "cpu", "--out", out, "--quiet",
        ])
    assert rc == 0
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert ckpt["model"] == "mlgcn"
    assert tuple(ckpt["state_dict"]["label_embeddings"].shape)[1] == 16
