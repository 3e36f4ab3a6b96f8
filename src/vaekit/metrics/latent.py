"""Posterior-collapse diagnostics of a Gaussian encoder over a dataset.

Given q(z|x_n) = N(mean_n, diag(exp(log_var_n))) for n = 1..N:
- KL per latent dimension, E_x KL(q(z_j|x) || N(0, 1));
- active units (Burda et al. 2016, sec. 5.2): dimensions with Cov_x(E_q[z_j]) > threshold;
- the aggregate posterior q(z) = (1/N) sum_n q(z|x_n), its KL to the prior, and the mutual
  information I(x; z) = E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z)) (Hoffman & Johnson 2016, eq. 3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaekit.distributions import DiagonalGaussian, kl_divergence
from vaekit.engine.distributed import ONE_PROCESS, Shard


def kl_per_dimension(posterior: DiagonalGaussian) -> Tensor:
    """E_x KL(q(z_j|x) || N(0, 1)) for each j: (N, D) -> (D,)."""
    return kl_divergence(posterior, DiagonalGaussian.standard_like(posterior.mean)).mean(0)


def active_units(posterior: DiagonalGaussian, threshold: float = 0.01) -> Tensor:
    """Boolean (D,): Cov_x(E_q[z_j]) > threshold (Burda et al. 2016)."""
    return posterior.mean.float().var(0, unbiased=True) > threshold


Z_CHUNK = 1024  # draws z_m scored at once against the N posteriors (memory: Z_CHUNK x N)


def log_aggregate_posterior(z: Tensor, posterior: DiagonalGaussian, chunk: int = Z_CHUNK) -> Tensor:
    """log q(z_m) = log (1/N) sum_n q(z_m | x_n) for z (M, D) against N posteriors: (M,).

    Uses the expanded quadratic form in float64, one chunk of z at a time:
    log N(z; m, v) = -1/2 [sum z^2/v - 2 sum z m/v + sum m^2/v + sum log v + D log 2 pi].
    """
    mean = posterior.mean.double()  # (N, D)
    inv_var = torch.exp(-posterior.log_var.double())  # (N, D)
    constant = (mean**2 * inv_var).sum(1) + posterior.log_var.double().sum(1)  # (N,)
    constant = constant + mean.shape[1] * math.log(2 * math.pi)
    out = []
    for z_chunk in z.double().split(chunk):
        quadratic = (z_chunk**2) @ inv_var.T - 2.0 * z_chunk @ (mean * inv_var).T  # (m, N)
        log_q = -0.5 * (quadratic + constant)  # (m, N)
        out.append(torch.logsumexp(log_q, dim=1) - math.log(mean.shape[0]))
    return torch.cat(out).float()


def aggregate_kl_and_mutual_information(
    posterior: DiagonalGaussian, generator: torch.Generator | None = None, *, shard: Shard = ONE_PROCESS
) -> tuple[float, float]:
    """(KL(q(z) || p(z)), I(x; z)) estimated with one draw z_n ~ q(z|x_n) per data point, in nats.

    Monte-Carlo over the N draws, with q(z) the mixture of the N posteriors (the estimator of
    He et al. 2019, which includes each point's own component, so it is biased by O(1/N)). Every
    process draws all N; each scores its share of them against the N posteriors (`shard`, O(N^2)).
    """
    noise = torch.randn(posterior.mean.shape, generator=generator)
    z = posterior.rsample(noise.to(posterior.mean.device)).float()  # (N, D)
    log_qz = shard.map_rows(lambda draws, _: log_aggregate_posterior(draws, posterior), z, Z_CHUNK)  # (N,)
    log_pz = DiagonalGaussian.standard_like(z).log_prob(z).sum(1)
    aggregate_kl = (log_qz - log_pz).mean().item()
    expected_kl = kl_per_dimension(posterior).sum().item()
    return aggregate_kl, expected_kl - aggregate_kl
