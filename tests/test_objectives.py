"""Bounds and estimators: the ELBO and the IWAE bound against hand computations and closed forms,
the importance-sampled log p(x) against a closed form."""

import math

import pytest
import torch

from vaekit.batch import Batch
from vaekit.distributions import DiagonalGaussian
from vaekit.models.vae import VAE, VAEConfig
from vaekit.objectives import (
    bits_per_dim,
    dequantised_bits_per_dim,
    elbo,
    free_bits_kl,
    importance_sampled_log_px,
    iwae_bound,
    kl_weight,
)


def test_iwae_bound_of_constant_weights_is_the_weight():
    log_w = torch.full((7, 3), -2.5)
    torch.testing.assert_close(iwae_bound(log_w), torch.full((3,), -2.5))


def test_iwae_bound_is_at_least_the_mean_log_weight():
    log_w = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * 3
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


def _log_weight_parts_by_hand(model: VAE, x: torch.Tensor, noise: torch.Tensor, sigma: float):
    """log p(x|z_k), log p(z_k) - log q(z_k|x), KL(q || p(z)) of the linear VAE, by hand.

    x (B, 1, 2, 2), noise (K, B, 2) -> (K, B), (K, B), (B,).
    """
    encoder, decoder = model.encoder[1][0], model.decoder[0][0]
    x_flat = x.view(x.shape[0], 4)
    encoded = x_flat @ encoder.weight.detach().T + encoder.bias.detach()  # (B, 4)
    q = torch.distributions.Normal(encoded[:, :2], torch.exp(0.5 * encoded[:, 2:]))  # (B, 2)
    prior = torch.distributions.Normal(0.0, 1.0)
    z = q.loc + q.scale * noise  # (K, B, 2)
    decoded = z @ decoder.weight.detach().T + decoder.bias.detach()  # (K, B, 4)
    log_px_z = torch.distributions.Normal(decoded, sigma).log_prob(x_flat).sum(-1)
    log_prior_ratio = (prior.log_prob(z) - q.log_prob(z)).sum(-1)
    kl = torch.distributions.kl_divergence(q, prior).sum(-1)
    return log_px_z, log_prior_ratio, kl


def test_vae_log_weights_equal_a_hand_computation_and_give_the_trained_iwae_bound():
    model, x, _ = _linear_gaussian_vae(sigma=0.5, perturb=0.1)
    iwae_model = VAE(model.config.model_copy(update={"iwae_samples": 5})).double()
    iwae_model.load_state_dict(model.state_dict())
    log_w = iwae_model.log_weights(x, 5, torch.Generator().manual_seed(0))  # (K, B)
    losses = iwae_model.loss(Batch.of(x, generator=torch.Generator().manual_seed(0)))

    # the draws of log_weights and of the loss: (K, B, D) from a generator seeded 0
    noise = torch.randn(5, 16, 2, generator=torch.Generator().manual_seed(0)).double()
    log_px_z, log_prior_ratio, kl = _log_weight_parts_by_hand(iwae_model, x, noise, sigma=0.5)
    torch.testing.assert_close(log_w, log_px_z + log_prior_ratio)
    assert log_w.std(0).min() > 0.01  # the weights differ, so the bound is not one weight

    assert set(losses.terms) == {"reconstruction", "kl", "elbo", "iwae_bound"}
    by_hand = (torch.logsumexp(log_px_z + log_prior_ratio, 0) - math.log(5)).float()
    torch.testing.assert_close(losses.terms["iwae_bound"], by_hand)
    torch.testing.assert_close(losses.terms["iwae_bound"], iwae_bound(log_w))
    torch.testing.assert_close(losses.total, -iwae_bound(log_w).mean())
    torch.testing.assert_close(losses.terms["elbo"], elbo(log_px_z, kl))
    torch.testing.assert_close(losses.terms["kl"], kl)


def test_elbo_matches_a_hand_computation():
    log_px_z = torch.tensor([[-1.0, -2.0], [-3.0, -6.0]])  # (K=2, B=2)
    kl = torch.tensor([0.5, 1.0])
    torch.testing.assert_close(elbo(log_px_z, kl), torch.tensor([-2.5, -5.0]))  # mean_k - KL
    torch.testing.assert_close(elbo(log_px_z, kl, beta=2.0), torch.tensor([-3.0, -6.0]))
    torch.testing.assert_close(elbo(log_px_z[:1], kl), torch.tensor([-1.5, -3.0]))
    with pytest.raises(ValueError, match="elbo expects log_px_z of shape"):
        elbo(log_px_z[0], kl)  # (B,) would silently average over the batch


def test_elbo_of_the_linear_vae_is_log_px_minus_the_kl_to_the_true_posterior():
    """Kingma & Welling 2014 eq. (1): ELBO = log p(x) - KL(q(z|x) || p(z|x)), both in closed form.

    The encoder has the exact posterior mean and the diagonal of its covariance S, so
    KL(N(m, diag S) || N(m, S)) = 0.5 (tr(S^-1 diag S) - d + log det S - log det diag S).
    """
    model, x, log_px_true = _linear_gaussian_vae(sigma=0.5, perturb=0.0)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(20_000, 16, 2, generator=g, dtype=torch.float64)
    log_px_z, _, kl = _log_weight_parts_by_hand(model, x, noise, sigma=0.5)
    weight = model.decoder[0][0].weight.detach()
    covariance = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + weight.T @ weight / 0.25)
    diagonal = torch.diag(torch.diagonal(covariance))
    kl_to_posterior = 0.5 * (torch.trace(torch.linalg.solve(covariance, diagonal)) - 2
                             + torch.logdet(covariance) - torch.logdet(diagonal))
    assert kl_to_posterior > 0.01  # the diagonal posterior is visibly not exact
    standard_error = log_px_z.std(0) / math.sqrt(noise.shape[0])
    error = elbo(log_px_z, kl) - (log_px_true - kl_to_posterior)
    assert torch.all(error.abs() < 5 * standard_error)


def test_diagonal_gaussian_standard_like_is_the_prior():
    prior = DiagonalGaussian.standard_like(torch.ones(3, 2))
    torch.testing.assert_close(prior.log_prob(torch.zeros(3, 2)), torch.full((3, 2), -0.5 * math.log(2 * math.pi)))
