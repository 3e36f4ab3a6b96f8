"""Latent GMM: a Gaussian mixture fitted to a trained auto-encoder's codes, sampled through its decoder.

A two-stage, non-gradient run: `parent` names the auto-encoder run; `fit` encodes the training
split with the frozen parent, chooses the mixture's size and covariance type by held-out
log-likelihood unless the config fixes them, and fits it on all training codes (Achlioptas et al.
2018, l-GMM).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from vaekit.config import TwoStageConfig
from vaekit.models.base import LatentSpaceModel
from vaekit.models.registry import register_model
from vaekit.priors import CovarianceType, GaussianMixture, select_mixture


class LatentGMMConfig(TwoStageConfig):
    """A Gaussian mixture over a parent auto-encoder's latent codes; size and covariance fixed or selected."""

    name: Literal["latent-gmm"] = "latent-gmm"
    num_components: int | None = Field(None, ge=1)  # None: chosen from component_grid (Achlioptas et al. used 32)
    covariance_type: CovarianceType | None = None  # None: chosen from full and diag
    component_grid: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 2, 4, 8, 16, 32), min_length=1)
    held_out_fraction: float = Field(0.2, gt=0, lt=1)  # training codes held out to score the grid
    overfit_gap_per_dim: float = Field(1.0, gt=0)  # warn when train - held-out log-likelihood exceeds this per dim
    max_iter: int = Field(200, ge=1)  # EM iterations
    reg_covar: float = Field(1e-6, gt=0)  # added to covariance diagonals for stability
    seed: int = Field(0, ge=0, lt=2**32)  # NumPy seed (scikit-learn's random_state) of EM initialisation and the held-out split
    codes_per_chunk: int = Field(1000, ge=1)  # training images encoded at once

    def max_components(self) -> int:
        """Mixture slots the buffers hold: num_components if fixed, else the grid's largest."""
        return self.num_components if self.num_components is not None else max(self.component_grid)

    def candidates(self) -> list[tuple[int, CovarianceType]]:
        """The (components, covariance type) grid, with fixed fields as the only value on their axis."""
        components = [self.num_components] if self.num_components is not None else sorted(set(self.component_grid))
        types: list[CovarianceType] = [self.covariance_type] if self.covariance_type is not None else ["full", "diag"]
        return [(k, t) for k in components for t in types]


@register_model("latent-gmm", LatentGMMConfig)
class LatentGMM(LatentSpaceModel):
    """z ~ GMM fitted on the parent's codes of the training split; x = parent's decoder mean at z.

    The mixture's buffers hold `config.max_components()` slots of full Cholesky factors, so
    `build_model(config)` alone rebuilds a model whose state dict loads whatever `fit` chose: unused
    slots keep log-weight -inf and a diagonal covariance is a diagonal factor. The choice itself
    lives in the weights (`mixture.num_components`, the factors' off-diagonals) and in the logged
    train metrics, not in the config, which is written before the fit.
    """

    config: LatentGMMConfig

    def __init__(self, config: LatentGMMConfig) -> None:
        super().__init__(config)
        self.mixture = GaussianMixture(config.max_components(), self.continuous_code_dim())

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}

    def fit(self, x: Tensor) -> dict[str, float]:
        """Select (held-out log-likelihood) and fit the mixture on the parent's codes of training rows x."""
        return self.fit_codes(self.parent_codes(x, self.config.codes_per_chunk))

    def fit_codes(self, codes: Tensor) -> dict[str, float]:
        """Held-out selection over `config.candidates()`, then EM of the choice on all codes (N, k); warns on overfit.

        The overfitting gap is (mean train - mean held-out log-likelihood) / k nats per code
        dimension; above `config.overfit_gap_per_dim` the mixture memorises its training codes.
        """
        cfg = self.config
        choice = select_mixture(codes, cfg.candidates(), held_out_fraction=cfg.held_out_fraction,
                                max_iter=cfg.max_iter, seed=cfg.seed, reg_covar=cfg.reg_covar)
        metrics = self.mixture.fit(codes, num_components=choice.num_components, covariance_type=choice.covariance_type,
                                   max_iter=cfg.max_iter, seed=cfg.seed, reg_covar=cfg.reg_covar)
        gap_per_dim = (metrics["train_log_likelihood"] - choice.held_out_log_likelihood) / codes.shape[1]
        overfit = gap_per_dim > cfg.overfit_gap_per_dim
        if overfit:
            warnings.warn(
                f"latent GMM overfits its {codes.shape[0]} training codes: {choice.num_components} "
                f"{choice.covariance_type}-covariance components score train log-likelihood "
                f"{metrics['train_log_likelihood']:.4g} but held-out {choice.held_out_log_likelihood:.4g} "
                f"({gap_per_dim:.3g} nats per code dimension > model.overfit_gap_per_dim={cfg.overfit_gap_per_dim}); "
                "use fewer components, covariance_type=diag, or leave them null to be selected",
                UserWarning, stacklevel=2)
        return {**metrics, "held_out_log_likelihood": choice.held_out_log_likelihood,
                "num_components": float(choice.num_components),
                "diagonal_covariance": float(choice.covariance_type == "diag"),
                "overfit_gap_per_dim": gap_per_dim, "overfit_warning": float(overfit)}

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """The parent's decoding of z ~ the mixture, each component's spread scaled by temperature."""
        return self.parent.decode_mean(self.mixture.sample(num_samples, generator, temperature=temperature))

    def extra_scores(self, x: Tensor) -> dict[str, float]:
        """Mean log-density of the test split's codes under the mixture (nats per image)."""
        return {"latent_log_likelihood": self.mixture.log_prob(self.parent_codes(x, self.config.codes_per_chunk)).mean().item()}
