"""Naive, loop-by-loop readings of docs/srdl.md, independent of fastmlr.ops.reference.

Every backend's tests hold the ops to these (float64, pure Python loops).
"""

from __future__ import annotations

import math

import torch


def spatial_attention(u, wc, s, b):
    """SA[n,c,p] = sigmoid(b + sum_k s[k] tanh(u[n,p,k] wc[c,k])), by loops in float64."""
    u, wc, s = u.double().tolist(), wc.double().tolist(), s.double().tolist()
    b = float(b)
    N, P, D, C = len(u), len(u[0]), len(s), len(wc)
    out = torch.empty(N, C, P, dtype=torch.float64)
    for n in range(N):
        for c in range(C):
            for p in range(P):
                z = b + sum(s[k] * math.tanh(u[n][p][k] * wc[c][k]) for k in range(D))
                out[n, c, p] = 1.0 / (1.0 + math.exp(-z))
    return out


def car_pool(f, sa, ca):
    """feat[n,c,k] = max_p 0.5 f[n,k,p] (sa[n,c,p] + ca[n,c,k]), by loops in float64."""
    f, sa, ca = f.double().tolist(), sa.double().tolist(), ca.double().tolist()
    N, D, P, C = len(f), len(f[0]), len(f[0][0]), len(sa[0])
    out = torch.empty(N, C, D, dtype=torch.float64)
    for n in range(N):
        for c in range(C):
            for k in range(D):
                out[n, c, k] = max(0.5 * f[n][k][p] * (sa[n][c][p] + ca[n][c][k]) for p in range(P))
    return out


def _runs(values, alpha):
    """The OE rule on one marginal (list of floats): (start, end) inclusive, or None if flat."""
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-6:
        return None
    norm = [(v - lo) / (hi - lo) for v in values]
    runs, start = [], None
    for i, v in enumerate(norm + [-1.0]):
        if v >= alpha and start is None:
            start = i
        elif v < alpha and start is not None:
            runs.append((start, i - 1))
            start = None
    with_max = [r for r in runs if any(values[i] == hi for i in range(r[0], r[1] + 1))]
    best = with_max[0]
    for r in with_max[1:]:
        if r[1] - r[0] > best[1] - best[0]:  # strictly wider: the first wins ties
            best = r
    return best


def oe_box(m, alpha=0.5):
    """One map (Tensor[H, W]) -> [x0, x1, y0, y1] (x along W) or [-1] * 4."""
    rows = m.double().tolist()
    H, W = len(rows), len(rows[0])
    mx = [max(rows[y][x] for y in range(H)) for x in range(W)]
    my = [max(rows[y][x] for x in range(W)) for y in range(H)]
    rx, ry = _runs(mx, alpha), _runs(my, alpha)
    if rx is None or ry is None:
        return [-1, -1, -1, -1]
    return [rx[0], rx[1], ry[0], ry[1]]


def oe_boxes(sa, alpha=0.5):
    N, K = sa.shape[:2]
    return torch.tensor([[oe_box(sa[n, k], alpha) for k in range(K)] for n in range(N)], dtype=torch.int64)


def oe_erase(sa, boxes):
    out = sa.clone()
    for n in range(sa.shape[0]):
        for k in range(sa.shape[1]):
            x0, x1, y0, y1 = boxes[n, k].tolist()
            if x0 < 0:
                continue
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    out[n, k, y, x] = 0.0
    return out


def hand_maps():
    """Hand-made maps (H x W) and the boxes the rule gives them, worked out by hand.

    Each: (name, map, alpha, expected [x0, x1, y0, y1]).
    """
    cases = []
    # A single bright block at rows 1-2, columns 2-3 of a 4 x 5 map.
    m = torch.zeros(4, 5)
    m[1:3, 2:4] = 1.0
    cases.append(("block", m, 0.5, [2, 3, 1, 2]))
    # Two runs on x; the global maximum (0.9 vs 1.0) is in the second, narrower one.
    m = torch.zeros(3, 7)
    m[1, 0:3] = 0.9
    m[1, 5] = 1.0
    cases.append(("max-in-narrow-run", m, 0.5, [5, 5, 1, 1]))
    # The global maximum reached in two runs: the wider wins.
    m = torch.zeros(2, 8)
    m[0, 0] = 1.0
    m[0, 3:6] = 1.0
    cases.append(("tie-wider", m, 0.5, [3, 5, 0, 0]))
    # The global maximum in two runs of equal width: the first wins.
    m = torch.zeros(2, 7)
    m[1, 1:3] = 1.0
    m[1, 4:6] = 1.0
    cases.append(("tie-first", m, 0.5, [1, 2, 1, 1]))
    # Runs at the left and top edges (a second, lower x run at the right edge loses).
    m = torch.full((3, 4), 0.2)
    m[0:2, 0] = 1.0
    m[2, 3] = 0.8
    cases.append(("edge-runs-start", m, 0.5, [0, 0, 0, 1]))
    # Runs at the right and bottom edges.
    m = torch.zeros(3, 5)
    m[2, 3:5] = 1.0
    cases.append(("edge-runs-end", m, 0.5, [3, 4, 2, 2]))
    # Flat map: nothing erased.
    cases.append(("flat", torch.full((3, 3), 0.7), 0.5, [-1, -1, -1, -1]))
    # Flat along one axis only (every row has the same maximum): nothing erased.
    m = torch.zeros(3, 4)
    m[:, 1] = 1.0
    cases.append(("flat-y", m, 0.5, [-1, -1, -1, -1]))
    # 1 x 1 map is flat.
    cases.append(("1x1", torch.ones(1, 1), 0.5, [-1, -1, -1, -1]))
    # alpha = 1: only the maximal positions.
    m = torch.tensor([[0.0, 0.5, 0.99], [0.1, 1.0, 0.2]])
    cases.append(("alpha-1", m, 1.0, [1, 1, 1, 1]))
    return cases
