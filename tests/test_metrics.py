"""fastmlr.metrics against scikit-learn, naive float64 loops and hand-computed numbers."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from fastmlr.metrics import format_metrics_table, format_per_class_ap, multilabel_metrics

KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


# -- independent references ---------------------------------------------------------------------------
def naive_counts(pred_sets, targets, ignore):
    """CP..OF1 from per-image predicted class sets, with python loops (0/0 -> 0)."""
    n, c = targets.shape
    nc, np_, ng = [0] * c, [0] * c, [0] * c
    for i in range(n):
        for j in range(c):
            if ignore[i][j]:
                continue
            predicted = j in pred_sets[i]
            np_[j] += predicted
            ng[j] += targets[i][j] == 1
            nc[j] += predicted and targets[i][j] == 1

    def div(a, b):
        return a / b if b else 0.0

    cp = sum(div(nc[j], np_[j]) for j in range(c)) / c
    cr = sum(div(nc[j], ng[j]) for j in range(c)) / c
    op, orr = div(sum(nc), sum(np_)), div(sum(nc), sum(ng))
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": orr, "OF1": f1(op, orr)}


def naive_threshold_sets(scores, thr):
    return [{j for j in range(scores.shape[1]) if scores[i, j] >= thr} for i in range(scores.shape[0])]


def naive_topk_sets(scores, ignore, k):
    sets = []
    for i in range(scores.shape[0]):
        cand = [j for j in range(scores.shape[1]) if not ignore[i][j]]
        # highest score first, lower class index first among equal scores
        cand.sort(key=lambda j: (-scores[i, j], j))
        sets.append(set(cand[:k]))
    return sets


def random_case(seed, n=300, c=12, levels=None, p_pos=0.15, p_ign=0.0):
    rng = np.random.default_rng(seed)
    if levels:  # few distinct values -> many ties
        scores = rng.integers(0, levels, (n, c)) / (levels - 1)
    else:
        scores = rng.random((n, c))
    targets = (rng.random((n, c)) < p_pos).astype(np.int64)
    ignore = rng.random((n, c)) < p_ign
    return scores, targets, ignore


# -- AP / mAP vs scikit-learn ---------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 5, 2])
@pytest.mark.parametrize("p_ign", [0.0, 0.2])
def test_ap_matches_sklearn(levels, p_ign):
    scores, targets, ignore = random_case(1 + (levels or 0), levels=levels, p_ign=p_ign)
    targets[:, 3] = 0  # a class with no positive at all
    targets[:, 5] = 0
    targets[7, 5] = 1
    ignore[7, 5] = True  # its only positive is ignored -> no positive either
    ignore[:, 8] = False
    m = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(ignore))
    assert m["classes_without_positive"] == [3, 5]
    ref = []
    for j in range(scores.shape[1]):
        keep = ~ignore[:, j]
        if targets[keep, j].sum() == 0:
            assert math.isnan(m["AP"][j])
            continue
        want = average_precision_score(targets[keep, j], scores[keep, j])
        assert m["AP"][j] == pytest.approx(want, abs=1e-12), f"class {j}"
        ref.append(want)
    assert m["mAP"] == pytest.approx(np.mean(ref), abs=1e-12)
    assert (m["n_images"], m["n_classes"]) == scores.shape


def test_ap_hand_computed_with_tie():
    # ranking: 0.9 (+), 0.8 (-) tied with 0.8 (+), 0.1 (+)
    # precisions: 1/1 at the first; the tie group {0.8, 0.8} ends at 2 hits out of 3; last: 3/4
    s = np.array([[0.9], [0.8], [0.8], [0.1]])
    t = np.array([[1], [0], [1], [1]])
    m = multilabel_metrics(s, t)
    assert m["AP"][0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # ignoring the negative in the tie makes the ranking perfect
    m = multilabel_metrics(s, t, ignore=np.array([[False], [True], [False], [False]]))
    assert m["AP"][0] == pytest.approx(1.0)


def test_map_is_nan_without_any_positive():
    m = multilabel_metrics(np.random.rand(4, 3), np.zeros((4, 3)))
    assert math.isnan(m["mAP"]) and m["classes_without_positive"] == [0, 1, 2]


# -- thresholded counts ------------------------------------------------------------------------------
def test_counts_hand_computed():
    # 3 images, 3 classes, threshold 0.5
    s = np.array([[0.9, 0.6, 0.1],
                  [0.2, 0.7, 0.4],
                  [0.8, 0.3, 0.2]])
    t = np.array([[1, 0, 0],
                  [0, 1, 1],
                  [0, 0, 1]])
    # class 0: predicted {0, 2}, gt {0}: Nc 1, Np 2, Ng 1
    # class 1: predicted {0, 1}, gt {1}: Nc 1, Np 2, Ng 1
    # class 2: predicted {},     gt {1, 2}: Nc 0, Np 0 (precision 0), Ng 2
    m = multilabel_metrics(s, t)
    assert m["CP"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert m["CR"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["CF1"] == pytest.approx(2 * (1 / 3) * (2 / 3) / (1 / 3 + 2 / 3))
    assert m["OP"] == pytest.approx(2 / 4)
    assert m["OR"] == pytest.approx(2 / 4)
    assert m["OF1"] == pytest.approx(0.5)
    # ignoring image 2's class-0 false positive and its class-2 positive
    ig = np.zeros_like(t, dtype=bool)
    ig[2, 0] = ig[2, 2] = True
    m = multilabel_metrics(s, t, ig)
    assert m["CP"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["CR"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["OP"] == pytest.approx(2 / 3)
    assert m["OR"] == pytest.approx(2 / 3)
    # top-3 with 3 classes predicts every non-ignored entry
    assert m["OP_top3"] == pytest.approx(3 / 7)
    assert m["OR_top3"] == pytest.approx(1.0)


def test_nothing_predicted_gives_zero_not_nan():
    m = multilabel_metrics(np.zeros((5, 4)), np.eye(5, 4), threshold=0.5)
    for k in KEYS:
        assert m[k] == 0.0


@pytest.mark.parametrize("seed,thr,levels,p_ign", [(0, 0.5, None, 0.0), (1, 0.3, 4, 0.1), (2, 0.75, 3, 0.3)])
def test_counts_match_naive_loop(seed, thr, levels, p_ign):
    scores, targets, ignore = random_case(seed, n=60, c=7, levels=levels, p_pos=0.3, p_ign=p_ign)
    m = multilabel_metrics(scores, targets, ignore, threshold=thr)
    ref = naive_counts(naive_threshold_sets(scores, thr), targets, ignore)
    for k in KEYS:
        assert m[k] == pytest.approx(ref[k], abs=1e-12), k
        assert 0.0 <= m[k] <= 1.0


@pytest.mark.parametrize("seed,levels,p_ign,c", [(3, None, 0.0, 9), (4, 3, 0.25, 9), (5, None, 0.5, 4), (6, None, 0.0, 2)])
def test_top3_matches_naive_loop(seed, levels, p_ign, c):
    scores, targets, ignore = random_case(seed, n=50, c=c, levels=levels, p_pos=0.3, p_ign=p_ign)
    m = multilabel_metrics(scores, targets, ignore)
    ref = naive_counts(naive_topk_sets(scores, ignore, 3), targets, ignore)
    for k in KEYS:
        assert m[f"{k}_top3"] == pytest.approx(ref[k], abs=1e-12), k


def test_torch_and_numpy_inputs_agree():
    scores, targets, ignore = random_case(7, n=40, c=5, p_ign=0.1)
    a = multilabel_metrics(scores, targets, ignore)
    b = multilabel_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(targets).float(),
                           torch.tensor(ignore))
    assert a["CP"] == pytest.approx(b["CP"]) and a["mAP"] == pytest.approx(b["mAP"], abs=1e-6)
    assert all(isinstance(v, float) for v in a["AP"]) and isinstance(a["mAP"], float)


# -- errors ------------------------------------------------------------------------------------------
def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"ignore.*\(4, 3\).*\(3, 3\)"):
        multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"\(N, C\).*\(4,\)"):
        multilabel_metrics(np.zeros(4), np.zeros(4))


def test_non_binary_targets_rejected_unless_ignored():
    t = np.array([[1, -1], [0, 1]])
    with pytest.raises(ValueError, match=r"0 or 1.*-1"):
        multilabel_metrics(np.zeros((2, 2)), t)
    m = multilabel_metrics(np.zeros((2, 2)), t, ignore=t == -1)
    assert m["classes_without_positive"] == []


# -- formatting --------------------------------------------------------------------------------------
def test_format_metrics_table():
    a = {"mAP": 0.8234, "CP": 0.5, "CR": 1.0, "CF1": 2 / 3, "OP": 0.25, "OR": 0.0, "OF1": 0.0}
    b = {"mAP": float("nan"), "CP": 0.12345}
    text = format_metrics_table({"baseline": a, "srdl": b})
    lines = text.splitlines()
    assert lines[0] == "| metric (%) | baseline | srdl |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| mAP | 82.3 | n/a |"
    assert lines[3] == "| CP | 50.0 | 12.3 |"
    assert lines[5] == "| CF1 | 66.7 | n/a |"
    assert len(lines) == 2 + 7
    assert format_metrics_table({"x": a}, keys=("OR",)).splitlines()[2] == "| OR | 0.0 |"


def test_format_per_class_ap():
    m = multilabel_metrics(np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4]]), np.array([[1, 0, 0], [0, 0, 0]]))
    text = format_per_class_ap(m, ["cat", "dog", "bird"])
    lines = text.splitlines()
    assert lines[2] == "| cat | 100.0 |"
    assert lines[3] == "| dog | n/a (no positive) |"
    assert lines[-1] == "| **mAP** | 100.0 |"
    with pytest.raises(ValueError, match="3 classes.*2 class names"):
        format_per_class_ap(m, ["cat", "dog"])
