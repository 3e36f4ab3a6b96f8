"""The pruned exact EMD search gives the brute-force metrics, prunes, and resumes.

Reference EMDs never come from `vaekit.emd` (which the search calls): they are known by
construction (translated copies of one cloud) or solved by scipy's `linear_sum_assignment`. The
library's convention: EMD(x, y) = min over bijections pi of mean_i ||x_i - y_pi(i)||, Euclidean,
not squared.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from vaekit.metrics.emd_search import (
    EXACT,
    SearchState,
    emd_set_metrics,
    nearest_exact,
    sliced_lower_bounds,
)
from vaekit.metrics.pointclouds import (
    SetDistances,
    coverage,
    minimum_matching_distance,
    one_nearest_neighbour_accuracy,
)


def _sets(seed=0, points=32):
    """Clouds in four shape clusters (scaled boxes), so that nearest neighbours are informative."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.rand(4, points, 3, generator=g) * torch.tensor([1.0, 0.3, 0.6])
    def draw(count):
        picks = torch.randint(0, 4, (count,), generator=g)
        return shapes[picks] * (1 + 0.2 * torch.rand(count, 1, 1, generator=g)) + 0.03 * torch.randn(count, points, 3, generator=g)
    return draw(9), draw(8)


def _assignment_emd(x, y):
    """EMD by scipy's Hungarian-type solver: mean Euclidean length of an optimal bijection."""
    cost = torch.cdist(x.double(), y.double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def _brute_force(samples, references):
    clouds = torch.cat([samples, references]).double()
    n = len(clouds)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i, j] = matrix[j, i] = _assignment_emd(clouds[i], clouds[j])
    s = len(samples)
    d = SetDistances(matrix[:s, s:], matrix[:s, :s], matrix[s:, s:])
    return {"mmd_emd": minimum_matching_distance(d), "cov_emd": coverage(d), "1nna_emd": one_nearest_neighbour_accuracy(d)}


