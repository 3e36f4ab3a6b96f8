"""Variational auto-encoder (Kingma & Welling 2014; Rezende et al. 2014) with beta, warm-up,
free bits (Kingma et al. 2016) and the IWAE bound (Burda et al. 2016).

q(z|x) = N(mean(x), diag(exp(log_var(x)))), p(z) = N(0, I), p(x|z) one of vaekit.likelihoods.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from vaekit.batch import Batch, Noise, standard_normal
from vaekit.config import CodeSpec, ImageShape, ModelConfig, PositiveFloat, Sizes
from vaekit.distributions import DiagonalGaussian, at_least_fp32, kl_divergence, sum_except_batch
from vaekit.likelihoods import ImageDistribution, ImageLikelihood, LikelihoodName
from vaekit.models.base import Capability, DrawFn, GenerativeModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.image_nets import (
    Activation,
    ImageNetConfig,
    build_image_decoder,
    build_image_encoder,
)
from vaekit.objectives import elbo, free_bits_kl, iwae_bound, kl_weight


class VAEConfig(ModelConfig):
    """A Gaussian-latent VAE on images."""

    name: Literal["vae"] = "vae"
    image_shape: ImageShape | None = None  # (C, H, W); None = taken from the data
    latent_dim: int = Field(16, ge=1)  # dimension of z
    architecture: Literal["mlp", "conv"] = "mlp"  # encoder/decoder family
    hidden_dims: Sizes = (512, 256)  # mlp widths / conv: dense widths after the convs
    conv_channels: Sizes = (32, 64)  # conv: channels of the stride-2 layers
    activation: Activation = "silu"
    likelihood: LikelihoodName = "bernoulli"  # p(x|z)
    num_bins: int = Field(256, ge=2)  # logistic likelihoods: intensity levels of the data
    num_mixtures: int = Field(5, ge=1)  # logistic_mixture: components per pixel
    gaussian_std: PositiveFloat | None = 0.1  # gaussian: fixed std; null = learned (bounded below)
    gaussian_min_std: float = Field(0.02, gt=0)  # gaussian, learned: lower bound of the std
    beta: float = Field(1.0, ge=0)  # beta-VAE weight of the KL (Higgins et al. 2017)
    kl_warmup_steps: int = Field(0, ge=0)  # KL weight ramps 0 -> beta linearly over these steps
    free_bits: float = Field(0.0, ge=0)  # nats per latent dimension (Kingma et al. 2016); 0 = off
    iwae_samples: int = Field(1, ge=1)  # K > 1 trains the IWAE bound instead of the ELBO

    def likelihood_spec(self) -> ImageLikelihood:
        return ImageLikelihood(
            name=self.likelihood,
            num_bins=self.num_bins,
            num_mixtures=self.num_mixtures,
            gaussian_std=self.gaussian_std,
            gaussian_min_std=self.gaussian_min_std,
        )


@register_model("vae", VAEConfig)
class VAE(GenerativeModel):
    """x (B, C, H, W) in [0, 1] -> q(z|x) over z (B, latent_dim) -> p(x|z)."""

    config: VAEConfig
    capabilities = frozenset({Capability.SAMPLE, Capability.GAUSSIAN_POSTERIOR, Capability.LIKELIHOOD,
                              Capability.FLAT_CODES, Capability.LATENT_GROUPS})

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        nets = ImageNetConfig.of(config)
        self.image_shape = nets.image_shape
        self.likelihood = config.likelihood_spec()
        self.encoder = build_image_encoder(nets, out_features=2 * config.latent_dim)
        self.decoder = build_image_decoder(
            nets, in_features=config.latent_dim, out_channels=self.likelihood.num_params(config.image_shape[0])
        )

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x): x (B, C, H, W) -> Gaussian with mean, log_var (B, latent_dim), in fp32."""
        mean, log_var = at_least_fp32(self.encoder(x)).chunk(2, dim=-1)
        return DiagonalGaussian(mean=mean, log_var=log_var)

    def decode(self, z: Tensor) -> ImageDistribution:
        """p(x|z): z (N, latent_dim) -> a distribution over images (N, C, H, W)."""
        return self.likelihood.distribution(self.decoder(z), channels=self.image_shape[0])

    def prior(self, like: Tensor) -> DiagonalGaussian:
        """p(z) = N(0, I) shaped like `like`."""
        return DiagonalGaussian.standard_like(like)

    def latent_pass(self, batch_size: int, draw: DrawFn, x: Tensor | None = None) -> ImageDistribution:
        """One latent group: z = draw(0, p(z) = N(0, I), q(z|x) or None), then p(x|z)."""
        device = x.device if x is not None else next(self.decoder.parameters()).device
        prior = self.prior(torch.zeros(batch_size, self.config.latent_dim, device=device))
        return self.decode(draw(0, prior, None if x is None else self.encode(x)))

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        """Negative (beta-)ELBO, or the negative IWAE bound when iwae_samples > 1, averaged over the batch.

        Terms, per sample (B,), the same in both modes: reconstruction = -E_q log p(x|z), kl (closed
        form), elbo, and iwae_bound (with K = 1 it is the single-sample ELBO).
        """
        x = batch.x
        posterior = self.encode(x)
        noise = batch.randn(self.config.iwae_samples, x.shape[0], self.config.latent_dim, batch_dim=1)
        log_px_z, log_prior_ratio = self._log_weight_parts(x, posterior, noise)  # (K, B) each
        kl_per_dim = kl_divergence(posterior, self.prior(posterior.mean))  # (B, D)
        kl = kl_per_dim.sum(-1)  # (B,)
        bound = iwae_bound(log_px_z + log_prior_ratio)  # (B,)
        if self.config.iwae_samples > 1:
            total = -bound.mean()
        else:
            weight = kl_weight(step, beta=self.config.beta, warmup_steps=self.config.kl_warmup_steps)
            batch_mean_kl = batch.global_mean(kl_per_dim.detach()) if self.config.free_bits > 0 else None  # (D,)
            penalty = free_bits_kl(kl_per_dim, self.config.free_bits, batch_mean_kl=batch_mean_kl)  # (B,)
            total = -elbo(log_px_z, penalty, beta=weight).mean()
        return Losses(total=total, terms={"reconstruction": -log_px_z.mean(0), "kl": kl,
                                          "elbo": elbo(log_px_z, kl), "iwae_bound": bound})

    def log_weights(self, x: Tensor, num_samples: int, generator: Noise | None = None) -> Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x): x (B, ...) -> (K, B).

        The noise (K, B, D) comes from one generator or, keyed per image, from each image's own."""
        posterior = self.encode(x)
        noise = standard_normal((num_samples, *posterior.mean.shape), generator, batch_dim=1, device=x.device)
        log_px_z, log_prior_ratio = self._log_weight_parts(x, posterior, noise)
        return log_px_z + log_prior_ratio

    def _log_weight_parts(self, x: Tensor, posterior: DiagonalGaussian, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x|z_k), log p(z_k) - log q(z_k|x)) for z_k = mean + std * noise_k: each (K, B)."""
        num_samples, batch = noise.shape[:2]
        z = posterior.rsample(noise)  # (K, B, D)
        likelihood = self.decode(z.reshape(num_samples * batch, -1))
        x_repeated = x.unsqueeze(0).expand(num_samples, *x.shape).reshape(num_samples * batch, *x.shape[1:])
        log_px_z = self.likelihood.log_likelihood(likelihood, x_repeated).view(num_samples, batch)
        log_pz = sum_except_batch(self.prior(z).log_prob(z), num_batch_dims=2)  # (K, B)
        log_qz_x = sum_except_batch(posterior.log_prob(z), num_batch_dims=2)  # (K, B)
        return log_px_z, log_pz - log_qz_x

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean: (B, C, H, W) -> (B, C, H, W) in [0, 1]."""
        return self.likelihood.mean_image(self.decode(self.encode(x).mean))

    def code_spec(self) -> CodeSpec:
        return CodeSpec(shape=(self.config.latent_dim,), dtype="float32")

    def latent_codes(self, x: Tensor) -> Tensor:
        """The code a two-stage model sees: the posterior mean, (B, latent_dim)."""
        return self.encode(x).mean

    def decode_mean(self, z: Tensor) -> Tensor:
        """Images E[x|z] for latents z (N, latent_dim): (N, C, H, W) in [0, 1]."""
        return self.likelihood.mean_image(self.decode(z))

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Decoder means of z ~ N(0, temperature^2 I): (N, C, H, W) in [0, 1]."""
        device = generator.device if generator is not None else self.device
        z = torch.randn(num_samples, self.config.latent_dim, generator=generator, device=device)
        return self.decode_mean(temperature * z.to(self.device))
