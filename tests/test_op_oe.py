"""oe_boxes (SRDL eq. 7-10) and oe_erase on every backend, device and dtype.

Definitions: fastmlr/ops/__init__.py, fastmlr/ops/reference.py; implementations: csrc/ (cpp),
fastmlr/kernels/oe.py (triton). Boxes must equal the naive rule (naive_ref.oe_boxes, in the
map's dtype) and the reference exactly; erasing and its gradient exactly.
"""

import pytest
import torch

import naive_ref
from fastmlr import ops
from fastmlr.ops import reference
from ops_common import EXACT, LOW, cases

ALL = EXACT + LOW


@pytest.mark.parametrize("hand", naive_ref.hand_maps(), ids=lambda c: c[0])
@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=(torch.float32,)))
def test_oe_boxes_hand_made(case, hand):
    name, m, alpha, expected = hand
    # The naive reading and the vectorised reference both give the hand-worked answer.
    assert naive_ref.oe_box(m, alpha) == expected
    assert ops.oe_boxes(m[None, None], alpha, backend="reference")[0, 0].tolist() == expected
    assert case.call("oe_boxes", m[None, None].to(case.device), alpha)[0, 0].tolist() == expected, name


def _hand_and_threshold_maps():
    maps = [(name, m, alpha, want) for name, m, alpha, want in naive_ref.hand_maps()]
    maps += [(name, torch.tensor(rows), alpha, want or [-1] * 4) for name, rows, alpha, want in naive_ref.threshold_maps()]
    return maps


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=ALL))
def test_oe_boxes_hand_made_non_flat_maps_in_every_dtype(case):
    """The hand-made maps (alpha = 1.0 and normalised values exactly at alpha among them) on every device and dtype.

    Their values are exact in every dtype, so the hand-worked boxes hold in each; the
    reference, run on the CPU in the same dtype, agrees.
    """
    for name, m, alpha, expected in _hand_and_threshold_maps():
        sa = m.to(case.dtype)[None, None]
        if not torch.equal(sa.double()[0, 0], m.double()):
            continue  # a value this dtype cannot hold (0.99 in bfloat16, ...): covered by the float32 test
        assert reference.oe_boxes_ref(sa, alpha)[0, 0].tolist() == expected, f"{name}: reference in {case.dtype}"
        got = case.call("oe_boxes", sa.to(case.device), alpha)[0, 0].tolist()
        assert got == expected, f"{name} (alpha={alpha}): {case} gives {got}, by hand {expected}"


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=(torch.float32,)))
def test_oe_boxes_expected_rectangles(case):
    # Hand-derived from the rule, independent of any implementation.
    rule = {k: v.to(case.device) for k, v in naive_ref.oe_rule_cases(torch.float32).items()}

    def boxes(name):
        return case.call("oe_boxes", rule[name]).tolist()

    assert boxes("widest max run wins") == [[[5, 7, 1, 1]]]
    assert boxes("first of equal runs") == [[[1, 2, 2, 2]]]
    assert boxes("run must contain the max") == [[[8, 8, 0, 0]]]
    assert boxes("flat map") == [[[-1] * 4] * 2]
    assert boxes("flat along x") == [[[-1] * 4]]
    assert boxes("several max runs") == [[[-1] * 4]]  # H = 1: y is flat


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=EXACT))
def test_oe_boxes_rule(case, alpha):
    for name, sa in naive_ref.oe_rule_cases(case.dtype).items():
        got = case.call("oe_boxes", sa.to(case.device), alpha).cpu()
        assert got.dtype == torch.int64 and got.shape == (*sa.shape[:2], 4)
        naive = naive_ref.oe_boxes(sa, alpha)
        assert torch.equal(got, naive), f"{name} (alpha={alpha}): {case} {got.tolist()} naive {naive.tolist()}"
        assert torch.equal(got, reference.oe_boxes_ref(sa, alpha)), f"{name}: {case} differs from reference"


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=LOW))
def test_oe_boxes_low_precision_matches_reference(case):
    # The normalisation is rounded to the map's dtype at each step, as the reference's ops round it.
    g = torch.Generator().manual_seed(11)
    maps = [*naive_ref.oe_rule_cases(case.dtype).values(), torch.rand(4, 3, 14, 14, generator=g).to(case.dtype)]
    for sa in maps:
        for alpha in (0.5, 0.3, 0.7):
            got = case.call("oe_boxes", sa.to(case.device), alpha).cpu()
            assert torch.equal(got, reference.oe_boxes_ref(sa, alpha))
            if case.dtype == torch.float16:  # numpy has float16: the naive rule too
                assert torch.equal(got, naive_ref.oe_boxes(sa, alpha))


