"""Naive, loop-by-loop readings of docs/srdl.md and docs/models/, independent of fastmlr.ops.reference.

One per op; every backend's tests (tests/test_op_*.py) hold the ops to these (float64,
pure Python loops; the OE rule in the map's own dtype, as the backends compare).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# A marginal whose max - min is at most this is flat (docs/srdl.md, "Object erasing").
FLAT_EPS = 1e-6


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
    """feat[n,c,k] = max_p 0.5 f[n,k,p] (sa[n,c,p] + ca[n,c,k]), by loops in float64; NaN if any term is NaN."""
    f, sa, ca = f.double().tolist(), sa.double().tolist(), ca.double().tolist()
    N, D, P, C = len(f), len(f[0]), len(f[0][0]), len(sa[0])
    out = torch.empty(N, C, D, dtype=torch.float64)
    for n in range(N):
        for c in range(C):
            for k in range(D):
                terms = [0.5 * f[n][k][p] * (sa[n][c][p] + ca[n][c][k]) for p in range(P)]
                out[n, c, k] = math.nan if any(math.isnan(t) for t in terms) else max(terms)
    return out


# The arithmetic of the OE rule: float64 (Python floats), or the map's own dtype where numpy has it,
# since the rule's comparisons (v >= alpha, flat) are made in the map's dtype by every backend.
_NUMPY_SCALAR = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: float}


def _runs(values, alpha, t=float):
    """The OE rule on one marginal (list of floats): (start, end) inclusive, or None if flat.

    Min-max normalise (in ``t``), keep positions >= alpha, and among the runs of kept
    positions holding an exact maximum take the widest, then the first.
    """
    values = [t(v) for v in values]
    lo, hi = min(values), max(values)
    rng = t(hi - lo)
    if rng <= t(FLAT_EPS):
        return None
    norm = [t(t(v - lo) / rng) for v in values]
    runs, start = [], None
    for i, v in enumerate(norm + [None]):
        on = v is not None and v >= t(alpha)
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i - 1))
            start = None
    with_max = [r for r in runs if any(values[i] == hi for i in range(r[0], r[1] + 1))]
    best = with_max[0]
    for r in with_max[1:]:
        if r[1] - r[0] > best[1] - best[0]:  # strictly wider: the first wins ties
            best = r
    return best


def oe_box(m, alpha=0.5):
    """One map (Tensor[H, W]) -> [x0, x1, y0, y1] (x along W) or [-1] * 4, in the map's dtype's arithmetic.

    A map holding a NaN or an infinity anywhere gives [-1] * 4 (nothing erased).
    """
    t = _NUMPY_SCALAR[m.dtype]
    rows = m.double().tolist()
    H, W = len(rows), len(rows[0])
    if not all(math.isfinite(v) for row in rows for v in row):
        return [-1, -1, -1, -1]
    mx = [max(rows[y][x] for y in range(H)) for x in range(W)]
    my = [max(rows[y][x] for x in range(W)) for y in range(H)]
    rx, ry = _runs(mx, alpha, t), _runs(my, alpha, t)
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
    for name, rows, alpha, want in _MORE_HAND_MAPS:
        cases.append((name, torch.tensor(rows, dtype=torch.float32), alpha, list(want or (-1, -1, -1, -1))))
    return cases


_MORE_HAND_MAPS = [  # name, rows (H x W), alpha, expected (x0, x1, y0, y1) worked out by hand (None: flat)
    ("one-blob", [[0, 0, 0, 0], [0, 5, 6, 0], [0, 4, 5, 0]], 0.5, (1, 2, 1, 2)),
    ("max-in-narrow-run-2", [[9, 9, 9, 0, 10], [0, 0, 0, 0, 0]], 0.5, (4, 4, 0, 0)),
    ("one-row-is-flat", [[7, 0, 7, 7, 0, 7]], 0.5, None),  # H = 1: y is flat
    ("several-max-runs-wider-wins-2d", [[7, 0, 7, 7, 0, 7], [0, 0, 0, 0, 0, 0]], 0.5, (2, 3, 0, 0)),
    ("equal-width-first-wins", [[0, 0, 0, 0, 0], [3, 0, 0, 0, 3]], 0.5, (0, 0, 1, 1)),
    ("edge-runs", [[8, 1, 1, 1, 6], [8, 1, 1, 1, 6], [1, 1, 1, 1, 1]], 0.5, (0, 0, 0, 1)),
    ("run-to-the-end", [[0, 0, 2, 9, 9], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], 0.2, (2, 4, 0, 0)),
    ("flat-2x2", [[0.3, 0.3], [0.3, 0.3]], 0.5, None),
    ("flat-within-eps", [[0.3, 0.3 + 5e-7], [0.3, 0.3]], 0.5, None),
    ("flat-one-axis", [[0, 4, 0], [0, 4, 0]], 0.5, None),  # every row's max is 4: y is flat
]


def threshold_maps():
    """Non-flat maps whose normalised marginals reach alpha (or 1.0) exactly, worked out by hand.

    Every value is exact in bfloat16, and ``(m - lo) / (hi - lo)`` is exactly alpha in every
    floating dtype when the division is correctly rounded, with ``hi - lo`` not a power of two,
    so a division rounded any other way (an approximate reciprocal) lands beside the threshold.
    Each: (name, map, alpha, expected [x0, x1, y0, y1]).
    """
    return [
        # lo 0.25, hi 1.75: (1.0 - 0.25) / 1.5 = 0.5 on both sides of the maximum, on x and on y.
        ("exact-half", [[0.25, 1.0, 1.75, 1.0, 0.25], [0.25, 0.25, 1.0, 0.25, 0.25], [0.25] * 5], 0.5, [1, 3, 0, 1]),
        # lo 0, hi 3 (on each marginal): 1.125 / 3 = 0.375.
        ("exact-0.375", [[0.0, 1.125, 3.0, 0.0], [1.125, 0.0, 0.0, 0.0], [0.0] * 4], 0.375, [0, 2, 0, 1]),
        # alpha = 1 with hi - lo = 2.5: only the maximum, (3 - 0.5) / 2.5 = 1.
        ("alpha-1-range-2.5", [[0.5, 3.0, 0.5], [0.5, 0.5, 0.5]], 1.0, [1, 1, 0, 0]),
        # alpha = 1 with hi - lo = 0.75, maxima in two runs on x (the wider wins) and one row.
        ("alpha-1-range-0.75", [[0.25, 1.0, 1.0, 0.25, 1.0], [0.25, 0.25, 0.25, 0.25, 0.25]], 1.0, [1, 2, 0, 0]),
        # lo 0.5, hi 2: (1.25 - 0.5) / 1.5 = 0.5, the run above it holding the maximum at its right end.
        ("exact-half-run-end", [[0.5, 1.25, 1.25, 2.0, 0.5, 1.25]], 0.5, None),  # H = 1: y is flat
        ("exact-half-2d", [[0.5, 1.25, 1.25, 2.0, 0.5, 1.25], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], 0.5, [1, 3, 0, 0]),
    ]


def oe_rule_cases(dtype):
    """Maps named by what they exercise (random ones included), in ``dtype``."""
    cases = {}
    # Two maximal runs of equal height: the wider (second) one wins.
    m = torch.zeros(1, 1, 3, 9)
    m[0, 0, 1, [1, 5, 6, 7]] = 1.0
    cases["widest max run wins"] = m
    # Two maximal runs of equal width: the first wins.
    m = torch.zeros(1, 1, 4, 8)
    m[0, 0, 2, [1, 2, 5, 6]] = 1.0
    cases["first of equal runs"] = m
    # A wide run above alpha without the maximum loses to a narrow one with it.
    m = torch.zeros(1, 1, 2, 10)
    m[0, 0, 0, 0:5] = 0.8
    m[0, 0, 0, 8] = 1.0
    cases["run must contain the max"] = m
    # Runs touching both edges, maximum at the last index.
    m = torch.zeros(1, 1, 5, 6)
    m[0, 0, 0, 0:2] = 0.9
    m[0, 0, 4, 4:6] = 1.0
    m[0, 0, 0:5, 5] = 1.0
    cases["runs at the edges"] = m
    # Flat: constant map; and flat along one axis only (a full row of maxima).
    cases["flat map"] = torch.full((1, 2, 4, 4), 0.3)
    m = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(2)) * 0.5
    m[0, 0, 2, :] = 1.0
    cases["flat along x"] = m
    cases["tiny range is flat"] = torch.full((1, 1, 3, 3), 0.5) + torch.eye(3)[None, None] * 5e-7
    cases["1x1 map"] = torch.rand(2, 2, 1, 1)
    # Several runs that all hold the maximum, of widths 1, 3, 2.
    m = torch.zeros(1, 1, 1, 12)
    m[0, 0, 0, [0, 3, 4, 5, 8, 9]] = 1.0
    cases["several max runs"] = m
    g = torch.Generator().manual_seed(7)
    cases["random 3x5"] = torch.rand(3, 4, 3, 5, generator=g)
    cases["random 7x7"] = torch.rand(2, 3, 7, 7, generator=g)
    cases["random 14x14 quantised"] = (torch.rand(2, 3, 14, 14, generator=g) * 4).round() / 4  # many exact ties
    return {k: v.to(dtype) for k, v in cases.items()}


# -- AAMN and MMDSR ----------------------------------------------------------------------------------

def covariance(x):
    """cov[n,i,j] = 1/P sum_p (x_ip - mean_i)(x_jp - mean_j), by loops in float64."""
    x = x.double().tolist()
    N, D, P = len(x), len(x[0]), len(x[0][0])
    out = torch.empty(N, D, D, dtype=torch.float64)
    for n in range(N):
        mean = [sum(x[n][i]) / P for i in range(D)]
        for i in range(D):
            for j in range(D):
                out[n, i, j] = sum((x[n][i][p] - mean[i]) * (x[n][j][p] - mean[j]) for p in range(P)) / P
    return out


def mp_cosine(v, w, eps=1e-8):
    """S[n,i,j] = 1/K sum_k cos(w_k * v_i, w_k * v_j), by loops in float64."""
    v, w = v.double().tolist(), w.double().tolist()
    N, C, D, K = len(v), len(v[0]), len(v[0][0]), len(w)
    out = torch.empty(N, C, C, dtype=torch.float64)
    for n in range(N):
        for i in range(C):
            for j in range(C):
                tot = 0.0
                for k in range(K):
                    a = [w[k][d] * v[n][i][d] for d in range(D)]
                    b = [w[k][d] * v[n][j][d] for d in range(D)]
                    na = max(math.sqrt(sum(t * t for t in a)), eps)
                    nb = max(math.sqrt(sum(t * t for t in b)), eps)
                    tot += sum(a[d] * b[d] for d in range(D)) / (na * nb)
                out[n, i, j] = tot / K
    return out


def mp_cosine_grad(v, w, g, eps=1e-8):
    """(dv, dw, dv_terms, dw_terms) of sum(g * S), S = mp_cosine(v, w), by loops in float64.

    ``*_terms`` hold, per element, the sum of the absolute values of the terms that the gradient
    adds up (the magnitude a rounding error scales with where they cancel, as they do exactly
    when D = 1: every cosine is +-1 whatever v, so every gradient is 0)."""
    v, w, g = v.double().tolist(), w.double().tolist(), g.double().tolist()
    N, C, D, K = len(v), len(v[0]), len(v[0][0]), len(w)
    dv, dvm = torch.zeros(N, C, D, dtype=torch.float64), torch.zeros(N, C, D, dtype=torch.float64)
    dw, dwm = torch.zeros(K, D, dtype=torch.float64), torch.zeros(K, D, dtype=torch.float64)
    for n in range(N):
        for k in range(K):
            a = [[w[k][d] * v[n][i][d] for d in range(D)] for i in range(C)]
            norm = [math.sqrt(sum(t * t for t in a[i])) for i in range(C)]
            nrm = [max(x, eps) for x in norm]
            u = [[a[i][d] / nrm[i] for d in range(D)] for i in range(C)]
            for i in range(C):
                # dL/du_i = 1/K sum_j (g_ij + g_ji) u_j, and the size of what it sums
                h = [sum((g[n][i][j] + g[n][j][i]) * u[j][d] for j in range(C)) / K for d in range(D)]
                hm = [sum(abs(g[n][i][j] + g[n][j][i]) * abs(u[j][d]) for j in range(C)) / K for d in range(D)]
                if norm[i] > eps:  # through the normalisation: (h - u (u . h)) / |a|
                    uh = sum(u[i][d] * h[d] for d in range(D))
                    uhm = sum(abs(u[i][d]) * hm[d] for d in range(D))
                    da = [(h[d] - u[i][d] * uh) / nrm[i] for d in range(D)]
                    dam = [(hm[d] + abs(u[i][d]) * uhm) / nrm[i] for d in range(D)]
                else:  # clamped norm: a / eps
                    da = [h[d] / eps for d in range(D)]
                    dam = [hm[d] / eps for d in range(D)]
                for d in range(D):
                    dv[n, i, d] += w[k][d] * da[d]
                    dvm[n, i, d] += abs(w[k][d]) * dam[d]
                    dw[k, d] += v[n][i][d] * da[d]
                    dwm[k, d] += abs(v[n][i][d]) * dam[d]
    return dv, dw, dvm, dwm
