"""Learned priors for sampling from a trained auto-encoder's latent space.

`GaussianMixture`: a full-covariance Gaussian mixture over latent codes (the l-GMM of Achlioptas
et al. 2018, sec. 4; the ex-post density estimation of Ghosh et al. 2020), fitted by
scikit-learn's EM and stored as plain tensors (weights, means, Cholesky factors), never pickled.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from torch import Tensor, nn


class GaussianMixture(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, Sigma_k) with Sigma_k = L_k L_k^T; buffers only (fitted, not trained)."""

    def __init__(self, num_components: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.full((num_components,), -math.log(num_components)))  # (K,)
        self.register_buffer("means", torch.zeros(num_components, dim))  # (K, D)
        self.register_buffer("scale_tril", torch.eye(dim).repeat(num_components, 1, 1))  # (K, D, D)

    def fit(self, codes: Tensor, *, max_iter: int, seed: int, reg_covar: float) -> dict[str, float]:
        """EM fit (scikit-learn, full covariances) of codes (N, D); returns the mean train log-likelihood."""
        num_components = self.means.shape[0]
        if codes.shape[0] < num_components:
            raise ValueError(f"{codes.shape[0]} codes cannot fit {num_components} mixture components")
        mixture = SklearnGaussianMixture(
            n_components=num_components, covariance_type="full", max_iter=max_iter,
            random_state=seed, reg_covar=reg_covar,
        ).fit(codes.detach().double().cpu().numpy())
        device = self.means.device
        self.log_weights.copy_(torch.from_numpy(np.log(mixture.weights_)).to(device))
        self.means.copy_(torch.from_numpy(mixture.means_).to(device))
        self.scale_tril.copy_(torch.linalg.cholesky(torch.from_numpy(mixture.covariances_)).to(device))
        return {"converged": float(mixture.converged_), "iterations": float(mixture.n_iter_),
                "train_log_likelihood": float(mixture.score(codes.detach().double().cpu().numpy()))}

    def _distribution(self) -> torch.distributions.MixtureSameFamily:
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=self.log_weights),
            torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril),
        )

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z): (N, D) -> (N,)."""
        return self._distribution().log_prob(z)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """(N, D) draws: a component per draw, then mu_k + L_k eps."""
        component = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.means.shape[1], generator=generator).to(self.means)
        return self.means[component] + (self.scale_tril[component] @ noise.unsqueeze(-1)).squeeze(-1)
