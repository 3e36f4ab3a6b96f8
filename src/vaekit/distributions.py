"""Probability math, written once: diagonal Gaussians, Bernoulli, discretised logistic (mixture).

Method names follow torch.distributions (`rsample`, `sample`, `log_prob`, `cdf`, `icdf`, `mean`).
`log_prob` is elementwise (same shape as the value); callers sum over event dimensions with
`sum_except_batch`. `log_prob_bin(lower, upper)` is the log-probability of the bin
[lower, upper), computed from log-cdfs stably in both tails, for entropy coding and bits-back.
`sample` / `rsample` take a `temperature` (NVAE, Vahdat & Kautz 2020): scales multiply by it,
logits divide by it; the default 1.0 is the untempered distribution, bit for bit.
Likelihoods and KL are computed in float32 even under autocast.
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


def _check_temperature(temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"sampling temperature must be > 0, got {temperature}")


def _draw(sampler, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """`sampler` (torch.randn / torch.rand) noise shaped like `like`, from `generator`'s device."""
    device = generator.device if generator is not None else like.device
    return sampler(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _standardise(edge: Tensor, loc: Tensor, inv_scale: Tensor) -> Tensor:
    """(edge - loc) / scale, with infinite edges kept infinite and giving no NaN gradients."""
    infinite = torch.isinf(edge)
    finite_edge = torch.where(infinite, torch.zeros_like(edge), edge)
    return torch.where(infinite, edge, (finite_edge - loc) * inv_scale)


def _log_normal_bin_mass(a: Tensor, b: Tensor) -> Tensor:
    """log[Phi(b) - Phi(a)] for standardised edges a <= b, stable in both tails.

    For a > 0 it uses Phi(b) - Phi(a) = Phi(-a) - Phi(-b), so log_ndtr only sees arguments where
    it is accurate; then log[Phi(hi) - Phi(lo)] = log Phi(hi) + log(1 - Phi(lo) / Phi(hi)), the
    ratio taken as exp of a difference of log-cdfs.
    """
    reflect = a > 0
    hi = torch.where(reflect, -a, b)
    lo = torch.where(reflect, -b, a)
    log_cdf_hi = torch.special.log_ndtr(hi)
    return log_cdf_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_cdf_hi))