RANDOM = [(3, 4, 5, 7, 0.5), (2, 3, 14, 14, 0.3), (2, 2, 9, 3, 0.6), (1, 3, 1, 6, 0.5), (2, 2, 17, 2, 0.5),
          (4, 3, 1, 4, 0.9), (4, 3, 7, 7, 0.3)]


@pytest.mark.parametrize("shape", RANDOM, ids=str)
@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=(torch.float32, torch.float64, torch.float16)))
def test_oe_boxes_random_maps_with_ties(case, shape):
    """Quantised maps (four levels) make ties, several maximal runs, edge runs and flat maps common."""
    *shape, alpha = shape
    g = torch.Generator().manual_seed(sum(shape))
    sa = (torch.randint(0, 4, shape, generator=g) / 3.0).to(case.dtype)
    sa[0, 0] = 0.25  # one wholly flat map
    got = case.call("oe_boxes", sa.to(case.device), alpha).cpu()
    assert got.dtype == torch.int64 and got.shape == (*shape[:2], 4)
    assert torch.equal(got, naive_ref.oe_boxes(sa, alpha))
    assert torch.equal(got, reference.oe_boxes_ref(sa, alpha))
    assert (got[0, 0] == -1).all()


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=(torch.float32,)))
def test_oe_boxes_random_against_loops(case):
    g = torch.Generator().manual_seed(1)
    for H, W in [(1, 4), (3, 5), (7, 7), (14, 14)]:
        # Quantised values make ties and several maximal runs common.
        sa = (torch.rand(4, 3, H, W, generator=g) * 4).round() / 4
        for alpha in (0.3, 0.5, 0.9):
            got = case.call("oe_boxes", sa.to(case.device), alpha).cpu()
            torch.testing.assert_close(got, naive_ref.oe_boxes(sa, alpha))


def _keep_mask(shape, boxes, dtype):
    """Explicit loops: an element is kept unless it lies in its inclusive box."""
    N, K, H, W = shape
    keep = torch.ones(shape, dtype=dtype)
    for n in range(N):
        for k in range(K):
            x0, x1, y0, y1 = boxes[n, k].tolist()
            for y in range(H):
                for x in range(W):
                    if x0 <= x <= x1 and y0 <= y <= y1:
                        keep[n, k, y, x] = 0
    return keep


def _random_boxes(shape, g):
    N, K, H, W = shape
    boxes = torch.randint(-1, max(H, W), (N, K, 4), generator=g)
    boxes[0, 0] = -1  # a row that erases nothing
    return boxes


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 3, 5), (3, 1, 7, 7), (1, 2, 5, 3), (2, 3, 5, 7)], ids=str)
@pytest.mark.parametrize("case", cases("oe_erase", dtypes=ALL))
def test_oe_erase_and_gradient(case, shape):
    g = torch.Generator().manual_seed(5)
    N, K, H, W = shape
    sa = torch.rand(shape, generator=g).to(case.dtype)
    if shape == (2, 3, 5, 7):
        boxes = torch.tensor([
            [[1, 3, 0, 2], [-1, -1, -1, -1], [0, W - 1, 0, H - 1]],  # box, nothing, whole map
            [[6, 6, 4, 4], [0, 0, 0, H - 1], [2, 5, 3, 3]],  # corner pixel, left column, one row
        ])
    else:
        boxes = _random_boxes(shape, g)
    x = sa.clone().to(case.device).requires_grad_(True)
    out = case.call("oe_erase", x, boxes.to(case.device))
    keep = _keep_mask(shape, boxes, case.dtype)
    assert torch.equal(out.detach().cpu(), sa * keep)
    assert torch.equal(out.detach().cpu(), naive_ref.oe_erase(sa, boxes))
    assert torch.equal(out.detach().cpu(), reference.oe_erase_ref(sa, boxes))
    gout = torch.rand(shape, generator=g).to(case.dtype)
    (dx,) = torch.autograd.grad(out, x, gout.to(case.device))
    # The erased rectangle is a constant mask: the gradient is the mask applied to the output gradient.
    assert torch.equal(dx.cpu(), gout * keep)
    assert torch.equal(dx.cpu(), reference.oe_erase_ref(gout, boxes))
    if shape == (2, 3, 5, 7):
        assert keep[0, 1].all() and not keep[0, 2].any()  # the -1 row erased nothing, the whole-map box all


