"""Hierarchical VAE in the NVAE style (Vahdat & Kautz, NeurIPS 2020, arXiv 2007.03898).

Latent groups z_1..z_L (coarsest first), each a (latent_channels, r, r) map at its scale, optionally
below a dense first group z_1 of `top_latent_dim` numbers (a vector, like the single-level VAE's z, decoded
by a dense layer into the coarsest map; the spatial groups then refine it):
- prior p(z) = prod_l p(z_l | z_<l): a top-down network whose state h_l depends on z_<l only;
  p(z_1) = N(0, I), p(z_l | z_<l) = N(mu_p(h_l), sigma_p(h_l)^2) for l > 1;
- posterior q(z | x) = prod_l q(z_l | z_<l, x), sharing the top-down path (bidirectional
  inference) and fed by a bottom-up encoder tower: residual normal (eq. 2) for l > 1,
  q(z_l) = N(mu_p + dmu, (sigma_p * dsigma)^2), and q(z_1) = N(dmu, dsigma^2);
- p(x | z) one of vaekit.likelihoods, factorised over pixels given z.

Objective: -ELBO = -log p(x|z) + beta * sum_l KL(q(z_l|.) || p(z_l|z_<l)), the KL per group in
closed form (the KL of two diagonal Gaussians equals eq. 2 of the paper for the residual normal),
with KL warm-up, NVAE's KL balancing during warm-up (a global-batch term) and spectral
regularisation. Deviations from the paper, by design for a laptop CPU and any process count: no
batch normalisation in the cells (as VDVAE); means and log-scales are soft-clamped,
c * tanh(x / c) with c = `soft_clamp` (NVAE uses 5); no normalising flows; one latent group
resolution per scale with the image-to-latent `downsamples` done by strided convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vaekit.batch import Batch, Noise, standard_normal
from vaekit.config import ImageShape, ModelConfig, PositiveFloat, Sizes
from vaekit.distributions import DiagonalGaussian, at_least_fp32, kl_divergence, sum_except_batch
from vaekit.errors import ConfigError
from vaekit.likelihoods import ImageDistribution, ImageLikelihood, LikelihoodName
from vaekit.models.base import Capability, DrawFn, GenerativeModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.image_nets import mlp
from vaekit.nn.residual import residual_stack
from vaekit.nn.spectral import SpectralPenalty
from vaekit.objectives import elbo, kl_balance_alphas, kl_balance_coefficients, kl_weight

Resampling = Literal["nearest", "strided"]


class HierarchicalVAEConfig(ModelConfig):
    """A hierarchical VAE: latent groups over spatial scales, top-down inference."""

    name: Literal["hierarchical-vae"] = "hierarchical-vae"
    image_shape: ImageShape | None = None  # (C, H, W); None = taken from the data
    channels: int = Field(32, ge=1)  # width of the bottom-up and top-down towers
    downsamples: int = Field(1, ge=0)  # stride-2 steps from the image to the finest latent scale
    groups_per_scale: Sizes = Field((2, 2), min_length=1)  # groups per scale, coarsest first; x2 finer each
    latent_channels: int = Field(4, ge=1)  # channels of each group's z_l map
    cells_per_group: int = Field(1, ge=0)  # residual cells per group in each tower
    cells_per_resolution: int = Field(1, ge=0)  # residual cells at each resolution above the latent scales, per tower
    squeeze_excitation: bool = True  # SE gates in the residual cells
    likelihood: LikelihoodName = "bernoulli"  # p(x|z), factorised over pixels
    num_bins: int = Field(256, ge=2)  # logistic likelihoods: intensity levels of the data
    num_mixtures: int = Field(5, ge=1)  # logistic_mixture: components per pixel
    gaussian_std: PositiveFloat | None = 0.1  # gaussian: fixed std; null = learned (bounded below)
    beta: float = Field(1.0, ge=0)  # weight of the KL after warm-up
    kl_warmup_steps: int = Field(0, ge=0)  # KL weight ramps 0 -> beta (NVAE: 30% of training)
    kl_balancing: bool = True  # NVAE's KL balancing ('square' alphas), applied during warm-up only
    spectral_regularisation: float = Field(0.0, ge=0)  # lambda of sum sigma_max(W) (NVAE: 0.1 / batch-size terms)
    soft_clamp: float = Field(5.0, gt=0)  # c of c * tanh(x / c) on means and log-scales (NVAE: 5)
    resampling: Resampling = "nearest"  # between the image and the finest latent scale: 'nearest' or 'strided'
    top_latent_dim: int = Field(0, ge=0)  # a dense first group of this many numbers above the spatial ones; 0 = none
    top_hidden: int = Field(256, ge=1)  # width of the dense layer between it and the coarsest map

    def likelihood_spec(self) -> ImageLikelihood:
        return ImageLikelihood(name=self.likelihood, num_bins=self.num_bins, num_mixtures=self.num_mixtures,
                               gaussian_std=self.gaussian_std)


@dataclass(frozen=True)
class GroupOutput:
    """One latent group of a top-down pass: its draw, prior and (in inference) posterior."""

    z: Tensor  # (B, latent_channels, r, r)
    prior: DiagonalGaussian  # p(z_l | z_<l)
    posterior: DiagonalGaussian | None  # q(z_l | z_<l, x); None when generating


class DenseTop(nn.Module):
    """A dense first group: coarsest encoder map (B, ch, r, r) -> q(z_1 | x) over (B, D); z_1 -> the map h_1."""

    def __init__(self, map_shape: tuple[int, int, int], latent_dim: int, hidden: int) -> None:
        super().__init__()
        size = map_shape[0] * map_shape[1] * map_shape[2]
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.SiLU(), nn.Flatten(), mlp([size, hidden, 2 * latent_dim], "silu"))
        self.decoder = nn.Sequential(mlp([latent_dim, hidden, size], "silu"), nn.Unflatten(1, map_shape))
        last = self.encoder[-1][-1]  # q(z_1 | x) starts at the prior N(0, I), as the spatial groups' heads
        nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)

    def prior(self, batch_size: int) -> DiagonalGaussian:
        """p(z_1) = N(0, I): (B, D), in the weights' dtype and device."""
        weight = next(self.parameters())
        return DiagonalGaussian.standard_like(weight.new_zeros(batch_size, self.latent_dim))

    def posterior(self, features: Tensor, limit: float) -> DiagonalGaussian:
        """q(z_1 | x) = N(mean, std^2), both soft-clamped: (B, ch, r, r) -> (B, D)."""
        mean, log_std = at_least_fp32(self.encoder(features)).chunk(2, dim=1)
        return DiagonalGaussian(soft_clamp(mean, limit), 2.0 * soft_clamp(log_std, limit))