def _log_logistic_bin_mass(a: Tensor, b: Tensor) -> Tensor:
    """log[sigmoid(b) - sigmoid(a)] for standardised edges a <= b, stable in both tails.

    sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(a - b)); each factor is exact in logs.
    """
    return F.logsigmoid(b) + F.logsigmoid(-a) + torch.log(-torch.expm1(a - b))


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

    def rsample(self, noise: Tensor, *, temperature: float = 1.0) -> Tensor:
        """Reparameterised draw z = mean + temperature * std * eps, eps ~ N(0, I) given as `noise`.

        `noise` may carry extra leading sample dimensions: (K, ..., D) -> (K, ..., D).
        """
        _check_temperature(temperature)
        return self.mean + self.std * temperature * noise

    def sample(
        self, generator: torch.Generator | None = None, *, temperature: float = 1.0
    ) -> Tensor:
        """A draw (no gradient) of N(mean, temperature^2 * var), shape of `mean`."""
        with torch.no_grad():
            return self.rsample(_draw(torch.randn, self.mean, generator), temperature=temperature)

    def log_prob(self, value: Tensor) -> Tensor:
        """Elementwise log N(value; mean, exp(log_var)), broadcast over leading sample dims."""
        mean, log_var, value = at_least_fp32(self.mean), at_least_fp32(self.log_var), at_least_fp32(value)
        return -0.5 * (LOG_2PI + log_var + (value - mean) ** 2 * torch.exp(-log_var))

    def cdf(self, value: Tensor) -> Tensor:
        """Elementwise Phi((value - mean) / std), the normal cdf."""
        mean, std = at_least_fp32(self.mean), at_least_fp32(self.std)
        return torch.special.ndtr((at_least_fp32(value) - mean) / std)

    def icdf(self, u: Tensor) -> Tensor:
        """Elementwise quantile mean + std * Phi^-1(u), u in [0, 1]."""
        mean, std = at_least_fp32(self.mean), at_least_fp32(self.std)
        return mean + std * torch.special.ndtri(at_least_fp32(u))

    def log_prob_bin(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Elementwise log P(lower <= X < upper) = log[Phi(b) - Phi(a)]; edges may be +-inf."""
        mean, inv_std = at_least_fp32(self.mean), torch.exp(-0.5 * at_least_fp32(self.log_var))
        a = _standardise(at_least_fp32(lower), mean, inv_std)
        b = _standardise(at_least_fp32(upper), mean, inv_std)
        return _log_normal_bin_mass(a, b)


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

    def level_probs(self, known: Tensor) -> Tensor:
        """p(x_c = 0), p(x_c = 1) of channel c = known.shape[1] (channels are independent): (B, H, W, 2)."""
        logits = at_least_fp32(self.logits)[:, known.shape[1]]
        return torch.stack([torch.sigmoid(-logits), torch.sigmoid(logits)], -1)

    def sample(
        self, generator: torch.Generator | None = None, *, temperature: float = 1.0
    ) -> Tensor:
        """A draw of Bernoulli(sigmoid(logits / temperature)) in {0, 1}, shape of `logits`."""
        _check_temperature(temperature)
        probs = torch.sigmoid(at_least_fp32(self.logits) / temperature)
        return torch.bernoulli(probs, generator=generator)

    def cdf(self, value: Tensor) -> Tensor:
        """Elementwise P(X <= value): 0 below 0, 1 - p on [0, 1), 1 from 1 on."""
        logits, value = at_least_fp32(self.logits), at_least_fp32(value)
        p0 = torch.sigmoid(-logits)  # 1 - p, exact for p near 1
        below_one = torch.where(value < 1, p0, torch.ones_like(p0))
        return torch.where(value < 0, torch.zeros_like(p0), below_one)

    def icdf(self, u: Tensor) -> Tensor:
        """Elementwise smallest x in {0, 1} with P(X <= x) >= u: 1 where u > 1 - p, else 0."""
        logits, u = at_least_fp32(self.logits), at_least_fp32(u)
        return (u > torch.sigmoid(-logits)).to(logits.dtype)

    def log_prob_bin(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Elementwise log P(lower <= X < upper): log mass of the points of {0, 1} in the bin."""
        logits = at_least_fp32(self.logits)
        lower, upper = at_least_fp32(lower), at_least_fp32(upper)
        empty = torch.full_like(logits, -math.inf)
        log_p0 = torch.where((lower <= 0) & (upper > 0), F.logsigmoid(-logits), empty)
        log_p1 = torch.where((lower <= 1) & (upper > 1), F.logsigmoid(logits), empty)
        return torch.logaddexp(log_p0, log_p1)


@dataclass(frozen=True)
class DiscretizedLogistic:
    """Logistic(mean, exp(log_scale)) on [-1, 1], integrated over `num_bins` equal bins of [0, 1] data.

    Salimans et al. 2017 (PixelCNN++) eq. (2): the edge bins take the tails to -inf / +inf, so
    the probabilities of the bins sum to one. Data values x in [0, 1] lie on the grid
    k / (num_bins - 1); they are mapped to [-1, 1] internally. `cdf`, `icdf` and `log_prob_bin`
    are those of the underlying continuous logistic, in data units (x = (y + 1) / 2).
    """

    mean: Tensor  # in [-1, 1] units
    log_scale: Tensor
    num_bins: int = 256

    def log_prob(self, value: Tensor) -> Tensor:
        """Elementwise log P(bin containing value), value in [0, 1]."""
        return _discretized_logistic_log_prob(
            at_least_fp32(value) * 2.0 - 1.0, at_least_fp32(self.mean), at_least_fp32(self.log_scale), self.num_bins
        )

    def cdf(self, value: Tensor) -> Tensor:
        """Elementwise sigmoid((2 value - 1 - mean) / scale): the continuous cdf in data units."""
        mean, log_scale = at_least_fp32(self.mean), at_least_fp32(self.log_scale)
        return torch.sigmoid((at_least_fp32(value) * 2.0 - 1.0 - mean) * torch.exp(-log_scale))

    def icdf(self, u: Tensor) -> Tensor:
        """Elementwise (mean + scale * logit(u) + 1) / 2: the continuous quantile, data units."""
        mean, log_scale = at_least_fp32(self.mean), at_least_fp32(self.log_scale)
        return (mean + torch.exp(log_scale) * torch.logit(at_least_fp32(u)) + 1.0) / 2.0

    def log_prob_bin(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Elementwise log P(lower <= x < upper) of the continuous logistic; data units, +-inf.

        With `bin_edges(value)` it is the discretised `log_prob(value)`.
        """
        mean, inv_scale = at_least_fp32(self.mean), torch.exp(-at_least_fp32(self.log_scale))
        a = _standardise(at_least_fp32(lower) * 2.0 - 1.0, mean, inv_scale)
        b = _standardise(at_least_fp32(upper) * 2.0 - 1.0, mean, inv_scale)
        return _log_logistic_bin_mass(a, b)

    def bin_edges(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """[lower, upper) of the data bin of each grid value; the edge bins reach -inf / +inf."""
        return _grid_bin_edges(at_least_fp32(value), self.num_bins)

    def level_probs(self, known: Tensor) -> Tensor:
        """The L bin masses of channel c = known.shape[1] (channels are independent): (B, H, W, L)."""
        channel = known.shape[1]
        mean, log_scale = at_least_fp32(self.mean)[:, channel], at_least_fp32(self.log_scale)[:, channel]
        inner = _inner_edges(self.num_bins, mean)
        return _masses_from_cdf(torch.sigmoid((inner - mean.unsqueeze(-1)) * torch.exp(-log_scale).unsqueeze(-1)))

    def sample(
        self, generator: torch.Generator | None = None, *, temperature: float = 1.0
    ) -> Tensor:
        """A draw on the data grid, shape of `mean`: the bin of y = mean + T * scale * logit(u)."""
        _check_temperature(temperature)
        mean, log_scale = at_least_fp32(self.mean), at_least_fp32(self.log_scale)
        u = _draw(torch.rand, mean, generator)
        y = mean + torch.exp(log_scale) * temperature * torch.logit(u)  # in [-1, 1] units
        return _snap_to_grid((y + 1.0) / 2.0, self.num_bins)

    @property
    def image_mean(self) -> Tensor:
        """The location mapped back to [0, 1] (the logistic's mean, clamped to the data range)."""
        return ((at_least_fp32(self.mean) + 1.0) / 2.0).clamp(0.0, 1.0)


def _grid_bin_edges(value: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """Bin of the grid value k / (L - 1): [(k - 1/2) / (L - 1), (k + 1/2) / (L - 1)), edges open."""
    last = num_bins - 1
    k = torch.round(value * last).clamp(0, last)
    lower = torch.where(k == 0, torch.full_like(k, -math.inf), (k - 0.5) / last)
    upper = torch.where(k == last, torch.full_like(k, math.inf), (k + 0.5) / last)
    return lower, upper


def _inner_edges(num_bins: int, like: Tensor) -> Tensor:
    """The L - 1 edges between the L grid bins, [-1, 1] units: (L - 1,)."""
    return (torch.arange(num_bins - 1, dtype=like.dtype, device=like.device) + 0.5) * (2.0 / (num_bins - 1)) - 1.0


def _masses_from_cdf(cdf: Tensor) -> Tensor:
    """Bin masses (..., L) from a cdf at the L - 1 inner edges (..., L - 1), the edge bins taking the tails
    (PixelCNN++ eq. (2))."""
    return torch.diff(cdf, prepend=torch.zeros_like(cdf[..., :1]), append=torch.ones_like(cdf[..., :1]))


def _snap_to_grid(x: Tensor, num_bins: int) -> Tensor:
    """The grid value k / (L - 1) of the bin containing x (edge bins take the tails)."""
    last = num_bins - 1
    return torch.round(x * last).clamp(0, last) / last


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


def _logistic_mixture_cdf(y: Tensor, weights: Tensor, means: Tensor, inv_scales: Tensor) -> Tensor:
    """sum_m pi_m sigmoid((y - mean_m) / s_m) for y (B, 1, C, H, W) in [-1, 1]: (B, 1, C, H, W)."""
    return (weights * torch.sigmoid((y - means) * inv_scales)).sum(1, keepdim=True)


@dataclass(frozen=True)
class DiscretizedLogisticMixture:
    """Mixture of `M` discretised logistics per pixel (PixelCNN++, Salimans et al. 2017 eq. (2)).

    Shapes: logit_weights (B, M, H, W), shared by the channels of a pixel; means and log_scales
    (B, M, C, H, W). Deviation from PixelCNN++: channels are independent given the mixture
    component (no linear coupling of colour channels). `cdf` and `icdf` are per channel (B, C, H, W)
    and are the marginal of each channel (sum_m pi_m F_m), the joint only when C = 1;
    `log_prob_bin` is the joint mass of a per-pixel box (B, H, W), like `log_prob`.
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

    def cdf(self, value: Tensor) -> Tensor:
        """Per-channel marginal cdf sum_m pi_m sigmoid((2x - 1 - mean_m) / scale_m): (B, C, H, W)."""
        y = at_least_fp32(value).unsqueeze(1) * 2.0 - 1.0  # (B, 1, C, H, W)
        return _logistic_mixture_cdf(y, *self._weights_means_inv_scales()).squeeze(1)

    def icdf(self, u: Tensor, *, num_iterations: int = 64) -> Tensor:
        """Marginal quantile per channel (B, C, H, W), data units, by vectorised bisection.

        No closed form: F(y) = u is bracketed by the components' quantiles min_m / max_m of
        mean_m + scale_m logit(u) (F is their weighted mean, so F(min) <= u <= F(max)) and the
        bracket is halved `num_iterations` times; 64 reach float64 resolution for brackets up to
        2^10 wide.
        """
        u = at_least_fp32(u).unsqueeze(1)  # (B, 1, C, H, W)
        weights, means, inv_scales = self._weights_means_inv_scales()
        component_quantiles = means + torch.logit(u) / inv_scales  # (B, M, C, H, W)
        low = component_quantiles.amin(1, keepdim=True)  # (B, 1, C, H, W)
        high = component_quantiles.amax(1, keepdim=True)
        for _ in range(num_iterations):
            middle = (low + high) / 2.0
            below = _logistic_mixture_cdf(middle, weights, means, inv_scales) < u
            low, high = torch.where(below, middle, low), torch.where(below, high, middle)
        return ((low + high) / 4.0 + 0.5).squeeze(1)  # ((low + high) / 2 + 1) / 2

    def log_prob_bin(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Per-pixel log P(lower <= x < upper) of the box (B, C, H, W) edges, data units: (B, H, W).

        log sum_m pi_m prod_c [F_mc(upper_c) - F_mc(lower_c)]; with `bin_edges(value)` it is
        `log_prob(value)`.
        """
        means, inv_scales = at_least_fp32(self.means), torch.exp(-at_least_fp32(self.log_scales))
        a = _standardise(at_least_fp32(lower).unsqueeze(1) * 2.0 - 1.0, means, inv_scales)
        b = _standardise(at_least_fp32(upper).unsqueeze(1) * 2.0 - 1.0, means, inv_scales)
        per_channel = _log_logistic_bin_mass(a, b)  # (B, M, C, H, W)
        log_weights = torch.log_softmax(at_least_fp32(self.logit_weights), dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_weights + per_channel.sum(2), dim=1)  # (B, H, W)

    def bin_edges(self, value: Tensor) -> tuple[Tensor, Tensor]:
        """[lower, upper) of the data bin of each grid value; the edge bins reach -inf / +inf."""
        return _grid_bin_edges(at_least_fp32(value), self.num_bins)

    def level_probs(self, known: Tensor) -> Tensor:
        """p(x_c = k / (L - 1) | x_<c) at every level k for channel c = known.shape[1] given the pixels' known
        channels x_<c (B, c, H, W): sum_m pi_m(x_<c) P_mc(k), the weights updated by Bayes' rule,
        pi_m(x_<c) proportional to pi_m prod_{c' < c} P_mc'(x_c'). Coding R, then G | R, then B | R, G this way
        codes the joint `log_prob`: (B, H, W, L)."""
        means, log_scales = at_least_fp32(self.means), at_least_fp32(self.log_scales)  # (B, M, C, H, W)
        log_weights = torch.log_softmax(at_least_fp32(self.logit_weights), dim=1)  # (B, M, H, W)
        channel = known.shape[1]
        if channel:
            y = at_least_fp32(known).unsqueeze(1) * 2.0 - 1.0  # (B, 1, c, H, W)
            seen = _discretized_logistic_log_prob(y, means[:, :, :channel], log_scales[:, :, :channel], self.num_bins)
            log_weights = torch.log_softmax(log_weights + seen.sum(2), dim=1)
        inv_scale = torch.exp(-log_scales[:, :, channel]).unsqueeze(-1)  # (B, M, H, W, 1)
        cdf = torch.sigmoid(torch.addcmul(-means[:, :, channel].unsqueeze(-1) * inv_scale,
                                          _inner_edges(self.num_bins, means), inv_scale))  # (B, M, H, W, L - 1)
        return _masses_from_cdf((cdf * log_weights.exp().unsqueeze(-1)).sum(1))  # the mixture's cdf, then bins

    def sample(
        self, generator: torch.Generator | None = None, *, temperature: float = 1.0
    ) -> Tensor:
        """A draw on the data grid (B, C, H, W): component m ~ softmax(logits / T), then the bin of
        y = mean_m + T * scale_m * logit(u) (NVAE's tempered DiscMixLogistic.sample).

        The component is drawn by Gumbel-max, from uniforms (B, M, H, W) drawn before the
        logistic's uniforms (B, C, H, W).
        """
        _check_temperature(temperature)
        logit_weights = at_least_fp32(self.logit_weights)
        means, log_scales = at_least_fp32(self.means), at_least_fp32(self.log_scales)
        gumbel = -torch.log(-torch.log(_draw(torch.rand, logit_weights, generator)))  # (B, M, H, W)
        component = (logit_weights / temperature + gumbel).argmax(1, keepdim=True)  # (B, 1, H, W)
        index = component.unsqueeze(2).expand(-1, -1, means.shape[2], -1, -1)  # (B, 1, C, H, W)
        mean = means.gather(1, index).squeeze(1)  # (B, C, H, W)
        scale = torch.exp(log_scales.gather(1, index).squeeze(1))
        y = mean + scale * temperature * torch.logit(_draw(torch.rand, mean, generator))
        return _snap_to_grid((y + 1.0) / 2.0, self.num_bins)

    def _weights_means_inv_scales(self) -> tuple[Tensor, Tensor, Tensor]:
        """pi (B, M, 1, H, W), means and 1 / scales (B, M, C, H, W), in fp32."""
        weights = torch.softmax(at_least_fp32(self.logit_weights), dim=1).unsqueeze(2)
        return weights, at_least_fp32(self.means), torch.exp(-at_least_fp32(self.log_scales))

    @property
    def image_mean(self) -> Tensor:
        """E[x] approximated by the weighted locations, mapped to [0, 1]: (B, C, H, W)."""
        weights = torch.softmax(at_least_fp32(self.logit_weights), dim=1).unsqueeze(2)  # (B, M, 1, H, W)
        location = (weights * at_least_fp32(self.means)).sum(1)
        return ((location + 1.0) / 2.0).clamp(0.0, 1.0)
