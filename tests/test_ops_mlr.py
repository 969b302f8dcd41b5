"""AAMN's and MMDSR's ops (second_order_pool, multi_perspective_cosine) against naive float64 loops."""

import math

import pytest
import torch

import fastmlr.ops as ops


def naive_covariance(x):
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


def naive_mp_cosine(v, w, eps=1e-8):
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


COV_SHAPES = [(1, 1, 1), (2, 3, 7), (3, 5, 1), (1, 6, 13)]  # N, D, P
COS_SHAPES = [(1, 1, 1, 1), (2, 4, 5, 3), (1, 6, 9, 1), (3, 2, 17, 4)]  # N, C, D, K


@pytest.mark.parametrize("shape", COV_SHAPES)
def test_second_order_pool_matches_loops(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    got = ops.second_order_pool(x, backend="reference")
    torch.testing.assert_close(got, naive_covariance(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", COS_SHAPES)
def test_multi_perspective_cosine_matches_loops(shape):
    N, C, D, K = shape
    g = torch.Generator().manual_seed(1)
    v = torch.randn(N, C, D, generator=g, dtype=torch.float64)
    w = torch.randn(K, D, generator=g, dtype=torch.float64)
    got = ops.multi_perspective_cosine(v, w, backend="reference")
    torch.testing.assert_close(got, naive_mp_cosine(v, w), rtol=1e-12, atol=1e-12)


def test_multi_perspective_cosine_hand_worked():
    # Two categories, orthogonal features: cos 0 under any weighting; a category with itself: 1.
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0], [3.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(ops.multi_perspective_cosine(v, w), torch.eye(2, dtype=torch.float64)[None])
    # Parallel features, one perspective zeroing dimension 1: cos stays 1 on the other.
    v = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(ops.multi_perspective_cosine(v, w), torch.ones(1, 2, 2, dtype=torch.float64))
    # A zero feature: its norm is clamped, its similarities are 0 (no NaN).
    v = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    out = ops.multi_perspective_cosine(v, torch.ones(1, 2, dtype=torch.float64))
    assert torch.isfinite(out).all() and out[0, 0, 1] == 0 and out[0, 1, 1] == 1


def test_covariance_hand_worked():
    # Channel 0: [1, 3] (mean 2, var 1); channel 1: [4, 0] (mean 2, var 4); covariance -2.
    x = torch.tensor([[[1.0, 3.0], [4.0, 0.0]]])
    torch.testing.assert_close(ops.second_order_pool(x), torch.tensor([[[1.0, -2.0], [-2.0, 4.0]]]))


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.second_order_pool(t, backend="reference"), (x,))
    v = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.multi_perspective_cosine(a, b, backend="reference"), (v, w))


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"x must be \(N, D, P\), got shape \(3, 4\)"):
        ops.second_order_pool(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"w must be \(K, 5\) to match v \(2, 3, 5\), got \(2, 4\)"):
        ops.multi_perspective_cosine(torch.zeros(2, 3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dtype"):
        ops.multi_perspective_cosine(torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ops.BackendError, match="no such backend"):
        ops.second_order_pool(torch.zeros(1, 2, 3), backend="nonexistent")