@pytest.mark.parametrize("case", cases("oe_erase", dtypes=(torch.float64,)))
def test_oe_erase_gradcheck(case):
    g = torch.Generator().manual_seed(2)
    sa = torch.rand(2, 3, 5, 6, generator=g, dtype=torch.float64).to(case.device).requires_grad_()
    boxes = torch.tensor([[[0, 2, 1, 3], [-1, -1, -1, -1], [5, 5, 4, 4]],
                          [[1, 1, 0, 0], [0, 5, 0, 4], [-1, -1, -1, -1]]], device=case.device)
    assert torch.autograd.gradcheck(lambda x: case.call("oe_erase", x, boxes), (sa,))
    maps = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=case.device).requires_grad_()
    computed = case.call("oe_boxes", maps.detach(), 0.5)
    assert torch.autograd.gradcheck(lambda m: case.call("oe_erase", m, computed), (maps,))


def test_errors_name_the_shapes():
    sa = torch.rand(2, 3, 7, 1)
    with pytest.raises(ValueError, match="alpha must be in"):
        ops.oe_boxes(sa, alpha=0.0)
    with pytest.raises(ValueError, match="int64"):
        ops.oe_erase(sa, torch.zeros(2, 3, 4, dtype=torch.int32))


def _non_finite_maps(dtype):
    """Maps of one batch: clean, a NaN at a corner, in the middle, everywhere, +inf, -inf; the naive rule decides."""
    g = torch.Generator().manual_seed(5)
    sa = torch.rand(2, 3, 6, 7, generator=g).to(dtype)
    sa[0, 1, 0, 0] = float("nan")
    sa[0, 2, 3, 4] = float("nan")
    sa[1, 0] = float("nan")
    sa[1, 1, 2, 2] = float("inf")
    sa[1, 2, 5, 6] = float("-inf")
    return sa


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=ALL))
def test_oe_boxes_map_with_nan_or_inf_erases_nothing_on_every_backend(case):
    sa = _non_finite_maps(case.dtype)
    got = case.call("oe_boxes", sa.to(case.device), 0.5).cpu()
    want = naive_ref.oe_boxes(sa.float() if case.dtype == torch.bfloat16 else sa, 0.5)
    assert want[0, 0].tolist() != [-1] * 4 and all(want[0, 1:].flatten() == -1) and all(want[1].flatten() == -1)
    assert torch.equal(got[0, 1:], want[0, 1:]) and torch.equal(got[1], want[1]), f"{case}: {got.tolist()}"
    assert torch.equal(got, reference.oe_boxes_ref(sa, 0.5)), f"{case} differs from the reference"


@pytest.mark.parametrize("case", cases("oe_boxes", dtypes=(torch.float32,)))
def test_oe_bad_inputs_are_refused_alike_on_every_backend(case):
    with pytest.raises(ValueError, match=r"oe_boxes: sa must have H, W >= 1.*\(1, 2, 0, 4\)"):
        case.call("oe_boxes", torch.zeros(1, 2, 0, 4, device=case.device))
    with pytest.raises(ValueError, match=r"oe_boxes: sa must have H, W >= 1.*\(0, 2, 3, 0\)"):
        case.call("oe_boxes", torch.zeros(0, 2, 3, 0, device=case.device))
    assert case.call("oe_boxes", torch.zeros(0, 2, 3, 4, device=case.device)).shape == (0, 2, 4)
    for dtype in (torch.int64, torch.uint8, torch.bool):
        sa = torch.ones(1, 1, 3, 4, dtype=dtype, device=case.device)
        boxes = torch.tensor([[[0, 1, 0, 1]]], device=case.device)
        with pytest.raises(ValueError, match=f"oe_erase: sa must be floating point, got {dtype}"):
            case.call("oe_erase", sa, boxes)
        with pytest.raises(ValueError, match=f"oe_boxes: sa must be floating point, got {dtype}"):
            case.call("oe_boxes", sa)
