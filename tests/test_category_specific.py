"""SRDL's attention is category-specific: after a short training, categories keep distinct vectors
``Wc`` and distinct spatial maps (docs/srdl.md, fastmlr's resolutions).

The data are synthetic backbone maps (4 x 4, D = 512) where each category is a channel signature at
its own random position, so the task rewards attending to different places for different
categories. The label embeddings share a common direction, as GloVe's do (mean off-diagonal cosine
about 0.46, glove50's value for the Fashion-MNIST classes). Both measures are mean off-diagonal
similarities between categories: cosine for ``Wc``, and for the maps the cosine of each map minus
its mean (Pearson's r), since maps of sigmoids all share a positive offset that a raw cosine
counts as agreement. Unrelated maps give about 0, identical ones 1; before the fix the figures were
0.99 and 0.99 here (1.000 on the demo's model). The bound 0.5 sits halfway.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastmlr.metrics import multilabel_metrics
from fastmlr.models import create_model

C, E, D, H = 4, 50, 512, 4
DEVICE = torch.device("cpu")
BOUND = 0.5


class _MapsAreInputs(nn.Module):
    """A backbone stand-in: the 'images' are already the maps (Tensor[N, D, H, W])."""

    out_channels, stride = D, 32

    def forward(self, x):
        return x


def _data(n: int, g: torch.Generator, signatures: torch.Tensor):
    x = torch.rand(n, D, H * H, generator=g) * 0.2
    y = torch.zeros(n, C)
    for i in range(n):
        k = int(torch.randint(1, 3, (1,), generator=g))
        cats = torch.randperm(C, generator=g)[:k]
        pos = torch.randperm(H * H, generator=g)[:k]
        for c, p in zip(cats.tolist(), pos.tolist()):
            x[i, :, p] += signatures[c]
            y[i, c] = 1.0
    return x.reshape(n, D, H, H), y


def _mean_offdiag_cos(v: torch.Tensor, center: bool = False) -> float:
    v = v.flatten(1).double()
    if center:
        v = v - v.mean(dim=1, keepdim=True)
    v = F.normalize(v, dim=1)
    s = v @ v.T
    return float((s.sum() - s.diagonal().sum()) / (s.shape[0] ** 2 - s.shape[0]))


def _trained_srdl():
    g = torch.Generator().manual_seed(0)
    common = F.normalize(torch.randn(E, generator=g), dim=0) * 3.0
    emb = common + 0.46 * torch.randn(C, E, generator=g)
    signatures = torch.relu(torch.randn(C, D, generator=g))
    xtr, ytr = _data(256, g, signatures)
    xva, yva = _data(64, g, signatures)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = create_model("srdl", C, backbone="resnet18", weights="none", embeddings=emb, use_oe=False)
    m.backbone = _MapsAreInputs()
    m = m.to(DEVICE).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for epoch in range(6):
        order = torch.randperm(256, generator=g)
        for s in range(0, 256, 32):
            idx = order[s : s + 32]
            loss = m.loss(m.forward_train(xtr[idx].to(DEVICE)), ytr[idx].to(DEVICE))
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    return m, xva.to(DEVICE), yva


def test_category_vectors_and_attention_maps_stay_distinct():
    m, xva, yva = _trained_srdl()
    with torch.no_grad():
        scores = torch.sigmoid(m(xva))
        wc = m.category_embeddings()
        maps = m.attention_maps(xva)  # what predict --attention-maps and the demo's figure draw
    assert maps.shape == (xva.shape[0], C, H, H)
    # The training is real: the task is solved, so the similarities below are those of a working model.
    assert multilabel_metrics(scores, yva)["mAP"] > 0.9
    wc_cos = _mean_offdiag_cos(wc)
    map_r = sum(_mean_offdiag_cos(maps[n], center=True) for n in range(maps.shape[0])) / maps.shape[0]
    print(f"Wc mean off-diagonal cosine {wc_cos:.3f}; attention maps mean off-diagonal r {map_r:.3f}")
    assert wc_cos < BOUND
    assert map_r < BOUND
