"""Posterior-collapse diagnostics on posteriors with known answers."""

import math

import pytest
import torch

from vaekit.distributions import DiagonalGaussian
from vaekit.metrics.latent import (
    active_units,
    aggregate_kl_and_mutual_information,
    kl_per_dimension,
    log_aggregate_posterior,
)


def test_active_units_count_dimensions_whose_mean_varies_across_data():
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([torch.randn(500, generator=g), torch.full((500,), 0.3), 0.01 * torch.randn(500, generator=g)], 1)
    posterior = DiagonalGaussian(mean, torch.zeros_like(mean))
    assert active_units(posterior, 0.01).tolist() == [True, False, False]


def test_kl_per_dimension_is_zero_for_collapsed_dimensions():
    mean = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    log_var = torch.tensor([[math.log(0.25), 0.0], [math.log(0.25), 0.0]])
    kl = kl_per_dimension(DiagonalGaussian(mean, log_var))
    expected_dim0 = 0.5 * (0.25 + 1.0 - 1.0 - math.log(0.25))
    torch.testing.assert_close(kl, torch.tensor([expected_dim0, 0.0]))


def test_collapsed_posterior_carries_no_information():
    posterior = DiagonalGaussian(torch.zeros(400, 3), torch.zeros(400, 3))  # q(z|x) = p(z) for every x
    aggregate_kl, mutual_information = aggregate_kl_and_mutual_information(posterior, torch.Generator().manual_seed(0))
    assert abs(aggregate_kl) < 1e-6 and abs(mutual_information) < 1e-6


def test_separated_tight_posteriors_carry_log_n_nats():
    n = 256
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(n, 2, generator=g) * 3  # well apart relative to the tiny posterior std
    posterior = DiagonalGaussian(mean, torch.full_like(mean, math.log(1e-6)))
    _, mutual_information = aggregate_kl_and_mutual_information(posterior, torch.Generator().manual_seed(2))
    assert mutual_information == pytest.approx(math.log(n), abs=0.05)  # I(x; z) <= log N, reached


def test_log_aggregate_posterior_matches_the_direct_mixture():
    g = torch.Generator().manual_seed(3)
    posterior = DiagonalGaussian(torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g) * 0.5)
    z = torch.randn(7, 4, generator=g)
    direct = torch.logsumexp(posterior.log_prob(z.unsqueeze(1)).sum(-1), dim=1) - math.log(50)  # (7,)
    torch.testing.assert_close(log_aggregate_posterior(z, posterior, chunk=3), direct, rtol=1e-5, atol=1e-5)
