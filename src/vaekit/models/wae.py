"""Wasserstein auto-encoders (Tolstikhin, Bousquet, Gelly, Schoelkopf, ICLR 2018, arXiv 1711.01558).

Objective (eq. 4): min_{Q, G} E c(x, G(z)) + lambda * D_Z(Q_Z, P_Z), with P_Z = N(0, sigma_p^2 I).
- the cost is c(x, y) = reconstruction_scale * ||x - y||^2; the authors' code uses 0.05, and the
  presets' lambda values assume that scale;
- the encoder Q(z|x) is deterministic (the paper's default) or Gaussian (`encoder: gaussian`);
- WAE-MMD: D_Z is the unbiased kernel MMD U-statistic (a batch-level term, Algorithm 2);
- WAE-GAN: D_Z is estimated by a latent discriminator D trained with its own optimiser (Algorithm 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import CodeSpec, ImageShape, ModelConfig, PositiveFloat, Sizes
from vaekit.distributions import DiagonalGaussian
from vaekit.divergences import mmd_unbiased
from vaekit.models.base import Capability, GenerativeModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.image_nets import (
    Activation,
    ImageNetConfig,
    build_image_decoder,
    build_image_encoder,
    mlp,
)


class WAEConfig(ModelConfig):
    """What WAE-MMD and WAE-GAN share."""

    image_shape: ImageShape | None = None  # (C, H, W); None = taken from the data
    latent_dim: int = Field(8, ge=1)  # d_z
    architecture: Literal["mlp", "conv"] = "conv"
    hidden_dims: Sizes = (512,)  # mlp widths / conv: dense widths after the convs
    conv_channels: Sizes = (32, 64)
    activation: Activation = "relu"
    encoder: Literal["deterministic", "gaussian"] = "deterministic"  # Q(z|x)
    prior_std: float = Field(1.0, gt=0)  # sigma_p of P_Z = N(0, sigma_p^2 I)
    penalty_weight: float = Field(10.0, ge=0)  # lambda
    reconstruction_scale: float = Field(0.05, gt=0)  # c(x, y) = scale * ||x - y||^2 (authors' code: 0.05)


class WAEMMDConfig(WAEConfig):
    """WAE with the kernel MMD penalty."""

    name: Literal["wae-mmd"] = "wae-mmd"
    kernel: Literal["imq", "rbf"] = "imq"
    rbf_bandwidth: PositiveFloat | None = None  # rbf: fixed h; None = median heuristic (slightly biased)


class WAEGANConfig(WAEConfig):
    """WAE with the adversarial penalty in latent space."""

    name: Literal["wae-gan"] = "wae-gan"
    penalty_weight: float = Field(1.0, ge=0)  # the paper's MNIST lambda for WAE-GAN
    discriminator_hidden_dims: Sizes = (512, 512, 512, 512)  # the paper's MNIST adversary


class WAE(GenerativeModel):
    """Encoder Q, decoder G (pixel means through a sigmoid) and the reconstruction cost."""

    config: WAEConfig
    capabilities = frozenset({Capability.SAMPLE, Capability.FLAT_CODES})

    def __init__(self, config: WAEConfig) -> None:
        super().__init__(config)
        nets = ImageNetConfig.of(config)
        code_size = config.latent_dim * (2 if config.encoder == "gaussian" else 1)
        self.encoder = build_image_encoder(nets, out_features=code_size)
        self.decoder = build_image_decoder(nets, in_features=config.latent_dim, out_channels=config.image_shape[0])

    def encode_sample(self, batch: Batch) -> Tensor:
        """z ~ Q(z|x): the code itself, or a reparameterised Gaussian draw: (B, latent_dim)."""
        out = self.encoder(batch.x).float()
        if self.config.encoder == "deterministic":
            return out
        mean, log_var = out.chunk(2, dim=-1)
        return DiagonalGaussian(mean, log_var).rsample(batch.randn(batch.size, self.config.latent_dim))

    def code_spec(self) -> CodeSpec:
        return CodeSpec(shape=(self.config.latent_dim,), dtype="float32")

    def latent_codes(self, x: Tensor) -> Tensor:
        """The code of x: the encoder's output (its mean for a Gaussian encoder), (B, latent_dim)."""
        return self.encoder(x).float()[:, : self.config.latent_dim]

    def decode_mean(self, z: Tensor) -> Tensor:
        """G(z): images (N, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.decoder(z).float())

    def reconstruction_cost(self, x: Tensor, z: Tensor) -> Tensor:
        """c(x, G(z)) = scale * ||x - G(z)||^2 per sample: (B,)."""
        return self.config.reconstruction_scale * (x.float() - self.decode_mean(z)).pow(2).flatten(1).sum(1)

    def prior_sample(self, shape: tuple[int, ...], noise: Tensor | None = None, generator=None) -> Tensor:
        """z ~ P_Z = N(0, sigma_p^2 I)."""
        if noise is None:
            noise = torch.randn(shape, generator=generator)
        return self.config.prior_std * noise

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """G(z) for z ~ N(0, (temperature sigma_p)^2 I): (N, C, H, W) in [0, 1]."""
        z = self.prior_sample((num_samples, self.config.latent_dim), generator=generator)
        return self.decode_mean(temperature * z.to(self.device))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_mean(self.latent_codes(x))

    def extra_scores(self, x: Tensor) -> dict[str, float]:
        """Kernel MMD (IMQ) between the test codes and as many prior draws: is Q_Z matched to P_Z?"""
        codes = torch.cat([self.latent_codes(c) for c in x.split(500)])
        prior = self.prior_sample(codes.shape, generator=torch.Generator().manual_seed(0)).to(codes)
        return {"latent_mmd": mmd_unbiased(codes, prior, kernel="imq", prior_variance=self.config.prior_std**2).item()}


@register_model("wae-mmd", WAEMMDConfig)
class WAEMMD(WAE):
    """WAE-MMD (Algorithm 2): reconstruction + lambda * MMD^2_u(Q_Z samples, P_Z samples)."""

    config: WAEMMDConfig

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        z = self.encode_sample(batch)  # (B, d_z)
        reconstruction = self.reconstruction_cost(batch.x, z)  # (B,)
        prior = self.prior_sample(z.shape, noise=batch.randn(batch.size, self.config.latent_dim))
        # a global-batch term: the U-statistic over every process's codes and prior draws (W*B, d_z)
        mmd = mmd_unbiased(batch.all_gather(z), batch.all_gather(prior), kernel=self.config.kernel,
                           prior_variance=self.config.prior_std**2, bandwidth=self.config.rbf_bandwidth)
        return Losses(total=reconstruction.mean() + self.config.penalty_weight * mmd,
                      terms={"reconstruction": reconstruction, "mmd": mmd})


@register_model("wae-gan", WAEGANConfig)
class WAEGAN(WAE):
    """WAE-GAN (Algorithm 1): a latent discriminator D(z) -> logit of "z came from P_Z"."""

    config: WAEGANConfig

    def __init__(self, config: WAEGANConfig) -> None:
        super().__init__(config)
        self.discriminator = nn.Sequential(
            mlp([config.latent_dim, *config.discriminator_hidden_dims, 1], config.activation), nn.Flatten(0)
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The adversary first, then encoder and decoder (Algorithm 1's order)."""
        return {"discriminator": list(self.discriminator.parameters()),
                "model": [*self.encoder.parameters(), *self.decoder.parameters()]}

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        z = self.encode_sample(batch)  # (B, d_z)
        lam = self.config.penalty_weight
        if group == "discriminator":
            prior = self.prior_sample(z.shape, noise=batch.randn(batch.size, self.config.latent_dim))
            # ascend lambda/n sum log D(z_p) + log(1 - D(z_q)): descend its negative, per sample
            per_sample = lam * (F.softplus(-self.discriminator(prior)) + F.softplus(self.discriminator(z.detach())))
            return Losses(total=per_sample.mean(), terms={"discriminator": per_sample})
        if group != "model":
            raise NotImplementedError(group)
        reconstruction = self.reconstruction_cost(batch.x, z)
        adversarial = F.softplus(-self.discriminator(z))  # -log D(z_q): the encoder fools D
        return Losses(total=(reconstruction + lam * adversarial).mean(),
                      terms={"reconstruction": reconstruction, "adversarial": adversarial})
