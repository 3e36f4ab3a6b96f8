"""Bounds and estimators: the IWAE bound, the importance-sampled log p(x) against a closed form."""

import math

import pytest
import torch

from vaekit.batch import Batch
from vaekit.distributions import DiagonalGaussian
from vaekit.models.vae import VAE, VAEConfig
from vaekit.objectives import (
    bits_per_dim,
    dequantised_bits_per_dim,
    free_bits_kl,
    importance_sampled_log_px,
    iwae_bound,
    kl_weight,
)


def test_iwae_bound_of_constant_weights_is_the_weight():
    log_w = torch.full((7, 3), -2.5)
    torch.testing.assert_close(iwae_bound(log_w), torch.full((3,), -2.5))


def test_iwae_bound_is_at_least_the_mean_log_weight():
    log_w = torch.randn(50, 10) * 3
    assert torch.all(iwae_bound(log_w) >= log_w.mean(0))


def test_kl_weight_warms_up_linearly_to_beta():
    assert kl_weight(0, beta=4.0, warmup_steps=100) == 0.0
    assert kl_weight(50, beta=4.0, warmup_steps=100) == pytest.approx(2.0)
    assert kl_weight(500, beta=4.0, warmup_steps=100) == 4.0
    assert kl_weight(0, beta=0.5, warmup_steps=0) == 0.5


def test_free_bits_replaces_inactive_dimensions_by_the_floor():
    kl_per_dim = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # dim 0 mean 0.2 < 0.5: floored
    per_sample = free_bits_kl(kl_per_dim, 0.5)
    torch.testing.assert_close(per_sample, torch.tensor([2.5, 4.5]))
    assert per_sample.mean().item() == pytest.approx(max(0.5, 0.2) + max(0.5, 3.0))
    torch.testing.assert_close(free_bits_kl(kl_per_dim, 0.0), kl_per_dim.sum(-1))


def test_bits_per_dim():
    assert bits_per_dim(math.log(2) * 784, 784) == pytest.approx(1.0)
    assert dequantised_bits_per_dim(0.0, 10, 256) == pytest.approx(math.log2(255))


class _ConstantModel:
    """log_weights drawn iid N(0, 1): the estimator must merge chunks exactly like one big logsumexp."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)
        self.all = []

    def log_weights(self, x, num_samples, generator=None):
        w = torch.randn(num_samples, x.shape[0], generator=self.generator)
        self.all.append(w)
        return w


def test_importance_sampling_chunks_equal_one_logsumexp():
    model = _ConstantModel()
    log_px, elbo = importance_sampled_log_px(model, torch.zeros(4, 1), num_samples=250, samples_per_chunk=64)
    all_w = torch.cat(model.all)
    torch.testing.assert_close(log_px, torch.logsumexp(all_w, 0) - math.log(250))
    torch.testing.assert_close(elbo, all_w.mean(0))


def _linear_gaussian_vae(sigma: float, perturb: float, seed: int = 0) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A VAE with linear decoder x = W z + b + sigma*eps, and its encoder set to the exact posterior (plus noise).

    For p(z) = N(0, I): p(x) = N(b, W W^T + sigma^2 I) and q*(z|x) = N(S W^T (x - b) / sigma^2, S),
    S = (I + W^T W / sigma^2)^-1.
    """
    torch.manual_seed(seed)
    config = VAEConfig(image_shape=(1, 2, 2), latent_dim=2, hidden_dims=(), likelihood="gaussian", gaussian_std=sigma)
    model = VAE(config).double()
    decoder = model.decoder[0][0]
    encoder = model.encoder[1][0]
    weight, bias = decoder.weight.detach(), decoder.bias.detach()  # (4, 2), (4,)
    covariance = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + weight.T @ weight / sigma**2)
    with torch.no_grad():
        gain = covariance @ weight.T / sigma**2  # (2, 4)
        encoder.weight.copy_(torch.cat([gain, torch.zeros(2, 4, dtype=torch.float64)]))
        encoder.bias.copy_(torch.cat([-gain @ bias, torch.log(torch.diagonal(covariance))]))
        encoder.weight.add_(perturb * torch.randn_like(encoder.weight))
        encoder.bias.add_(perturb * torch.randn_like(encoder.bias))
    marginal = torch.distributions.MultivariateNormal(bias, weight @ weight.T + sigma**2 * torch.eye(4, dtype=torch.float64))
    x = marginal.sample((16,)).view(16, 1, 2, 2)
    return model, x, marginal.log_prob(x.view(16, 4))


def test_importance_sampled_log_px_matches_linear_gaussian_closed_form():
    model, x, log_px_true = _linear_gaussian_vae(sigma=0.5, perturb=0.0)
    # with an exact mean but a diagonal covariance the weights vary; K=1000 must land within 0.01 nats
    log_px, elbo = importance_sampled_log_px(
        model, x, num_samples=1000, samples_per_chunk=128, generator=torch.Generator().manual_seed(1)
    )
    error = log_px - log_px_true
    assert error.abs().mean() < 0.02 and error.abs().max() < 0.06
    assert abs(error.mean()) < 0.01
    assert torch.all(elbo <= log_px + 1e-9)


def test_importance_sampled_log_px_converges_with_a_poor_encoder():
    model, x, log_px_true = _linear_gaussian_vae(sigma=0.5, perturb=0.1, seed=3)
    generator = torch.Generator().manual_seed(2)
    errors = {}
    for k in (1, 10, 1000):
        estimate, _ = importance_sampled_log_px(model, x, num_samples=k, samples_per_chunk=100, generator=generator)
        errors[k] = (estimate - log_px_true).abs().mean().item()
    assert errors[1000] < 0.05
    assert errors[1000] < errors[10] < errors[1]


def test_iwae_training_objective_matches_log_weights():
    model, x, _ = _linear_gaussian_vae(sigma=0.5, perturb=0.0)
    model = VAE(model.config.model_copy(update={"iwae_samples": 5})).double()
    losses = model.loss(Batch.of(x, generator=torch.Generator().manual_seed(0)))
    assert losses.terms["iwae_bound"].shape == (16,)
    assert set(losses.terms) == {"reconstruction", "kl", "elbo", "iwae_bound"}
    assert losses.terms["iwae_bound"].mean() >= losses.terms["elbo"].mean() - 0.5  # elbo uses the closed-form KL
    torch.testing.assert_close(losses.total, -losses.terms["iwae_bound"].mean())


def test_diagonal_gaussian_standard_like_is_the_prior():
    prior = DiagonalGaussian.standard_like(torch.ones(3, 2))
    torch.testing.assert_close(prior.log_prob(torch.zeros(3, 2)), torch.full((3, 2), -0.5 * math.log(2 * math.pi)))
