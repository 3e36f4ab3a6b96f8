"""Exact EMD against scipy's assignment solver; the nearest-neighbour lower bound never exceeds it."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vaekit.divergences import earth_movers_distance, emd_lower_bound


def _clouds(seed, n=60):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64) + 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_emd_matches_linear_sum_assignment(seed):
    x, y = _clouds(seed)
    cost = torch.cdist(x, y).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert earth_movers_distance(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-12)


def test_emd_of_a_permutation_is_zero_and_of_a_shift_is_its_length():
    x, _ = _clouds(3)
    assert earth_movers_distance(x, x[torch.randperm(len(x))]) == pytest.approx(0.0, abs=1e-12)
    shift = torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)  # length 0.5
    assert earth_movers_distance(x, x + shift) == pytest.approx(0.5, rel=1e-9)


def test_lower_bound_never_exceeds_the_exact_emd():
    for seed in range(5):
        x, y = _clouds(seed, n=40)
        bound = emd_lower_bound(x.unsqueeze(0), y.unsqueeze(0)).item()
        assert 0 < bound <= earth_movers_distance(x, y) + 1e-12


def test_unequal_sizes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        earth_movers_distance(torch.zeros(5, 3), torch.zeros(6, 3))
