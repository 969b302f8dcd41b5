"""Multi-label recognition metrics: mAP and CP/CR/CF1/OP/OR/OF1 (SRDL section 4.1, eq. 14-16).

Everything is computed in float64 numpy over the whole ``(N, C)`` score matrix at once
(one sort per call), so N=5000, C=80 takes a few milliseconds.

Conventions, fixed here once:

* **Ignored entries** (``ignore[n, c]`` True, e.g. VOC's "difficult" labels) count nowhere:
  not in the ranking of class ``c`` for its AP, not in any count, and they take no slot in
  the top-k prediction of image ``n``.
* **AP** is the non-interpolated average precision over the ranking by score, exactly as
  ``sklearn.metrics.average_precision_score``: entries with equal scores form one
  threshold, and every positive of that group gets the precision measured after the whole
  group. A class with no positive among its non-ignored entries has AP ``nan``; it is left
  out of mAP and listed in ``classes_without_positive``.
* **Thresholded metrics** predict ``scores >= threshold``; the ``*_topK`` variants predict
  the K highest-scoring non-ignored classes of each image (ties broken towards the lower
  class index; fewer when an image has fewer than K non-ignored classes).
  With ``Nc`` correct, ``Np`` predicted and ``Ng`` ground-truth counts per class (eq. 14-16):
  ``CP = mean_c Nc/Np``, ``CR = mean_c Nc/Ng`` (means over all C classes),
  ``OP = sum Nc / sum Np``, ``OR = sum Nc / sum Ng``, ``F1 = 2 P R / (P + R)``.
  Every 0/0 counts as 0: a class that is never predicted has precision 0, a class with no
  positive has recall 0, and F1 is 0 when P + R = 0 (as the common implementations that add
  an epsilon to the denominators do). All values are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["multilabel_metrics", "average_precision", "format_metrics_table", "format_per_class_ap"]

_COUNT_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch for numpy users
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(scores, targets, ignore):
    s = _as_numpy(scores, "scores")
    t = _as_numpy(targets, "targets")
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), found shape {s.shape}")
    if t.shape != s.shape:
        raise ValueError(f"targets must have the shape of scores {s.shape}, found shape {t.shape}")
    if ignore is None:
        ig = np.zeros(s.shape, dtype=bool)
    else:
        ig = _as_numpy(ignore, "ignore")
        if ig.shape != s.shape:
            raise ValueError(f"ignore must have the shape of scores {s.shape}, found shape {ig.shape}")
        if ig.dtype != np.bool_:
            raise ValueError(f"ignore must be a bool mask, found dtype {ig.dtype}")
    s = s.astype(np.float64, copy=False)
    valid = ~ig
    if np.isnan(s[valid]).any():
        raise ValueError(f"scores hold {int(np.isnan(s[valid]).sum())} NaN values among non-ignored entries")
    t_valid = t[valid]
    bad = (t_valid != 0) & (t_valid != 1)
    if bad.any():
        found = np.unique(t_valid[bad])[:5].tolist()
        raise ValueError(
            f"targets must be 0 or 1 on non-ignored entries, found values {found}; "
            "mark labels to skip (e.g. VOC 'difficult') in `ignore` instead"
        )
    pos = (t == 1) & valid
    return s, pos, valid


def average_precision(scores, targets, ignore=None) -> np.ndarray:
    """Per-class non-interpolated AP with sklearn's handling of ties.

    Args:
        scores (array[N, C]), targets (array[N, C] in {0, 1}), ignore (bool array[N, C] | None).
    Returns:
        float64 array[C]; ``nan`` for classes without a non-ignored positive.
    """
    s, pos, valid = _check_inputs(scores, targets, ignore)
    return _average_precision(s, pos, valid)


def _average_precision(s: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n, c = s.shape
    if n == 0:
        return np.full(c, np.nan)
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    # Ignored entries stay in the sorted column but weigh 0 in both cumulative counts,
    # so they change neither the precision nor the recall at any threshold.
    tp = np.cumsum(np.take_along_axis(pos, order, axis=0), axis=0, dtype=np.float64)
    seen = np.cumsum(np.take_along_axis(valid, order, axis=0), axis=0, dtype=np.float64)
    # Tied scores are one threshold: measure at the last row of each tie group.
    is_end = np.ones((n, c), dtype=bool)
    is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    rows = np.where(is_end, np.arange(n)[:, None], n)
    group_end = np.minimum.accumulate(rows[::-1], axis=0)[::-1]
    tp_end = np.take_along_axis(tp, group_end, axis=0)
    seen_end = np.take_along_axis(seen, group_end, axis=0)
    pos_sorted = np.take_along_axis(pos, order, axis=0)
    precision = np.divide(tp_end, seen_end, out=np.zeros_like(tp_end), where=seen_end > 0)
    n_pos = pos.sum(axis=0)
    ap_sum = (precision * pos_sorted).sum(axis=0)
    return np.where(n_pos > 0, ap_sum / np.maximum(n_pos, 1), np.nan)


def _safe_div(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _count_metrics(pred: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> dict:
    pred = pred & valid
    nc = (pred & pos).sum(axis=0)
    np_ = pred.sum(axis=0)
    ng = pos.sum(axis=0)
    cp = float(_safe_div(nc, np_).mean()) if nc.size else 0.0
    cr = float(_safe_div(nc, ng).mean()) if nc.size else 0.0
    op = float(_safe_div(nc.sum(), np_.sum()))
    orr = float(_safe_div(nc.sum(), ng.sum()))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orr, "OF1": _f1(op, orr)}


def _top_k_mask(s: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    n, c = s.shape
    k = min(k, c)
    pred = np.zeros((n, c), dtype=bool)
    if k == 0 or n == 0:
        return pred
    # -inf for ignored entries pushes them behind every real score; they are masked out of
    # the counts afterwards anyway, so an image with < k valid classes just predicts fewer.
    key = np.where(valid, -s, np.inf)
    top = np.argsort(key, axis=1, kind="stable")[:, :k]
    np.put_along_axis(pred, top, True, axis=1)
    return pred & valid


def multilabel_metrics(scores, targets, ignore=None, threshold=0.5, top_k: int = 3) -> dict:
    """mAP, per-class AP and CP/CR/CF1/OP/OR/OF1 at ``threshold`` and at top-``top_k``.

    Args:
        scores (Tensor | ndarray [N, C]): probabilities (or any monotone score; the threshold
            applies to them as given).
        targets (Tensor | ndarray [N, C]): 1 for present, 0 for absent (on non-ignored entries).
        ignore (bool Tensor | ndarray [N, C] | None): entries that count nowhere.
        threshold: an entry is predicted when ``score >= threshold``; a float, or one
            threshold per class (a sequence of C floats, e.g. ``fit_thresholds``'s).
        top_k: K of the ``*_topK`` metrics (3 in the ML-GCN/SRDL literature).

    Returns:
        dict of python floats/lists: ``mAP``, ``AP`` (list[C], ``nan`` where no positive),
        ``classes_without_positive`` (list[int]), ``CP, CR, CF1, OP, OR, OF1``,
        ``CP_top3 ... OF1_top3`` (for ``top_k=3``), ``n_images``, ``n_classes``,
        ``threshold`` (a float, or a list[C] when per-class thresholds were given), ``top_k``.
        See the module docstring for the 0/0 conventions.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, found {top_k}")
    s, pos, valid = _check_inputs(scores, targets, ignore)
    n, c = s.shape
    ap = _average_precision(s, pos, valid)
    has_pos = ~np.isnan(ap)
    out: dict = {
        "mAP": float(ap[has_pos].mean()) if has_pos.any() else float("nan"),
        "AP": [float(v) for v in ap],
        "classes_without_positive": [int(i) for i in np.flatnonzero(~has_pos)],
    }
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != c):
        raise ValueError(f"threshold must be a number or one per class ({c}), found shape {t.shape}")
    out.update(_count_metrics(s >= t, pos, valid))
    for key, value in _count_metrics(_top_k_mask(s, valid, top_k), pos, valid).items():
        out[f"{key}_top{top_k}"] = value
    out.update(n_images=int(n), n_classes=int(c), top_k=int(top_k),
               threshold=float(t) if t.ndim == 0 else [float(v) for v in t])
    return out