def _translated_copies(offsets):
    """Copies of one 32-point cloud, copy k moved by offsets[k] along the unit vector (2, 3, 6) / 7.

    EMD(X + a u, X + b u) = |a - b|: the identity matching costs |a - b| per point, and no
    bijection costs less, since mean_i ||x_i - x_pi(i) + (a - b) u|| >= ||(a - b) u|| (the x_i
    terms cancel in the mean).
    """
    cloud = torch.rand(32, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    direction = torch.tensor([2.0, 3.0, 6.0], dtype=torch.float64) / 7
    return torch.stack([cloud + offset * direction for offset in offsets])


def test_search_on_translated_copies_gives_the_hand_computed_metrics():
    # positions along the line: S = 0, 0.12, 1.0, 3.1, 3.35 and R = 0.05, 0.7, 0.9, 2.0
    samples = _translated_copies([0.0, 0.12, 1.0, 3.1, 3.35])
    references = _translated_copies([0.05, 0.7, 0.9, 2.0])
    metrics = emd_set_metrics(samples, references)
    # nearest sample of each reference: 0.05 (S 0), 0.3 (S 1.0), 0.1 (S 1.0), 1.0 (S 1.0)
    assert metrics["mmd_emd"] == pytest.approx((0.05 + 0.3 + 0.1 + 1.0) / 4, rel=1e-9)
    # nearest reference of each sample: R 0.05, R 0.05, R 0.9, R 2.0, R 2.0 -> three of four covered
    assert metrics["cov_emd"] == 0.75
    # leave-one-out nearest cloud in its own set: S 3.1 <-> S 3.35 and R 0.7 -> R 0.9; the other six
    # (S 0, S 0.12, S 1.0, R 0.05, R 0.9, R 2.0) have their nearest in the other set
    assert metrics["1nna_emd"] == pytest.approx(3 / 9)
    assert metrics["emd_pairs"] == 9 * 8 // 2


def test_pruned_search_matches_brute_force_and_solves_fewer_pairs():
    samples, references = _sets()
    pruned = emd_set_metrics(samples, references)
    expected = _brute_force(samples, references)
    for key, value in expected.items():
        assert pruned[key] == pytest.approx(value, rel=1e-12, abs=1e-15)
    assert pruned["emd_pairs"] == 17 * 16 // 2
    assert 0 < pruned["emd_exact_solves"] < pruned["emd_pairs"]


@pytest.mark.parametrize("seed", [0, 4])
def test_searches_in_several_threads_give_the_brute_force_values(seed):
    samples, references = _sets(seed=seed, points=48)
    threaded = emd_set_metrics(samples, references, workers=3)
    expected = _brute_force(samples, references)
    for key, value in expected.items():
        assert threaded[key] == pytest.approx(value, rel=1e-12, abs=1e-15)


def test_nearest_exact_requeues_entries_another_search_raised(monkeypatch):
    from vaekit.metrics import emd_search

    samples, references = _sets(seed=5)
    clouds = torch.cat([samples, references]).double()
    state = SearchState.load_or_new(None, len(clouds))
    sliced_lower_bounds(clouds, state)
    candidates = np.arange(1, len(clouds))
    exact = {c: _assignment_emd(clouds[0], clouds[c]) for c in candidates.tolist()}
    best = min(exact, key=exact.get)
    original, raced = emd_search._refine, []

    def racing(query, candidate, *args):
        if not raced:  # meanwhile another thread solves a queued pair whose bound sits below the best EMD
            queued = [c for c in exact if c not in (best, candidate) and state.distances[0, c] < exact[best]]
            other = min(queued, key=lambda c: state.distances[0, c])
            state.distances[0, other] = state.distances[other, 0] = exact[other]
            state.level[0, other] = state.level[other, 0] = EXACT
            raced.append(other)
        return original(query, candidate, *args)

    monkeypatch.setattr(emd_search, "_refine", racing)
    assert nearest_exact(0, candidates, clouds, state) == best  # not `other` on the strength of its stale bound
    assert raced and exact[raced[0]] > exact[best]


def test_cross_set_metrics_alone_need_fewer_solves_and_agree():
    samples, references = _sets(seed=3)
    every = emd_set_metrics(samples, references)
    cross = emd_set_metrics(samples, references, metrics=("mmd", "cov"))
    assert cross["mmd_emd"] == every["mmd_emd"] and cross["cov_emd"] == every["cov_emd"] and "1nna_emd" not in cross
    assert cross["emd_exact_solves"] <= every["emd_exact_solves"]
    with pytest.raises(ValueError, match="choose from"):
        emd_set_metrics(samples, references, metrics=("fid",))


def test_search_resumes_from_a_saved_state(tmp_path):
    samples, references = _sets(seed=1)
    path = tmp_path / "search.npz"
    full = emd_set_metrics(samples, references, state_path=path)
    state = SearchState.load_or_new(path, 17)
    assert state.queries_done == 17 + 9 + 8 and state.rows_bounded == 17
    state.queries_done = 5  # as if stopped early: the rest of the queries run again on the saved values
    state.save(path)
    assert emd_set_metrics(samples, references, state_path=path) == full
    with pytest.raises(ValueError, match="17"):
        emd_set_metrics(samples[:3], references, state_path=path)


def test_nearest_exact_never_returns_a_pruned_candidate_that_is_nearer():
    samples, references = _sets(seed=2)
    clouds = torch.cat([samples, references]).double()
    state = SearchState.load_or_new(None, len(clouds))
    sliced_lower_bounds(clouds, state)
    candidates = np.arange(1, len(clouds))
    nearest = nearest_exact(0, candidates, clouds, state)
    exact = [_assignment_emd(clouds[0], clouds[c]) for c in candidates]
    assert nearest == candidates[int(np.argmin(exact))]
    assert 1 <= (state.level[0] == EXACT).sum() - 1 < len(candidates)  # some pairs solved, not all
    assert np.all(state.distances[0, candidates] <= np.array(exact) + 1e-12)  # bounds stay below the truth
