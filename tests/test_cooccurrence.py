"""ML-GCN's correlation matrix from label co-occurrence (fastmlr/cooccurrence.py, fastmlr/models/graph.py):
counts and the paper's eq. 7-8 against naive loops, caching, the command, the models that take it."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from fastmlr import cooccurrence
from fastmlr.models import create_model
from fastmlr.models.graph import LabelGraph, conditional_probabilities, correlation_matrix, reweighted_correlation

# 6 images, 4 labels; label 3 never occurs.
Y = torch.tensor([
    [1, 1, 0, 0],
    [1, 0, 1, 0],
    [1, 1, 1, 0],
    [0, 1, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 1, 0],
], dtype=torch.float32)  # fmt: skip


def _naive_counts(y):
    c = y.shape[1]
    m = [[0.0] * c for _ in range(c)]
    for row in y.tolist():
        for i in range(c):
            for j in range(c):
                if row[i] > 0.5 and row[j] > 0.5:
                    m[i][j] += 1
    return torch.tensor(m, dtype=torch.float64)


def _naive_reweighted(m, tau, p):
    """The paper's formulas, one entry at a time: P_ij = M_ij / N_i; A_ij = [P_ij >= tau];
    A'_ij = p / sum_{k != i} A_ik for A_ij = 1 (j != i), 1 - p on the diagonal (1 if no neighbour)."""
    c = m.shape[0]
    out = torch.zeros(c, c, dtype=torch.float64)
    for i in range(c):
        n_i = float(m[i, i])
        a = [1 if j != i and n_i > 0 and float(m[i, j]) / n_i >= tau else 0 for j in range(c)]
        deg = sum(a)
        for j in range(c):
            if j == i:
                out[i, j] = 1.0 - p if deg else 1.0
            elif a[j]:
                out[i, j] = p / deg
    return out


def test_counts_match_a_naive_loop():
    got = cooccurrence.label_cooccurrence(Y)
    torch.testing.assert_close(got, _naive_counts(Y))
    assert got[0, 0] == 4 and got[0, 1] == 2 and got[3].sum() == 0
    # Ignored labels count as absent.
    ign = torch.zeros_like(Y, dtype=torch.bool)
    ign[2, 1] = True
    want = Y.clone()
    want[2, 1] = 0
    torch.testing.assert_close(cooccurrence.label_cooccurrence(Y, ign), _naive_counts(want))


@pytest.mark.parametrize("tau,p", [(0.4, 0.2), (0.5, 0.25), (0.0, 0.3), (1.0, 0.2)])
def test_reweighted_matrix_follows_the_paper(tau, p):
    m = cooccurrence.label_cooccurrence(Y)
    got = reweighted_correlation(m, tau, p)
    torch.testing.assert_close(got, _naive_reweighted(m, tau, p))
    torch.testing.assert_close(got.sum(dim=1), torch.ones(4, dtype=torch.float64))
    # P(L_1 | L_0) = 2/4, P(L_0 | L_1) = 2/3: conditional, so not symmetric.
    prob = conditional_probabilities(m)
    assert prob[0, 1] == 0.5 and abs(float(prob[1, 0]) - 2 / 3) < 1e-12
    # The GCN's graph is D^-1/2 A' D^-1/2 with D the row sums of A' (all 1 here, so A' itself).
    d = got.sum(dim=1)
    torch.testing.assert_close(correlation_matrix(m, tau, p), (got / torch.sqrt(d[:, None] * d[None, :])).float())


def test_dataset_counts_are_cached_by_content(tmp_path):
    class Tiny:
        classes = ["a", "b", "c", "d"]

        def __init__(self, y):
            self.y, self.calls = y, 0

        def targets(self):
            self.calls += 1
            return self.y

    ds = Tiny(Y)
    first = cooccurrence.dataset_cooccurrence(ds, str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("counts-")
    torch.testing.assert_close(cooccurrence.dataset_cooccurrence(ds, str(tmp_path)), first)
    assert os.listdir(tmp_path) == files  # read back, not rewritten under another name
    changed = Tiny(Y.flip(0)[:5])
    torch.testing.assert_close(cooccurrence.dataset_cooccurrence(changed, str(tmp_path)), _naive_counts(Y.flip(0)[:5]))
    assert len(os.listdir(tmp_path)) == 2
    with pytest.raises(ValueError, match="has no targets"):
        cooccurrence.dataset_cooccurrence(object(), None)


def test_command_writes_the_matrices_of_a_built_in_dataset(tmp_path, capsys):
    from fastmlr.data import build_dataset

    out = tmp_path / "adj.pt"
    rc = cooccurrence.main(["--data", "scenes", "--train-size", "40", "--out", str(out),
                            "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    blob = torch.load(out, weights_only=True)
    ds = build_dataset("scenes", split="train", image_size=32, num_images=40, seed=0)
    torch.testing.assert_close(blob["counts"], _naive_counts(ds.targets()))
    torch.testing.assert_close(blob["reweighted"], _naive_reweighted(blob["counts"], 0.4, 0.2))
    assert blob["classes"] == ds.classes and blob["num_images"] == 40
    assert cooccurrence.main(["--data", "nope", "--out", str(tmp_path / "x.pt")]) == 2
    with pytest.raises(SystemExit, match="made for classes"):
        cooccurrence.load_adjacency(str(out), ["x"] * 10)


def test_models_take_the_counts():
    m = cooccurrence.label_cooccurrence(Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        g = create_model("mlgcn", 4, backbone="resnet18", weights="none", embeddings=torch.randn(4, 8),
                         hidden=8, adjacency=m)
        torch.manual_seed(0)
        s = create_model("srdl", 4, backbone="resnet18", weights="none", embeddings=torch.randn(4, 8), adjacency=m)
    # ML-GCN: a buffer, so the checkpoint carries it.
    torch.testing.assert_close(g.state_dict()["adjacency_hat"], correlation_matrix(m))
    assert g.config["fixed_adjacency"] is True
    # SRDL: V starts where softmax(V) is A' (entries below 1e-4 are floored there), then is learned.
    torch.testing.assert_close(s.gcn.normalized_adjacency().double(), reweighted_correlation(m), atol=1e-3, rtol=0)
    assert s.gcn.adjacency.requires_grad
    # Without counts, V keeps 0.8 of each row on the diagonal, for any C.
    for c in (4, 80):
        v = LabelGraph(c, 8).normalized_adjacency().detach().diagonal()
        assert abs(float(v.mean()) - 0.8) < 0.05
