"""Latent GMM: a Gaussian mixture fitted to a trained auto-encoder's codes, sampled through its decoder.

A two-stage, non-gradient run: `parent` names the auto-encoder run; `fit` encodes the training
split with the frozen parent and fits the mixture (Achlioptas et al. 2018, l-GMM).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from vaekit.config import TwoStageConfig
from vaekit.models.base import LatentSpaceModel
from vaekit.models.registry import register_model
from vaekit.priors import GaussianMixture


class LatentGMMConfig(TwoStageConfig):
    """A full-covariance Gaussian mixture over a parent auto-encoder's latent codes."""

    name: Literal["latent-gmm"] = "latent-gmm"
    num_components: int = Field(10, ge=1)  # mixture components (Achlioptas et al. used 32)
    max_iter: int = Field(200, ge=1)  # EM iterations
    reg_covar: float = Field(1e-6, gt=0)  # added to covariance diagonals for stability
    seed: int = 0  # EM initialisation
    codes_per_chunk: int = Field(1000, ge=1)  # training images encoded at once


@register_model("latent-gmm", LatentGMMConfig)
class LatentGMM(LatentSpaceModel):
    """z ~ GMM fitted on the parent's codes of the training split; x = parent's decoder mean at z."""

    config: LatentGMMConfig

    def __init__(self, config: LatentGMMConfig) -> None:
        super().__init__(config)
        self.mixture = GaussianMixture(config.num_components, self.continuous_code_dim())

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}

    def fit(self, x: Tensor) -> dict[str, float]:
        return self.mixture.fit(self.parent_codes(x, self.config.codes_per_chunk), max_iter=self.config.max_iter, seed=self.config.seed,
                                reg_covar=self.config.reg_covar)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.parent.decode_mean(self.mixture.sample(num_samples, generator))

    def extra_scores(self, x: Tensor) -> dict[str, float]:
        """Mean log-density of the test split's codes under the mixture (nats per image)."""
        return {"latent_log_likelihood": self.mixture.log_prob(self.parent_codes(x, self.config.codes_per_chunk)).mean().item()}