def image_to_latent_scale(in_channels: int, channels: int, downsamples: int, cells: int, se: bool,
                          resampling: Resampling) -> tuple[nn.Module, nn.ModuleList]:
    """The bottom-up layers from the image (B, C, H, W) to the finest latent scale (B, ch, H / 2^d, W / 2^d):
    a stem, then one module per halving.

    'nearest' (NVAE): a 3x3 stem at the image's resolution, then cells and a 3x3 stride-2 convolution per halving.
    'strided' (as the VAE's conv nets): the stem is the first 4x4 stride-2 convolution, from the image itself, so
    no map of `channels` exists at the image's resolution; cells at the resolutions strictly between."""
    if resampling == "nearest":
        return nn.Conv2d(in_channels, channels, 3, padding=1), nn.ModuleList(
            nn.Sequential(residual_stack(channels, cells, squeeze_excitation=se),
                          nn.Conv2d(channels, channels, 3, stride=2, padding=1)) for _ in range(downsamples))
    if downsamples == 0:
        raise ConfigError("model.resampling=strided needs model.downsamples >= 1 (it has nothing to stride over)")
    return nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.ModuleList(
        nn.Sequential(nn.SiLU(), residual_stack(channels, cells, squeeze_excitation=se),
                      nn.Conv2d(channels, channels, 4, stride=2, padding=1)) for _ in range(downsamples - 1))


def latent_scale_to_image(channels: int, num_params: int, downsamples: int, cells: int, se: bool,
                          resampling: Resampling) -> tuple[nn.ModuleList, nn.Module]:
    """The top-down layers back to the image: one module per doubling, then the output of p(x | z)'s parameter maps
    (B, num_params, H, W).

    'nearest' (NVAE): nearest-neighbour x2, a 3x3 convolution and cells per doubling, a 3x3 output convolution.
    'strided': 4x4 stride-2 transposed convolutions, the last one (the output) emitting the parameters."""
    if resampling == "nearest":
        return nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(channels, channels, 3, padding=1),
                          residual_stack(channels, cells, squeeze_excitation=se)) for _ in range(downsamples)
        ), nn.Sequential(nn.SiLU(), nn.Conv2d(channels, num_params, 3, padding=1))
    return nn.ModuleList(
        nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
                      residual_stack(channels, cells, squeeze_excitation=se)) for _ in range(downsamples - 1)
    ), nn.Sequential(nn.SiLU(), nn.ConvTranspose2d(channels, num_params, 4, stride=2, padding=1))


