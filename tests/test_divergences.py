"""Kernel MMD: near zero for one distribution, positive for shifted ones, unbiased, equal to a NumPy reference."""

import numpy as np
import pytest
import torch

from vaekit.divergences import IMQ_SCALES, mmd_unbiased, pairwise_squared_distances


def _numpy_mmd(x, y, kernel):
    """Direct double loop over pairs, no matrix tricks."""
    def k(a, b):
        return kernel(np.sum((a - b) ** 2))
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _samples(seed, n=12, m=9, d=3, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + shift


def test_imq_matches_numpy_reference():
    x, y = _samples(0, shift=0.5)
    base = 2 * 3 * 1.5
    reference = _numpy_mmd(x.numpy(), y.numpy(), lambda d2: sum(s * base / (s * base + d2) for s in IMQ_SCALES))
    assert mmd_unbiased(x, y, kernel="imq", prior_variance=1.5).item() == pytest.approx(reference, rel=1e-10)


def test_rbf_fixed_bandwidth_matches_numpy_reference():
    x, y = _samples(1, shift=0.5)
    reference = _numpy_mmd(x.numpy(), y.numpy(), lambda d2: np.exp(-d2 / (2 * 0.7**2)))
    assert mmd_unbiased(x, y, kernel="rbf", bandwidth=0.7).item() == pytest.approx(reference, rel=1e-10)


def test_rbf_median_heuristic_matches_numpy_reference():
    x, y = _samples(2, shift=0.5)
    joint = np.concatenate([x.numpy(), y.numpy()])
    distances = np.sqrt(((joint[:, None] - joint[None]) ** 2).sum(-1))
    h = np.median(distances[~np.eye(len(joint), dtype=bool)])
    reference = _numpy_mmd(x.numpy(), y.numpy(), lambda d2: np.exp(-d2 / (2 * h**2)))
    assert mmd_unbiased(x, y, kernel="rbf").item() == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_same_distribution_is_near_zero_and_shifted_is_clearly_positive(kernel):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    same = mmd_unbiased(x, y, kernel=kernel)
    shifted = mmd_unbiased(x, y + 1.0, kernel=kernel)
    assert abs(same.item()) < 0.01
    assert shifted.item() > 20 * abs(same.item()) and shifted.item() > 0.05


@pytest.mark.parametrize("kernel,bandwidth", [("imq", None), ("rbf", 1.5)])
def test_u_statistic_is_unbiased_with_a_fixed_kernel(kernel, bandwidth):
    g = torch.Generator().manual_seed(4)
    def draw(n):
        return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.3 + 0.3
    huge = mmd_unbiased(*draw(2000), kernel=kernel, bandwidth=bandwidth).item()
    small = torch.tensor([mmd_unbiased(*draw(5), kernel=kernel, bandwidth=bandwidth).item() for _ in range(1500)])
    standard_error = small.std().item() / 1500**0.5
    assert abs(small.mean().item() - huge) < 4 * standard_error + 2e-3


def test_pairwise_squared_distances_match_cdist_and_are_non_negative():
    x, y = _samples(5, n=40, m=30, d=6)
    torch.testing.assert_close(pairwise_squared_distances(x, y), torch.cdist(x, y) ** 2)
    assert pairwise_squared_distances(x, x).min() >= 0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        mmd_unbiased(torch.zeros(4, 2), torch.zeros(4, 3), kernel="imq")
