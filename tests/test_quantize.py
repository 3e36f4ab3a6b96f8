"""The vector quantiser: nearest codes against brute force, gradient paths, the EMA codebook against a
hand computation, k-means, dead-code restarts, perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaekit.batch import Batch
from vaekit.quantize import (
    VectorQuantizer,
    kmeans,
    laplace_smoothed,
    nearest_codes,
    perplexity,
    rotation_trick,
    straight_through,
)


@pytest.mark.parametrize(("max_block_bytes", "codes_per_tile"), [(1, 1024), (4 * 37 * 5, 1024), (16 * 2**20, 1024),
                                                                 (4 * 5 * 7, 5), (1, 1), (4 * 2**20, 16)])
def test_nearest_codes_match_brute_force_for_any_tiling_ties_included(max_block_bytes, codes_per_tile):
    g = torch.Generator().manual_seed(0)
    vectors, codebook = torch.randn(300, 8, generator=g), torch.randn(37, 8, generator=g)
    codebook[30] = codebook[3]  # a tie across tiles: the first index wins, as argmin's
    vectors[:10] = codebook[3]
    expected = torch.cdist(vectors.double(), codebook.double()).argmin(1)
    assert torch.equal(expected[:10], torch.full((10,), 3))
    found = nearest_codes(vectors, codebook, max_block_bytes=max_block_bytes, codes_per_tile=codes_per_tile)
    assert torch.equal(found, expected)


def test_straight_through_has_the_value_of_the_codes_and_the_gradient_of_the_identity():
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    codes = torch.randn(5, 3, generator=g, dtype=torch.float64)
    out = straight_through(vectors, codes)
    torch.testing.assert_close(out, codes)
    weights = torch.randn(5, 3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), vectors)
    torch.testing.assert_close(grad, weights)


def test_rotation_trick_has_the_value_of_the_code_and_a_scaled_rotation_as_jacobian():
    g = torch.Generator().manual_seed(2)
    e, q = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rotation_trick(e[None], q[None])[0], q)
    jacobian = torch.autograd.functional.jacobian(lambda v: rotation_trick(v[None], q[None])[0], e)  # (4, 4)
    scale = q.norm() / e.norm()
    torch.testing.assert_close(jacobian @ jacobian.T, scale**2 * torch.eye(4, dtype=torch.float64))  # scaled orthogonal
    torch.testing.assert_close(jacobian @ e, q)  # it maps z_e onto z_q
    assert torch.linalg.det(jacobian / scale) == pytest.approx(1.0)  # a rotation, not a reflection


def test_perplexity_is_one_for_one_code_and_k_for_uniform_use():
    assert perplexity(torch.tensor([0.0, 7.0, 0.0])).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([3.0, 3.0, 3.0, 3.0])).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([1.0, 1.0, 2.0])).item() == pytest.approx(np.exp(-(2 * 0.25 * np.log(0.25)
                                                                                        + 0.5 * np.log(0.5))))


def test_laplace_smoothing_keeps_the_total_and_leaves_no_zero():
    sizes = torch.tensor([0.0, 5.0, 15.0])
    smoothed = laplace_smoothed(sizes, eps=1e-5)
    assert smoothed.sum().item() == pytest.approx(20.0) and (smoothed > 0).all()
    torch.testing.assert_close(smoothed[1:], sizes[1:], rtol=1e-5, atol=0)


def _quantizer(codebook: torch.Tensor, **options) -> VectorQuantizer:
    quantizer = VectorQuantizer(len(codebook), codebook.shape[1], **options)
    quantizer._set_codebook(codebook)
    quantizer.initialised.fill_(True)
    return quantizer


def test_one_ema_update_matches_the_hand_computation():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    quantizer = _quantizer(codebook, decay=0.9, eps=1e-5)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # two to code 0, one to code 1, none to 2
    quantizer.update_buffers(vectors, Batch.of(vectors))
    cluster_size = 0.9 * np.ones(3) + 0.1 * np.array([2.0, 1.0, 0.0])  # started at one vector per code
    embed_sum = 0.9 * codebook.numpy() * laplace_smoothed(torch.ones(3), 1e-5).numpy()[:, None] \
        + 0.1 * np.array([[1.0, 1.0], [9.0, 11.0], [0.0, 0.0]])
    n = cluster_size.sum()
    smoothed = (cluster_size + 1e-5) / (n + 3 * 1e-5) * n
    np.testing.assert_allclose(quantizer.cluster_size.numpy(), cluster_size, rtol=1e-6)
    np.testing.assert_allclose(quantizer.embed_sum.numpy(), embed_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(quantizer.codebook.numpy(), embed_sum / smoothed[:, None], rtol=1e-5, atol=1e-6)


def test_the_codebook_loss_moves_codes_and_the_commitment_moves_only_the_encoder():
    codebook = torch.tensor([[0.0, 0.0], [4.0, 4.0]])
    quantizer = _quantizer(codebook, ema=False)
    vectors = torch.tensor([[1.0, 0.5], [3.0, 5.0]], requires_grad=True)
    out = quantizer(vectors)
    assert torch.equal(out.indices, torch.tensor([0, 1]))
    torch.testing.assert_close(out.codebook_loss, torch.tensor([1.25, 2.0]))
    torch.testing.assert_close(out.commitment_loss, torch.tensor([1.25, 2.0]))
    (code_grad,) = torch.autograd.grad(out.codebook_loss.sum(), quantizer.codebook)
    torch.testing.assert_close(code_grad, 2 * (codebook - vectors.detach()))  # d/de ||sg[z_e] - e||^2
    vector_grad, code_grad = torch.autograd.grad(out.commitment_loss.sum(), [vectors, quantizer.codebook],
                                                 allow_unused=True)
    torch.testing.assert_close(vector_grad, 2 * (vectors.detach() - codebook))
    assert code_grad is None or torch.equal(code_grad, torch.zeros_like(code_grad))


def test_kmeans_finds_three_separated_blobs():
    g = torch.Generator().manual_seed(3)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 8.0]])
    vectors = torch.cat([c + 0.3 * torch.randn(200, 2, generator=g) for c in centres])
    found = kmeans(vectors, 3, iterations=20, generator=torch.Generator().manual_seed(4))
    matched = found[torch.cdist(centres, found).argmin(1)]
    torch.testing.assert_close(matched, centres, atol=0.1, rtol=0)


def test_the_first_update_initialises_the_codebook_by_kmeans_of_the_batch():
    g = torch.Generator().manual_seed(5)
    vectors = torch.cat([torch.tensor([-5.0, 0.0]) + 0.1 * torch.randn(50, 2, generator=g),
                         torch.tensor([5.0, 0.0]) + 0.1 * torch.randn(50, 2, generator=g)])
    quantizer = VectorQuantizer(2, 2, decay=0.5)
    assert not bool(quantizer.initialised)
    quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(6)))
    assert bool(quantizer.initialised)
    assert sorted(round(x) for x in quantizer.codebook[:, 0].tolist()) == [-5, 5]


def test_a_code_unused_for_more_than_restart_after_steps_restarts_at_a_vector_of_the_batch():
    codebook = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # code 1 is never chosen
    quantizer = _quantizer(codebook, decay=0.5, restart_after=2)
    vectors = 0.1 * torch.randn(20, 2, generator=torch.Generator().manual_seed(7))
    for step in (1, 2):
        quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(step)), step=step)
        assert quantizer.codebook[1].norm() > 100  # unused for 1, then 2 steps: not more than restart_after
    quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(3)), step=3)
    assert (vectors - quantizer.codebook[1]).norm(dim=1).min() < 1e-6  # 3 > 2: restarted at a batch vector
    assert quantizer.last_used.tolist() == [3, -1] and quantizer.last_restart.tolist() == [0, 3]
    assert quantizer.codebook[0].norm() < 0.2  # code 0: still the EMA mean of the vectors near 0


def test_after_kmeans_the_counts_are_the_clusters_and_an_empty_cluster_restarts_after_restart_after_steps():
    vectors = torch.cat([torch.full((30, 2), -5.0), torch.full((10, 2), 5.0)])  # two distinct points only
    quantizer = VectorQuantizer(3, 2, decay=0.99, restart_after=1)  # three codes for two points: one is empty
    quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(2)), step=0)
    assert sorted(quantizer.cluster_size.tolist()) == [0.0, 10.0, 30.0]
    empty = quantizer.cluster_size == 0
    quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(3)), step=1)
    assert quantizer.last_restart[empty].item() == 0  # one step unused is not more than restart_after=1
    quantizer.update_buffers(vectors, Batch.of(vectors, generator=torch.Generator().manual_seed(4)), step=2)
    assert quantizer.last_restart[empty].item() == 2  # restarted, on a vector of the batch
    assert quantizer.last_used[empty].item() == -1  # and never chosen
    assert torch.cdist(quantizer.codebook[empty], vectors).min() == 0


def test_last_used_records_the_last_step_with_an_assignment():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [99.0, 99.0]])
    quantizer = _quantizer(codebook)
    near_0, near_1 = torch.zeros(4, 2), torch.full((4, 2), 0.0) + torch.tensor([10.0, 0.0])
    quantizer.update_buffers(torch.cat([near_0, near_1]), Batch.of(torch.zeros(8, 1)), step=3)
    quantizer.update_buffers(near_0, Batch.of(torch.zeros(4, 1)), step=7)
    assert quantizer.last_used.tolist() == [7, 3, -1]


def test_a_rate_weight_chooses_the_code_of_least_distance_plus_lambda_times_its_information():
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(6, 3, generator=g)
    quantizer = _quantizer(codebook, rate_weight=0.5, decay=0.9)
    quantizer.cluster_size.copy_(torch.tensor([50.0, 20.0, 10.0, 10.0, 5.0, 5.0]))
    quantizer.mean_distance.fill_(2.0)
    vectors = torch.randn(400, 3, generator=g)
    shares = (quantizer.cluster_size + 1e-5) / (100 + 6e-5)  # Laplace smoothed, eps 1e-5
    lam = 0.5 * 2.0
    expected = (torch.cdist(vectors.double(), codebook.double()).pow(2) - lam * shares.double().log()).argmin(1)
    found = quantizer(vectors).indices
    assert torch.equal(found, expected)
    nearest = nearest_codes(vectors, codebook)
    assert (found != nearest).any()  # the rate moved some choices ...
    assert (found == 0).sum() > (nearest == 0).sum()  # ... towards the likeliest code


def test_without_a_rate_weight_the_choice_is_the_nearest_code_and_no_distance_is_kept():
    codebook = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    quantizer = _quantizer(codebook, decay=0.9)
    vectors = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(quantizer(vectors).indices, nearest_codes(vectors, codebook))
    assert "mean_distance" not in quantizer.state_dict()


def test_the_mean_distance_follows_the_squared_distances_of_the_assigned_codes_by_the_ema():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    quantizer = _quantizer(codebook, rate_weight=1.0, decay=0.9)
    quantizer.mean_distance.fill_(4.0)
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [10.0, 13.0]])  # squared distances 1, 4, 9 to their codes
    quantizer.update_buffers(vectors, Batch.of(vectors), indices=torch.tensor([0, 0, 1]))
    assert quantizer.mean_distance.item() == pytest.approx(0.9 * 4.0 + 0.1 * (1 + 4 + 9) / 3)


def test_a_rate_weight_without_the_ema_codebook_is_refused():
    with pytest.raises(ValueError, match="EMA"):
        VectorQuantizer(8, 2, ema=False, rate_weight=1.0)
