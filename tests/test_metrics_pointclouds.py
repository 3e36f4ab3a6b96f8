"""Point-cloud set metrics on planted sets with known answers."""

import pytest
import torch

from vaekit.divergences import chamfer_distance
from vaekit.metrics.pointclouds import (
    SetDistances,
    chamfer_matrix,
    chamfer_set_metrics,
    jensen_shannon_divergence,
    occupancy_counts,
)


def _references(n=12, points=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, points, 3, generator=g) - 0.5) * 0.8


def test_chamfer_matrix_matches_pairwise_calls():
    a, b = _references(3, seed=1), _references(4, seed=2)
    matrix = chamfer_matrix(a, b, pairs_per_batch=5)
    for i in range(3):
        for j in range(4):
            expected = chamfer_distance(a[i : i + 1], b[j : j + 1]).item()
            assert matrix[i, j].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_chamfer_matrix_resumes_after_a_stop(tmp_path, monkeypatch, symmetric):
    from vaekit.metrics import pointclouds

    a, b = _references(6, seed=3), _references(5, seed=4)
    columns = None if symmetric else b
    full = chamfer_matrix(a, columns, pairs_per_batch=4)
    original, calls = pointclouds.nearest_squared_distances, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped while computing the third batch
        return original(*args, **kwargs)

    monkeypatch.setattr(pointclouds, "nearest_squared_distances", stopping)
    path = tmp_path / "matrix.npz"
    with pytest.raises(KeyboardInterrupt):
        chamfer_matrix(a, columns, pairs_per_batch=4, state_path=path, save_every_s=0.0)
    counted: list[int] = []
    monkeypatch.setattr(pointclouds, "nearest_squared_distances", lambda *x, **k: counted.append(1) or original(*x, **k))
    resumed = chamfer_matrix(a, columns, pairs_per_batch=4, state_path=path)
    assert torch.equal(resumed, full)
    total_batches = -(-(15 if symmetric else 30) // 4)
    assert len(counted) == total_batches - 2  # the two batches saved before the stop are not recomputed
    with pytest.raises(ValueError, match="other inputs"):
        chamfer_matrix(a[:4], columns, pairs_per_batch=4, state_path=path)


def test_jittered_copies_cover_everything_and_are_indistinguishable():
    references = _references(40)
    g = torch.Generator().manual_seed(3)
    samples = references + 1e-4 * torch.randn(references.shape, generator=g)
    metrics = chamfer_set_metrics(samples, references)
    assert metrics["cov_cd"] == 1.0
    assert metrics["mmd_cd"] < 1e-6
    # each cloud's nearest neighbour is its own jittered twin, in the other set: 1-NN is always wrong
    assert metrics["1nna_cd"] == pytest.approx(0.0)


def test_fresh_draws_of_the_same_distribution_give_about_half():
    references, samples = _references(60, seed=4), _references(60, seed=5)
    assert chamfer_set_metrics(samples, references)["1nna_cd"] == pytest.approx(0.5, abs=0.15)


def test_copies_of_one_cloud_cover_one_reference():
    references = _references(10)
    samples = references[3:4].repeat(7, 1, 1)
    assert chamfer_set_metrics(samples, references)["cov_cd"] == pytest.approx(1 / 10)


def test_well_separated_sets_are_told_apart():
    references = _references(15)
    samples = _references(15, seed=9) * 0.1 + 0.3  # small clouds far from the references
    assert chamfer_set_metrics(samples, references)["1nna_cd"] == 1.0


def test_jsd_of_a_set_with_itself_is_zero_and_of_disjoint_sets_is_one():
    references = _references(10)
    assert jensen_shannon_divergence(references, references) == pytest.approx(0.0, abs=1e-12)
    left = torch.full((2, 50, 3), -0.45)
    right = torch.full((2, 50, 3), 0.45)
    assert jensen_shannon_divergence(left, right) == pytest.approx(1.0)


def test_occupancy_counts_every_point_once_on_the_28_grid():
    clouds = _references(3)
    counts = occupancy_counts(clouds)
    assert counts.shape == (28**3,) and counts.sum() == 3 * 64
    assert occupancy_counts(torch.tensor([[[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]]]))[[0, -1]].tolist() == [1, 1]


def test_set_distances_feed_each_metric_from_one_matrix():
    d = SetDistances(torch.tensor([[1.0, 5.0], [2.0, 0.5]]), torch.tensor([[0.0, 3.0], [3.0, 0.0]]),
                     torch.tensor([[0.0, 4.0], [4.0, 0.0]]))
    from vaekit.metrics.pointclouds import (
        coverage,
        minimum_matching_distance,
        one_nearest_neighbour_accuracy,
    )

    assert minimum_matching_distance(d) == pytest.approx((1.0 + 0.5) / 2)
    assert coverage(d) == 1.0
    # s0 -> r0 (1.0, wrong), s1 -> r1 (0.5, wrong), r0 -> s0 (1.0, wrong), r1 -> s1 (0.5, wrong)
    assert one_nearest_neighbour_accuracy(d) == 0.0