def _pct(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{100.0 * v:.1f}"


def format_metrics_table(
    results: Mapping[str, Mapping], keys: Sequence[str] = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
) -> str:
    """A markdown table with one row per metric and one column per named result, in percent.

    ``results`` maps a column title to a metrics dict (``multilabel_metrics``'s output or
    any subset of it), e.g. ``{"baseline": m1, "srdl": m2}``. A metric a result lacks, or
    a ``nan``, prints as ``n/a``.
    """
    if not results:
        raise ValueError("format_metrics_table needs at least one named result, found none")
    names = [str(k).replace("|", "\\|") for k in results]
    lines = [
        "| metric (%) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key in keys:
        cells = [_pct(m.get(key)) for m in results.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_per_class_ap(metrics: Mapping, class_names: Sequence[str]) -> str:
    """A markdown table of per-class AP in percent (``metrics["AP"]``), in class order.

    Classes without a positive print as ``n/a (no positive)``; the last row is mAP.
    """
    ap = list(metrics["AP"])
    if len(ap) != len(class_names):
        raise ValueError(f"metrics hold AP for {len(ap)} classes, but {len(class_names)} class names were given")
    lines = ["| class | AP (%) |", "|---|---:|"]
    for name, v in zip(class_names, ap):
        cell = "n/a (no positive)" if v is None or math.isnan(v) else f"{100.0 * v:.1f}"
        lines.append(f"| {str(name).replace('|', chr(92) + '|')} | {cell} |")
    lines.append(f"| **mAP** | {_pct(metrics.get('mAP'))} |")
    return "\n".join(lines)
