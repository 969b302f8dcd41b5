"""Per-class decision thresholds: fitted on labelled data to maximise each class's F1.

The rule, fixed here once (``fit_thresholds``):

* **Candidates.** For class ``c`` the candidate thresholds are the distinct scores of its
  non-ignored entries (an entry is predicted when ``score >= t``, as everywhere in
  :mod:`fastmlr.metrics`); every other threshold predicts the same set as one of them.
  At each candidate, ``F1 = 2 TP / (predicted + positives)``; the candidate with the
  highest F1 wins, and among equal F1 the highest candidate (fewest predictions).
* **Margin.** The stored threshold is not the winning score itself but the midpoint
  between it and the next lower score of the class (the winner itself when it is the
  lowest), so the fitted decisions hold with a margin: a score that moves by less than
  half the gap (another runtime, fp16) does not flip. When the scores are float32 (the
  models' sigmoid) the midpoint is rounded to a float32 value strictly above the lower
  score, so comparing in float32 (the runtime, the C++ program) gives the same decisions.
* **Floor.** A class with fewer than ``min_positives`` non-ignored positives (default
  :data:`MIN_POSITIVES`; always for a class with none) keeps ``default`` (0.5): with a
  handful of positives the F1-optimal threshold mostly fits noise.
* **Range.** Thresholds are clipped to ``[LOW, HIGH]`` (inside (0, 1), the range the
  sidecar accepts); only scores within 1e-6 of 0 or 1 can decide otherwise because of it.

Ignored entries (``ignore[n, c]``, e.g. VOC's "difficult") count nowhere, as in the metrics.
"""

from __future__ import annotations

import numpy as np

from .artifact.contract import check_thresholds  # noqa: F401  (the one check, re-exported for the commands)
from .metrics import _as_numpy, _check_inputs

__all__ = ["MIN_POSITIVES", "LOW", "HIGH", "fit_thresholds", "per_class_f1", "check_thresholds"]

MIN_POSITIVES = 10
LOW = float(np.float32(1e-6))
HIGH = float(np.float32(1.0 - 1e-6))


def _best_candidate(col: np.ndarray, pos: np.ndarray) -> tuple[int, float, np.ndarray]:
    """(index of the F1-best candidate, its F1, the candidates: the distinct scores of ``col``, descending)."""
    order = np.argsort(-col, kind="stable")
    s = col[order]
    tp = np.cumsum(pos[order], dtype=np.int64)
    # The last row of each group of equal scores: a candidate threshold predicts the whole group.
    ends = np.flatnonzero(np.r_[s[:-1] != s[1:], True])
    predicted = ends + 1
    f1 = 2.0 * tp[ends] / (predicted + int(pos.sum()))
    best = int(np.flatnonzero(f1 == f1.max())[0])  # the first maximum = the highest threshold
    return best, float(f1[best]), s[ends]


def fit_thresholds(scores, targets, ignore=None, *, min_positives: int = MIN_POSITIVES,
                   default: float = 0.5) -> dict:
    """One threshold per class maximising that class's F1 on (``scores``, ``targets``); the rule is the module's.

    Args:
        scores (Tensor | ndarray [N, C]): probabilities.
        targets (Tensor | ndarray [N, C]): 1 present, 0 absent on non-ignored entries.
        ignore (bool [N, C] | None): entries that count nowhere.
        min_positives: classes with fewer non-ignored positives keep ``default`` (>= 1).
        default: the threshold of those classes, in (0, 1).

    Returns:
        dict of plain python values: ``thresholds`` (list[C] of float), ``fitted`` (list[C] of
        bool: False where ``default`` was kept), ``positives`` (list[C] of int), ``f1`` (list[C]:
        each class's F1 at its threshold on this data), ``min_positives``, ``default``.
    """
    if min_positives < 1:
        raise ValueError(f"min_positives must be >= 1 (a class without positives has no F1 to maximise), "
                         f"found {min_positives}")
    if not 0.0 < default < 1.0:
        raise ValueError(f"default threshold must be in (0, 1), found {default}")
    raw = _as_numpy(scores, "scores")
    s, pos, valid = _check_inputs(scores, targets, ignore)
    float32_scores = raw.dtype == np.float32 or bool(np.all(s.astype(np.float32) == s))
    out = {"thresholds": [], "fitted": [], "positives": [], "f1": []}
    for c in range(s.shape[1]):
        v = valid[:, c]
        col, p = s[v, c], pos[v, c]
        n_pos = int(p.sum())
        out["positives"].append(n_pos)
        if n_pos < min_positives:
            out["thresholds"].append(float(default))
            out["fitted"].append(False)
            out["f1"].append(_f1_at(col, p, default))
            continue
        best, f1, cands = _best_candidate(col, p)
        t = cands[best] if best == len(cands) - 1 else _between(cands[best + 1], cands[best], float32_scores)
        t = float(min(max(t, LOW), HIGH))
        out["thresholds"].append(t)
        out["fitted"].append(True)
        out["f1"].append(_f1_at(col, p, t))
    out.update(min_positives=int(min_positives), default=float(default))
    return out


def _between(lo: float, hi: float, float32: bool) -> float:
    """A value in (lo, hi]: their midpoint, as a float32 number strictly above ``lo`` when ``float32``."""
    mid = 0.5 * (lo + hi)
    if not float32:
        return float(mid if mid > lo else hi)
    m = np.float32(mid)
    if m <= np.float32(lo):
        m = np.nextafter(np.float32(lo), np.float32(np.inf))
    return float(m)


def _f1_at(col: np.ndarray, pos: np.ndarray, t: float) -> float:
    pred = col >= t
    denom = int(pred.sum()) + int(pos.sum())
    return 2.0 * int((pred & pos).sum()) / denom if denom else 0.0


def per_class_f1(scores, targets, ignore=None, thresholds=0.5) -> list[float]:
    """Each class's F1 with ``score >= thresholds[c]`` (a float applies to every class); 0 where undefined."""
    s, pos, valid = _check_inputs(scores, targets, ignore)
    t = check_thresholds(thresholds, s.shape[1], "thresholds")
    return [_f1_at(s[valid[:, c], c], pos[valid[:, c], c], t[c]) for c in range(s.shape[1])]