def soft_clamp(x: Tensor, limit: float) -> Tensor:
    """limit * tanh(x / limit): the identity near 0, bounded by +-limit (NVAE's soft clamp)."""
    return limit * torch.tanh(x / limit)


def group_kls(groups: list[GroupOutput]) -> Tensor:
    """KL(q(z_l | z_<l, x) || p(z_l | z_<l)) of each group in closed form (eq. 2 for the residual normal): (B, L)."""
    return torch.stack([sum_except_batch(kl_divergence(g.posterior, g.prior)) for g in groups], 1)


@register_model("hierarchical-vae", HierarchicalVAEConfig)
class HierarchicalVAE(GenerativeModel):
    """x (B, C, H, W) -> bottom-up features -> top-down groups z_1..z_L -> p(x | z)."""

    config: HierarchicalVAEConfig
    capabilities = frozenset({Capability.SAMPLE, Capability.LIKELIHOOD, Capability.LATENT_GROUPS})

    def __init__(self, config: HierarchicalVAEConfig) -> None:
        super().__init__(config)
        if config.image_shape is None:
            raise ConfigError("model.image_shape is not set (vaekit.train fills it from the data)")
        in_channels, height, width = config.image_shape
        scales = len(config.groups_per_scale)
        factor = 2 ** (config.downsamples + scales - 1)
        if height % factor or width % factor:
            raise ConfigError(f"hierarchical-vae with downsamples={config.downsamples} and {scales} scales needs "
                              f"image height and width divisible by {factor}, got {height}x{width}")
        self.likelihood = config.likelihood_spec()
        ch, cz, cells, se = config.channels, config.latent_channels, config.cells_per_group, config.squeeze_excitation
        cells_above = config.cells_per_resolution
        self.group_scales = [s for s, groups in enumerate(config.groups_per_scale) for _ in range(groups)]  # spatial
        dense = config.top_latent_dim > 0
        balanced_groups = (config.groups_per_scale[0] + dense, *config.groups_per_scale[1:])  # dense: coarsest scale
        self.register_buffer("kl_alphas", kl_balance_alphas(balanced_groups), persistent=False)
        self.top_shape = (ch, height // factor, width // factor)
        self.dense_top = DenseTop(self.top_shape, config.top_latent_dim, config.top_hidden) if dense else None

        # bottom-up: stem, downsampling to the finest latent scale, then one tower stage per group (fine -> coarse)
        self.stem, self.encoder_down = image_to_latent_scale(in_channels, ch, config.downsamples, cells_above, se,
                                                             config.resampling)
        self.encoder_groups = nn.ModuleList(residual_stack(ch, cells, squeeze_excitation=se) for _ in self.group_scales)
        self.encoder_scale_down = nn.ModuleList(nn.Conv2d(ch, ch, 3, stride=2, padding=1) for _ in range(scales - 1))

        # top-down: a learned start (or the dense group's map), per group prior / posterior heads, z -> state,
        # cells, upsampling between scales
        self.top = None if dense else nn.Parameter(torch.zeros(1, *self.top_shape))
        self.decoder_groups = nn.ModuleList(residual_stack(ch, cells, squeeze_excitation=se) for _ in self.group_scales)
        self.first_learned_prior = 0 if dense else 1  # the first group's prior is N(0, I)
        self.prior_heads = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(ch, 2 * cz, 3, padding=1))
                                         for _ in self.group_scales[self.first_learned_prior:])
        self.posterior_heads = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(2 * ch, 2 * cz, 3, padding=1))
                                             for _ in self.group_scales)
        self.latent_in = nn.ModuleList(nn.Conv2d(cz, ch, 1) for _ in self.group_scales)
        self.decoder_scale_up = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(scales - 1))
        self.decoder_up, self.output = latent_scale_to_image(ch, self.likelihood.num_params(in_channels),
                                                             config.downsamples, cells_above, se, config.resampling)
        for head in [*self.prior_heads, *self.posterior_heads]:  # start at the prior N(0, I) and q = p
            nn.init.zeros_(head[1].weight), nn.init.zeros_(head[1].bias)
        self.spectral = SpectralPenalty(self.spectral_layers()) if config.spectral_regularisation > 0 else None

    def spectral_layers(self) -> list[nn.Conv2d | nn.ConvTranspose2d | nn.Linear]:
        """The layers the spectral term covers: every convolution (transposed ones too) and the dense group's
        linear layers; not the squeeze-excitation gates (NVAE's penalty covers its convolutions only)."""
        dense = [] if self.dense_top is None else [m for m in self.dense_top.modules() if isinstance(m, nn.Linear)]
        return [m for m in self.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)] + dense

    # -- the two towers -------------------------------------------------------------------------

    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """Encoder features for each group, top-down order (coarsest first): L tensors (B, ch, r_l, r_l)."""
        h = self.stem(2.0 * x - 1.0)  # (B, ch, H, W), pixels centred
        for down in self.encoder_down:
            h = down(h)
        features: list[Tensor] = [h] * len(self.group_scales)
        for index in reversed(range(len(self.group_scales))):  # fine -> coarse
            h = self.encoder_groups[index](h)
            features[index] = h
            if index > 0 and self.group_scales[index - 1] != self.group_scales[index]:
                h = self.encoder_scale_down[self.group_scales[index - 1]](h)
        return features

    def top_down(self, batch_size: int, draw: DrawFn, features: list[Tensor] | None = None
                 ) -> tuple[ImageDistribution, list[GroupOutput]]:
        """The generator's pass: groups in order, each z_l = draw(l, prior, posterior), then p(x | z).

        With `features` (inference) each group also gets its posterior; without, it is None.
        """
        limit = self.config.soft_clamp
        groups: list[GroupOutput] = []
        if self.dense_top is None:
            h = self.top.expand(batch_size, *self.top_shape)  # (B, ch, r_1, r_1)
        else:  # z_1 (B, D) ~ q(z_1 | x) or N(0, I), decoded into the coarsest map
            prior = self.dense_top.prior(batch_size)
            posterior = None if features is None else self.dense_top.posterior(features[0], limit)
            z = draw(0, prior, posterior)
            groups.append(GroupOutput(z=z, prior=prior, posterior=posterior))
            h = self.dense_top.decoder(z)  # (B, ch, r, r)
        for index, scale in enumerate(self.group_scales):  # the spatial groups
            if index > 0 and scale != self.group_scales[index - 1]:
                h = self.decoder_scale_up[scale - 1](F.interpolate(h, scale_factor=2.0))  # next scale, 2x finer
            h = self.decoder_groups[index](h)
            if index < self.first_learned_prior:
                prior = DiagonalGaussian.standard_like(h.new_zeros(batch_size, self.config.latent_channels, *h.shape[2:]))
            else:
                mean, log_std = at_least_fp32(self.prior_heads[index - self.first_learned_prior](h)).chunk(2, dim=1)
                prior = DiagonalGaussian(soft_clamp(mean, limit), 2.0 * soft_clamp(log_std, limit))
            posterior = None
            if features is not None:
                delta_mean, delta_log_std = at_least_fp32(self.posterior_heads[index](torch.cat([h, features[index]], 1))).chunk(2, 1)
                posterior = DiagonalGaussian(prior.mean + soft_clamp(delta_mean, limit),  # residual normal, eq. 2
                                             prior.log_var + 2.0 * soft_clamp(delta_log_std, limit))
            z = draw(len(groups), prior, posterior)
            groups.append(GroupOutput(z=z, prior=prior, posterior=posterior))
            h = h + self.latent_in[index](z.to(h.dtype))
        for up in self.decoder_up:
            h = up(h)
        return self.likelihood.distribution(self.output(h), channels=self.config.image_shape[0]), groups

    def latent_pass(self, batch_size: int, draw: DrawFn, x: Tensor | None = None) -> ImageDistribution:
        """`top_down` with the bottom-up features of x when given: the groups' priors and posteriors, then p(x | z)."""
        return self.top_down(batch_size, draw, None if x is None else self.bottom_up(x))[0]

    def latent_shapes(self) -> list[tuple[int, ...]]:
        """Each group's shape, coarsest first: (top_latent_dim,) for a dense first group, then (latent_channels, r_l, r_l)."""
        _, top_h, top_w = self.top_shape
        dense = [(self.config.top_latent_dim,)] if self.dense_top is not None else []
        return dense + [(self.config.latent_channels, top_h * 2**s, top_w * 2**s) for s in self.group_scales]

    # -- training --------------------------------------------------------------------------------

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        """-ELBO with warm-up, KL balancing (during warm-up) and spectral regularisation, batch mean.

        Terms (B,): reconstruction = -log p(x|z), kl (sum over groups), elbo; and kl_group_l per group.
        """
        x = batch.x
        noise = [batch.randn(x.shape[0], *shape) for shape in self.latent_shapes()]  # one draw per group

        def from_posterior(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            return posterior.rsample(noise[index])

        likelihood, groups = self.top_down(x.shape[0], from_posterior, self.bottom_up(x))
        log_px_z = self.likelihood.log_likelihood(likelihood, x)  # (B,)
        kl_per_group = group_kls(groups)  # (B, L)
        weight = kl_weight(step, beta=self.config.beta, warmup_steps=self.config.kl_warmup_steps)
        penalty = kl_per_group
        if self.config.kl_balancing and weight < self.config.beta:  # NVAE balances during warm-up only
            batch_mean_abs_kl = batch.global_mean(kl_per_group.detach().abs())  # (L,) a global-batch term
            penalty = kl_per_group * kl_balance_coefficients(batch_mean_abs_kl, self.kl_alphas)
        total = -elbo(log_px_z.unsqueeze(0), penalty.sum(1), beta=weight).mean()
        if self.spectral is not None:
            total = total + self.config.spectral_regularisation * self.spectral()
        kl = kl_per_group.sum(1)
        terms = {"reconstruction": -log_px_z, "kl": kl, "elbo": elbo(log_px_z.unsqueeze(0), kl)}
        terms |= {f"kl_group_{index}": kl_per_group[:, index] for index in range(kl_per_group.shape[1])}
        return Losses(total=total, terms=terms)

    def update_buffers(self, batch: Batch, step: int) -> None:
        """One power iteration of the spectral penalty's singular vectors (after the weights moved)."""
        if self.spectral is not None:
            self.spectral.power_iteration()

    # -- likelihood, samples, reconstructions ------------------------------------------------------

    def log_weights(self, x: Tensor, num_samples: int, generator: Noise | None = None) -> Tensor:
        """log p(x|z) + sum_l [log p(z_l|z_<l) - log q(z_l|z_<l, x)] for K posterior draws: (K, B).

        The noise of each group (K, B, ...) comes from one generator or, keyed per image, from each image's own."""
        batch = x.shape[0]
        repeated = x.unsqueeze(0).expand(num_samples, *x.shape).reshape(num_samples * batch, *x.shape[1:])
        noise = [standard_normal((num_samples, batch, *shape), generator, batch_dim=1, device=x.device).flatten(0, 1)
                 for shape in self.latent_shapes()]  # (K*B, ...) each, sample-major as `repeated`
        likelihood, groups = self.top_down(num_samples * batch, lambda i, p, q: q.rsample(noise[i]),
                                           self.bottom_up(repeated))
        log_weight = self.likelihood.log_likelihood(likelihood, repeated)  # (K*B,)
        for g in groups:
            log_weight = log_weight + sum_except_batch(g.prior.log_prob(g.z) - g.posterior.log_prob(g.z))
        return log_weight.view(num_samples, batch)

    def kl_per_group(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """KL(q(z_l | z_<l, x) || p(z_l | z_<l)) per group at one posterior draw: (B, L)."""
        device = generator.device if generator is not None else x.device
        _, groups = self.top_down(
            x.shape[0], lambda i, p, q: q.rsample(torch.randn(q.mean.shape, generator=generator, device=device)
                                                  .to(x.device)), self.bottom_up(x))
        return group_kls(groups)

    def extra_scores(self, x: Tensor) -> dict[str, float | list[float]]:
        """KL per group (nats, test mean) and active groups (mean KL above 0.01 nats)."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        kl = torch.cat([self.kl_per_group(chunk, generator) for chunk in x.split(100)]).mean(0)  # (L,)
        return {"kl_per_group": kl.tolist(), "active_groups": int((kl > 0.01).sum())}

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               temperature: float | list[float] = 1.0) -> Tensor:
        """Decoder means at z ~ prod_l p(z_l | z_<l), each group drawn at its temperature: (N, C, H, W)."""
        num_groups = len(self.latent_shapes())
        temperatures = temperature if isinstance(temperature, list) else [temperature] * num_groups
        if len(temperatures) != num_groups:
            raise ConfigError(f"{len(temperatures)} temperatures for {num_groups} latent groups")
        device = generator.device if generator is not None else self.device

        def from_prior(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            noise = torch.randn(prior.mean.shape, generator=generator, device=device).to(prior.mean.device)
            return prior.rsample(noise, temperature=temperatures[index])

        likelihood, _ = self.top_down(num_samples, from_prior)
        return self.likelihood.mean_image(likelihood)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean with every group at its posterior mean: (B, C, H, W) -> (B, C, H, W)."""
        likelihood, _ = self.top_down(x.shape[0], lambda i, p, q: q.mean, self.bottom_up(x))
        return self.likelihood.mean_image(likelihood)

