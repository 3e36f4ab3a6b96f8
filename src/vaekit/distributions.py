"""Probability math, written once: diagonal Gaussians, Bernoulli, discretised logistic (mixture).

Method names follow torch.distributions (`rsample`, `log_prob`, `mean`). `log_prob` is
elementwise (same shape as the value); callers sum over event dimensions with
`sum_except_batch`. Likelihoods and KL are computed in float32 even under autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def at_least_fp32(x: Tensor) -> Tensor:
    """Upcast half-precision tensors (autocast outputs) to float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def sum_except_batch(x: Tensor, num_batch_dims: int = 1) -> Tensor:
    """Sum over every dimension after the first `num_batch_dims`: (B, ...) -> (B,)."""
    return x.flatten(start_dim=num_batch_dims).sum(-1)


@dataclass(frozen=True)
class DiagonalGaussian:
    """N(mean, diag(exp(log_var))); `mean` and `log_var` share one shape (..., D)."""

    mean: Tensor
    log_var: Tensor

    @staticmethod
    def standard_like(x: Tensor) -> DiagonalGaussian:
        """The prior N(0, I) with the shape, dtype and device of `x`."""
        return DiagonalGaussian(torch.zeros_like(x), torch.zeros_like(x))

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def rsample(self, noise: Tensor) -> Tensor:
        """Reparameterised draw z = mean + std * eps, eps ~ N(0, I) given as `noise`.

        `noise` may carry extra leading sample dimensions: (K, ..., D) -> (K, ..., D).
        """
        return self.mean + self.std * noise

    def log_prob(self, value: Tensor) -> Tensor:
        """Elementwise log N(value; mean, exp(log_var)), broadcast over leading sample dims."""
        mean, log_var, value = at_least_fp32(self.mean), at_least_fp32(self.log_var), at_least_fp32(value)
        return -0.5 * (LOG_2PI + log_var + (value - mean) ** 2 * torch.exp(-log_var))


def kl_divergence(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    """Elementwise KL(q || p) of diagonal Gaussians (closed form), shape of q.mean.

    KL = 0.5 * (log_var_p - log_var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1).
    """
    log_var_q, log_var_p = at_least_fp32(q.log_var), at_least_fp32(p.log_var)
    mean_diff = at_least_fp32(q.mean) - at_least_fp32(p.mean)
    return 0.5 * (
        log_var_p - log_var_q + (torch.exp(log_var_q) + mean_diff**2) * torch.exp(-log_var_p) - 1.0
    )


@dataclass(frozen=True)
class Bernoulli:
    """Bernoulli(sigmoid(logits)) per pixel; values in {0, 1}."""

    logits: Tensor

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(at_least_fp32(self.logits))

    def log_prob(self, value: Tensor) -> Tensor:
        """Elementwise x log p + (1 - x) log(1 - p), from logits (stable)."""
        return -F.binary_cross_entropy_with_logits(
            at_least_fp32(self.logits), at_least_fp32(value), reduction="none"
        )

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean, generator=generator)


@dataclass(frozen=True)
class DiscretizedLogistic:
    """Logistic(mean, exp(log_scale)) on [-1, 1], integrated over `num_bins` equal bins of [0, 1] data.

    Salimans et al. 2017 (PixelCNN++) eq. (2): the edge bins take the tails to -inf / +inf, so
    the probabilities of the bins sum to one. Data values x in [0, 1] lie on the grid
    k / (num_bins - 1); they are mapped to [-1, 1] internally.
    """

    mean: Tensor  # in [-1, 1] units
    log_scale: Tensor
    num_bins: int = 256

    def log_prob(self, value: Tensor) -> Tensor:
        """Elementwise log P(bin containing value), value in [0, 1]."""
        return _discretized_logistic_log_prob(
            at_least_fp32(value) * 2.0 - 1.0, at_least_fp32(self.mean), at_least_fp32(self.log_scale), self.num_bins
        )

    @property
    def image_mean(self) -> Tensor:
        """The location mapped back to [0, 1] (the logistic's mean, clamped to the data range)."""
        return ((at_least_fp32(self.mean) + 1.0) / 2.0).clamp(0.0, 1.0)


def _discretized_logistic_log_prob(
    x: Tensor, mean: Tensor, log_scale: Tensor, num_bins: int
) -> Tensor:
    """log[sigmoid((x + h - mean)/s) - sigmoid((x - h - mean)/s)] with h the bin half-width in [-1, 1].

    Uses sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), stable for all a > b.
    """
    half_width = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = inv_scale * (centred + half_width)  # a
    lower = inv_scale * (centred - half_width)  # b
    log_cdf_upper = F.logsigmoid(upper)  # leftmost bin: P = sigmoid(a)
    log_one_minus_cdf_lower = F.logsigmoid(-lower)  # rightmost bin: P = 1 - sigmoid(b)
    log_mid = log_cdf_upper + log_one_minus_cdf_lower + torch.log(-torch.expm1(lower - upper))
    edge = 1.0 - 1e-3 * half_width
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_one_minus_cdf_lower, log_mid))


@dataclass(frozen=True)
class DiscretizedLogisticMixture:
    """Mixture of `M` discretised logistics per pixel (PixelCNN++, Salimans et al. 2017 eq. (2)).

    Shapes: logit_weights (B, M, H, W), shared by the channels of a pixel; means and log_scales
    (B, M, C, H, W). Deviation from PixelCNN++: channels are independent given the mixture
    component (no linear coupling of colour channels).
    """

    logit_weights: Tensor
    means: Tensor
    log_scales: Tensor
    num_bins: int = 256

    def log_prob(self, value: Tensor) -> Tensor:
        """Per-pixel log-likelihood (B, H, W) of value (B, C, H, W) in [0, 1].

        The channels of a pixel share one mixture component, so the log-probability is defined
        per pixel, not per channel.
        """
        x = at_least_fp32(value).unsqueeze(1) * 2.0 - 1.0  # (B, 1, C, H, W)
        per_channel = _discretized_logistic_log_prob(
            x, at_least_fp32(self.means), at_least_fp32(self.log_scales), self.num_bins
        )  # (B, M, C, H, W)
        log_weights = torch.log_softmax(at_least_fp32(self.logit_weights), dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_weights + per_channel.sum(2), dim=1)  # (B, H, W)

    @property
    def image_mean(self) -> Tensor:
        """E[x] approximated by the weighted locations, mapped to [0, 1]: (B, C, H, W)."""
        weights = torch.softmax(at_least_fp32(self.logit_weights), dim=1).unsqueeze(2)  # (B, M, 1, H, W)
        location = (weights * at_least_fp32(self.means)).sum(1)
        return ((location + 1.0) / 2.0).clamp(0.0, 1.0)
