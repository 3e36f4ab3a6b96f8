"""Objectives and bounds over log-weights log w = log p(x, z) - log q(z|x), written once for every
latent-variable model (single-latent VAE now, hierarchical VAEs later).

A model with an ELBO computes it with `elbo`; a model that provides
`log_weights(x, num_samples, generator) -> (K, B)` gets the IWAE bound, the importance-sampled
log p(x) and bits/dim from here.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from vaekit.batch import Noise


class LatentVariableModel(Protocol):
    def log_weights(self, x: Tensor, num_samples: int, generator: Noise | None = None) -> Tensor:
        """log p(x, z_k) - log q(z_k|x) for K posterior draws: x (B, ...) -> (K, B)."""
        ...


def elbo(log_px_z: Tensor, kl: Tensor, *, beta: float = 1.0) -> Tensor:
    """ELBO, Kingma & Welling 2014 eq. (3): E_q(z|x)[log p(x|z)] - beta KL(q(z|x) || p(z)); -> (B,).

    log_px_z (K, B) holds log p(x|z_k) for K draws z_k ~ q(z|x), averaged over k (K = 1: the SGVB
    estimator B, eq. (7)); kl (B,) is per sample, closed-form or free-bits. beta != 1 gives the
    beta-VAE objective (Higgins et al. 2017 eq. (4)); the default is the ELBO.
    """
    if log_px_z.dim() != 2 or log_px_z.shape[1:] != kl.shape:
        raise ValueError(
            f"elbo expects log_px_z of shape (K, B) and kl of shape (B,), got "
            f"{tuple(log_px_z.shape)} and {tuple(kl.shape)}"
        )
    return log_px_z.mean(0) - beta * kl


def iwae_bound(log_weights: Tensor) -> Tensor:
    """IWAE bound, Burda et al. 2016 eq. (8): log (1/K) sum_k p(x, z_k)/q(z_k|x); (K, B) -> (B,)."""
    num_samples = log_weights.shape[0]
    return torch.logsumexp(log_weights.float(), dim=0) - math.log(num_samples)


def kl_weight(step: int, *, beta: float, warmup_steps: int) -> float:
    """beta-VAE weight (Higgins et al. 2017) with linear KL warm-up (Sonderby et al. 2016): beta*min(1, t/T)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def kl_balance_alphas(groups_per_scale: tuple[int, ...]) -> Tensor:
    """NVAE's 'square' balancing weights: alpha_s = 4^s / (groups at scale s), s = 0 the coarsest
    scale, normalised to a minimum of 1; one per group, coarsest first: (L,)."""
    alphas = torch.cat([torch.full((groups,), 4.0**scale / groups) for scale, groups in enumerate(groups_per_scale)])
    return alphas / alphas.min()


def kl_balance_coefficients(batch_mean_abs_kl: Tensor, alphas: Tensor) -> Tensor:
    """KL balancing coefficients (Vahdat & Kautz 2020, sec. 3.2; NVAE's utils.kl_balancer): (L,) -> (L,).

    gamma_l = (E_batch |KL_l| + 0.01) / alpha_l * sum_l (E_batch |KL_l| + 0.01), normalised to mean 1
    over groups and detached. `batch_mean_abs_kl` is a global-batch term (`Batch.global_mean`).
    """
    per_group = batch_mean_abs_kl.detach() + 0.01  # (L,)
    coefficients = per_group / alphas.to(per_group) * per_group.sum()
    return coefficients / coefficients.mean()


def free_bits_kl(kl_per_dim: Tensor, free_bits: float, *, batch_mean_kl: Tensor | None = None) -> Tensor:
    """Free-bits KL, Kingma et al. 2016 eq. (15): sum_j max(lambda, E_batch KL_j), as per-sample (B,).

    A dimension whose batch-mean KL is below `free_bits` nats contributes the constant lambda (no
    gradient); the others contribute their per-sample KL, so the batch mean equals the paper's
    objective. kl_per_dim: (B, D) -> (B,). `batch_mean_kl` (D,) is E_batch KL_j over the global
    batch (a global-batch term: pass `Batch.global_mean(kl_per_dim)` under DDP); default: this batch.
    """
    if free_bits <= 0.0:
        return kl_per_dim.sum(-1)
    if batch_mean_kl is None:
        batch_mean_kl = kl_per_dim.mean(0)
    active = batch_mean_kl.detach().unsqueeze(0) >= free_bits  # (1, D)
    clamped = torch.where(active, kl_per_dim, torch.full_like(kl_per_dim, free_bits))
    return clamped.sum(-1)


@torch.inference_mode()
def importance_sampled_log_px(
    model: LatentVariableModel,
    x: Tensor,
    *,
    num_samples: int,
    samples_per_chunk: int,
    generator: Noise | None = None,
) -> tuple[Tensor, Tensor]:
    """Importance-sampled log p(x) ~= log (1/K) sum_k w_k (Burda et al. 2016 eq. (8) as an estimator).

    The K draws are taken `samples_per_chunk` at a time and merged with a streaming log-sum-exp,
    so memory is bounded by one chunk. Returns (log_px (B,), elbo (B,)), where the ELBO is the
    mean of the same K log-weights. With `ExampleNoise` each image's draws come from its own
    generator, so its estimate does not depend on the other images of x.
    """
    running_lse = torch.full((x.shape[0],), -math.inf, device=x.device)
    running_sum = torch.zeros(x.shape[0], device=x.device)
    remaining = num_samples
    while remaining > 0:
        k = min(samples_per_chunk, remaining)
        log_w = model.log_weights(x, k, generator).float()  # (k, B)
        running_lse = torch.logaddexp(running_lse, torch.logsumexp(log_w, dim=0))
        running_sum += log_w.sum(0)
        remaining -= k
    return running_lse - math.log(num_samples), running_sum / num_samples


def bits_per_dim(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """Bits per dimension: NLL / (D ln 2)."""
    return nll_nats / (num_dims * math.log(2.0))


def dequantised_bits_per_dim(nll_nats: Tensor | float, num_dims: int, num_levels: int) -> Tensor | float:
    """Bits/dim of a density on [0, 1] data with `num_levels` levels: (NLL + D ln(L - 1)) / (D ln 2).

    P(bin) ~= p(x) * bin width with width 1 / (L - 1) (the data grid k / (L - 1)). For a density
    not trained on dequantised data this is an estimate, not a bound (Theis et al. 2016).
    """
    return (nll_nats + num_dims * math.log(num_levels - 1)) / (num_dims * math.log(2.0))
