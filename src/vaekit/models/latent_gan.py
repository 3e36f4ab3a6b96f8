"""Latent GAN (Achlioptas et al. 2018, sec. 4, "l-GAN"): a GAN trained on a frozen auto-encoder's codes.

A two-stage run (`parent` names the AE run). Generator: noise (noise_dim) -> MLP -> a code (k);
discriminator: code -> MLP -> a logit. Samples are the parent decoder's output at generated codes.
- loss "gan": the plain GAN objective (Goodfellow et al. 2014) with the non-saturating generator loss;
- loss "wgan-gp": the Wasserstein GAN with gradient penalty (Gulrajani et al. 2017, Algorithm 1),
  `critic_updates` critic steps per generator step (the paper's "l-WGAN").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import Sizes, TwoStageConfig
from vaekit.models.base import LatentSpaceModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.image_nets import mlp


class LatentGANConfig(TwoStageConfig):
    """A GAN over a parent auto-encoder's latent codes."""

    name: Literal["latent-gan"] = "latent-gan"
    loss: Literal["gan", "wgan-gp"] = "gan"
    noise_dim: int = Field(128, ge=1)  # generator input
    noise_std: float = Field(0.2, gt=0)  # generator input ~ N(0, noise_std^2 I), as in the authors' code
    generator_hidden_dims: Sizes = (128,)  # the paper's l-GAN generator: [128, k]
    discriminator_hidden_dims: Sizes = (256, 512)  # the paper's l-GAN discriminator: [256, 512, 1]
    gradient_penalty: float = Field(10.0, ge=0)  # wgan-gp: lambda
    critic_updates: int = Field(5, ge=1)  # wgan-gp: critic steps per generator step


@register_model("latent-gan", LatentGANConfig)
class LatentGAN(LatentSpaceModel):
    """codes of the frozen parent are the real data; generated codes are decoded by the parent."""

    config: LatentGANConfig

    def __init__(self, config: LatentGANConfig) -> None:
        super().__init__(config)
        latent_dim = self.continuous_code_dim()
        self.generator = mlp([self.config.noise_dim, *self.config.generator_hidden_dims, latent_dim], "relu")
        self.discriminator = nn.Sequential(
            mlp([latent_dim, *self.config.discriminator_hidden_dims, 1], "relu"), nn.Flatten(0)
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"discriminator": list(self.discriminator.parameters()), "generator": list(self.generator.parameters())}

    def updates(self, step: int) -> list[str]:
        critic_steps = self.config.critic_updates if self.config.loss == "wgan-gp" else 1
        return ["discriminator"] * critic_steps + ["generator"]

    def _noise(self, batch: Batch) -> Tensor:
        return self.config.noise_std * batch.randn(batch.size, self.config.noise_dim)

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        real = batch.x  # (B, k): the parent's codes (`training_inputs`)
        fake = self.generator(self._noise(batch))  # (B, k)
        if group == "discriminator":
            return self._discriminator_loss(real, fake.detach(), batch)
        if group != "generator":
            raise NotImplementedError(group)
        score = self.discriminator(fake)
        per_sample = -score if self.config.loss == "wgan-gp" else F.softplus(-score)  # -log D(G(z))
        return Losses(total=per_sample.mean(), terms={"generator": per_sample})

    def _discriminator_loss(self, real: Tensor, fake: Tensor, batch: Batch) -> Losses:
        real_score, fake_score = self.discriminator(real), self.discriminator(fake)
        if self.config.loss == "gan":
            per_sample = F.softplus(-real_score) + F.softplus(fake_score)  # -log D(x) - log(1 - D(G(z)))
            return Losses(total=per_sample.mean(), terms={"discriminator": per_sample})
        penalty = self._gradient_penalty(real, fake, batch) if torch.is_grad_enabled() else real_score.new_zeros(len(real))
        per_sample = fake_score - real_score + self.config.gradient_penalty * penalty
        return Losses(total=per_sample.mean(),
                      terms={"critic": per_sample, "wasserstein_estimate": real_score - fake_score,
                             "gradient_penalty": penalty})

    def _gradient_penalty(self, real: Tensor, fake: Tensor, batch: Batch) -> Tensor:
        """(||grad_x D(x)|| - 1)^2 at random points between real and fake codes (Gulrajani et al. 2017): (B,).

        Needs gradients, so it is computed in training only (0 under torch.no_grad / inference mode).
        """
        mix = batch.rand(batch.size, 1)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.discriminator(between).sum(), between, create_graph=True)
        return (gradient.norm(dim=1) - 1.0).pow(2)

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """The parent's decoding of G(noise), noise ~ N(0, (temperature noise_std)^2 I)."""
        noise = temperature * self.config.noise_std * torch.randn(num_samples, self.config.noise_dim, generator=generator)
        return self.parent.decode_mean(self.generator(noise.to(self.parent.device)))
