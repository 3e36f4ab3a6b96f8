"""Known answers for the probability math: closed forms, torch.distributions, Monte Carlo, normalisation."""

import math

import pytest
import torch
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from vaekit.distributions import (
    Bernoulli,
    DiagonalGaussian,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    kl_divergence,
)
from vaekit.likelihoods import ImageLikelihood


def _gaussians(seed: int = 0, shape=(64, 5)):
    g = torch.Generator().manual_seed(seed)
    q = DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    p = DiagonalGaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return q, p


def test_kl_matches_torch_distributions():
    q, p = _gaussians()
    expected = torch_kl(Normal(q.mean, q.std), Normal(p.mean, p.std))
    torch.testing.assert_close(kl_divergence(q, p), expected, rtol=1e-5, atol=1e-6)


def test_kl_matches_monte_carlo_estimate():
    q, p = _gaussians(seed=1, shape=(4, 3))
    g = torch.Generator().manual_seed(2)
    z = q.rsample(torch.randn((200_000, 4, 3), generator=g))  # (S, 4, 3)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    closed_form = kl_divergence(q, p)
    standard_error = (q.log_prob(z) - p.log_prob(z)).std(0) / math.sqrt(z.shape[0])
    assert torch.all((monte_carlo - closed_form).abs() < 5 * standard_error + 1e-4)


def test_kl_of_identical_gaussians_is_zero_and_positive_otherwise():
    q, p = _gaussians()
    assert torch.allclose(kl_divergence(q, q), torch.zeros_like(q.mean), atol=1e-6)
    assert torch.all(kl_divergence(q, p) > 0)


def test_gaussian_log_prob_matches_torch():
    q, _ = _gaussians()
    x = torch.randn_like(q.mean)
    torch.testing.assert_close(q.log_prob(x), Normal(q.mean, q.std).log_prob(x), rtol=1e-5, atol=1e-5)


def test_rsample_is_reparameterised():
    mean = torch.zeros(3, requires_grad=True)
    log_var = torch.zeros(3, requires_grad=True)
    z = DiagonalGaussian(mean, log_var).rsample(torch.ones(3))
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(3))
    torch.testing.assert_close(log_var.grad, torch.full((3,), 0.5))


def test_bernoulli_log_prob_matches_torch():
    logits = torch.randn(10, 7)
    x = (torch.rand(10, 7) < 0.5).float()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(Bernoulli(logits).log_prob(x), expected)


@pytest.mark.parametrize("num_bins", [2, 17, 256])
@pytest.mark.parametrize("mean,log_scale", [(0.0, -4.0), (0.37, -1.0), (-0.99, 0.5), (1.0, -6.0), (3.0, 1.0)])
def test_discretized_logistic_sums_to_one_over_bins(num_bins, mean, log_scale):
    x = torch.arange(num_bins, dtype=torch.float64) / (num_bins - 1)
    dist = DiscretizedLogistic(torch.full_like(x, mean), torch.full_like(x, log_scale), num_bins)
    probabilities = dist.log_prob(x).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert torch.all(probabilities >= 0)


def test_discretized_logistic_mixture_sums_to_one_over_bins():
    num_bins, m = 256, 4
    g = torch.Generator().manual_seed(0)
    x = (torch.arange(num_bins, dtype=torch.float64) / (num_bins - 1)).view(num_bins, 1, 1, 1)  # (bins, C=1, 1, 1)
    params = torch.randn(1, m * 3, 1, 1, generator=g, dtype=torch.float64).expand(num_bins, -1, -1, -1)
    dist = ImageLikelihood("logistic_mixture", num_bins=num_bins, num_mixtures=m).distribution(params, channels=1)
    assert isinstance(dist, DiscretizedLogisticMixture)
    assert dist.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_logistic_gradcheck_float64():
    mean = torch.randn(6, dtype=torch.float64, requires_grad=True)
    log_scale = (torch.randn(6, dtype=torch.float64) - 1).requires_grad_()
    x = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m, s: DiscretizedLogistic(m, s, 6).log_prob(x), (mean, log_scale))


def test_learned_gaussian_std_is_bounded_below():
    spec = ImageLikelihood("gaussian", gaussian_std=None, gaussian_min_std=0.05)
    params = torch.full((1, 2, 2, 2), -1e4)  # a decoder pushing the variance to zero
    dist = spec.distribution(params, channels=1)
    assert torch.all(dist.std >= 0.05 - 1e-7)
    assert torch.isfinite(spec.log_likelihood(dist, torch.zeros(1, 1, 2, 2))).all()


def test_half_precision_inputs_are_computed_in_fp32():
    q = DiagonalGaussian(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16))
    assert kl_divergence(q, q).dtype == torch.float32
    assert Bernoulli(torch.zeros(3, dtype=torch.bfloat16)).log_prob(torch.ones(3)).dtype == torch.float32
