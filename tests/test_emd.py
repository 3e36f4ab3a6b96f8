"""Exact EMD against scipy's assignment solver; the auction's certified bracket; bounds below it.

The library's convention: EMD(x, y) = min over bijections pi of mean_i ||x_i - y_pi(i)||
(Euclidean, not squared). Reference values come from scipy's `linear_sum_assignment`, from all
bijections of tiny sets, or from translations (EMD(x, x + t) = ||t||).
"""

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vaekit.emd import (
    auction_assignment,
    coarse_cloud,
    coarse_dual_bound,
    earth_movers_distance,
    euclidean_cost,
    matched_emd,
    max_sliced_bound,
    nearest_neighbour_bound,
    random_directions,
    sliced_wasserstein,
    sorted_projections,
)


def _clouds(seed, n=60):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64) + 0.3


def _assignment_emd(x, y):
    """Exact EMD per pair by scipy: x (B, P, D), y (B, P, D) -> (B,) float64."""
    values = []
    for a, b in zip(x, y):
        cost = torch.cdist(a.double(), b.double()).numpy()
        rows, cols = linear_sum_assignment(cost)
        values.append(cost[rows, cols].mean())
    return torch.tensor(values, dtype=torch.float64)


def test_exact_emd_of_six_points_is_the_cheapest_of_all_720_bijections():
    x, y = (c[:6] for c in _clouds(4))
    cost = torch.cdist(x, y)
    bijections = itertools.permutations(range(6))
    cheapest = min(cost[range(6), list(perm)].mean().item() for perm in bijections)
    assert earth_movers_distance(x, y) == pytest.approx(cheapest, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_emd_matches_linear_sum_assignment(seed):
    x, y = _clouds(seed)
    cost = torch.cdist(x, y).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert earth_movers_distance(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-12)


def test_emd_of_a_permutation_is_zero_and_of_a_shift_is_its_length():
    x, _ = _clouds(3)
    shuffled = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    assert earth_movers_distance(x, shuffled) == pytest.approx(0.0, abs=1e-12)
    shift = torch.tensor([0.3, 0.4, 0.0], dtype=torch.float64)  # length 0.5
    assert earth_movers_distance(x, x + shift) == pytest.approx(0.5, rel=1e-9)


def test_lower_bound_never_exceeds_the_exact_emd():
    for seed in range(5):
        x, y = _clouds(seed, n=40)
        bound = nearest_neighbour_bound(x.unsqueeze(0), y.unsqueeze(0)).item()
        assert 0 < bound <= _assignment_emd(x[None], y[None]).item() + 1e-12


def test_unequal_sizes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        earth_movers_distance(torch.zeros(5, 3), torch.zeros(6, 3))


def _batch(seed, batch=3, n=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, 3, generator=g, dtype=torch.float64)
    return x, torch.rand(batch, n, 3, generator=g, dtype=torch.float64) * 0.8 + 0.1


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_auction_brackets_the_exact_emd_within_epsilon(epsilon):
    x, y = _batch(0)
    exact = _assignment_emd(x, y)
    result = auction_assignment(euclidean_cost(x, y), epsilon=epsilon)
    assert torch.all(result.lower <= exact + 1e-6) and torch.all(exact <= result.upper + 1e-6)
    assert torch.all(result.upper - result.lower <= epsilon + 1e-6)
    assert all(sorted(row.tolist()) == list(range(x.shape[1])) for row in result.assignment)  # bijections


def test_auction_with_a_hungarian_tail_still_brackets_the_exact_emd():
    x, y = _batch(1, n=64)
    exact = _assignment_emd(x, y)
    result = auction_assignment(euclidean_cost(x, y), epsilon=1e-3, tail=0.1)
    assert torch.all(result.lower <= exact + 1e-6) and torch.all(exact <= result.upper + 1e-6)
    assert all(sorted(row.tolist()) == list(range(64)) for row in result.assignment)


def test_matched_emd_is_the_exact_emd_and_the_auction_stays_within_epsilon():
    x, y = _batch(2)
    exact = _assignment_emd(x, y)
    torch.testing.assert_close(matched_emd(x, y, reduction="none").double(), exact, rtol=1e-5, atol=1e-6)
    auction = matched_emd(x, y, solver="auction", epsilon=1e-3, reduction="none").double()
    assert torch.all(auction >= exact - 1e-5) and torch.all(auction <= exact + 1e-3 + 1e-5)


def test_matched_emd_gradient_moves_points_towards_their_partners():
    x, y = _batch(3, batch=1, n=20)
    x = x.float().requires_grad_()
    matched_emd(x, y.float()).backward()
    stepped = (x - 0.05 * x.grad).detach()
    assert matched_emd(stepped, y.float()).item() < matched_emd(x.detach(), y.float()).item()


def test_max_sliced_bound_never_exceeds_the_exact_emd_and_tightens_with_directions():
    x, y = _batch(4, batch=4, n=40)
    exact = _assignment_emd(x, y)
    few, many = random_directions(4), random_directions(256)
    bound_few = max_sliced_bound(sorted_projections(x, few), sorted_projections(y, few))
    bound_many = max_sliced_bound(sorted_projections(x, many), sorted_projections(y, many))
    assert torch.all(bound_many <= exact + 1e-12) and torch.all(bound_few <= bound_many + 1e-12)
    assert torch.all(bound_many > 0.3 * exact)  # informative, not just >= 0
    blocked = max_sliced_bound(sorted_projections(x, many, blocks=8), sorted_projections(y, many, blocks=8))
    assert torch.all(blocked <= bound_many + 1e-12) and torch.all(blocked > 0.9 * bound_many)
    with pytest.raises(ValueError, match="divide"):
        sorted_projections(x, many, blocks=7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coarse_dual_bound_never_exceeds_the_exact_emd_and_tightens_with_clusters(seed):
    g = torch.Generator().manual_seed(seed)
    shape = torch.rand(200, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.4, 0.2], dtype=torch.float64)
    x = shape + 0.02 * torch.randn(200, 3, generator=g, dtype=torch.float64)  # two noisy copies of one shape,
    y = 1.1 * shape[torch.randperm(200, generator=g)] + 0.02 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    exact = _assignment_emd(x[None], y[None]).item()  # where the nearest-neighbour bound is weak
    nearest = nearest_neighbour_bound(x.unsqueeze(0), y.unsqueeze(0)).item()
    bounds = [coarse_dual_bound(x, y, coarse_cloud(x, k), coarse_cloud(y, k)) for k in (4, 25, 200)]
    assert all(bound <= exact + 1e-12 for bound in bounds)
    assert bounds[1] > max(nearest, 0.7 * exact)  # informative: above the nearest-neighbour bound
    assert bounds[2] == pytest.approx(exact, rel=1e-9)  # one point per cluster: the coarse dual is the exact one


def test_sliced_wasserstein_is_a_differentiable_lower_bound_of_the_emd():
    x, y = _batch(5, batch=4, n=50)
    exact = _assignment_emd(x, y)
    directions = random_directions(64)
    sliced = sliced_wasserstein(x, y, directions)
    max_sliced = max_sliced_bound(sorted_projections(x, directions), sorted_projections(y, directions))
    assert torch.all(sliced <= max_sliced + 1e-12) and torch.all(max_sliced <= exact + 1e-12)
    assert torch.all(sliced > 0.2 * exact)  # informative, not just >= 0
    shuffled = x[:, torch.randperm(50, generator=torch.Generator().manual_seed(1))]
    zero = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(sliced_wasserstein(x, shuffled, directions), zero)
    moving = x.clone().requires_grad_()
    sliced_wasserstein(moving, y, directions).sum().backward()
    stepped = (moving - 0.5 * moving.grad).detach()
    assert torch.all(sliced_wasserstein(stepped, y, directions) < sliced)


def test_auction_refuses_bad_input():
    with pytest.raises(ValueError, match="square"):
        auction_assignment(torch.zeros(2, 3, 4), epsilon=1e-3)
    with pytest.raises(ValueError, match="epsilon"):
        auction_assignment(torch.zeros(2, 3, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="solver"):
        matched_emd(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3), solver="sinkhorn")
