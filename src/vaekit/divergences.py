"""Divergences between samples, written once: kernel maximum mean discrepancy (IMQ, RBF).

Not to be confused with the point-cloud metric "MMD" (minimum matching distance), which lives
with the point-cloud metrics under its own name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from vaekit.distributions import at_least_fp32

IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # Tolstikhin et al.'s code: C = s * 2 d_z sigma_p^2


def pairwise_squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """||x_i - y_j||^2 via |x|^2 + |y|^2 - 2 x.y, clamped at 0: (N, D), (M, D) -> (N, M), in fp32 or wider."""
    x, y = at_least_fp32(x), at_least_fp32(y)
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.T
    return squared.clamp_min(0.0)


def imq_kernel(squared_distances: Tensor, *, latent_dim: int, prior_variance: float,
               scales: Sequence[float] = IMQ_SCALES) -> Tensor:
    """Inverse multiquadratics k(x, y) = sum_C C / (C + ||x - y||^2), C = s * 2 d_z sigma_p^2 (Tolstikhin et al. 2018, sec. 4)."""
    base = 2.0 * latent_dim * prior_variance
    return sum(s * base / (s * base + squared_distances) for s in scales)


def rbf_kernel(squared_distances: Tensor, *, bandwidth: float | Tensor) -> Tensor:
    """Gaussian RBF k(x, y) = exp(-||x - y||^2 / (2 h^2)) with bandwidth h."""
    return torch.exp(-squared_distances / (2.0 * bandwidth**2))


def median_bandwidth(squared_distances: Tensor) -> Tensor:
    """Median heuristic (Gretton et al. 2012): h = median pairwise distance, off-diagonal pairs only.

    It depends on the samples, so the MMD estimator using it is slightly biased.
    """
    n = squared_distances.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=squared_distances.device)
    return torch.quantile(squared_distances[off_diagonal].sqrt(), 0.5).detach()  # NumPy's median convention


def mmd_unbiased(x: Tensor, y: Tensor, *, kernel: Literal["imq", "rbf"], prior_variance: float = 1.0,
                 bandwidth: float | None = None) -> Tensor:
    """Unbiased U-statistic of MMD^2 (Gretton et al. 2012, eq. (3)), diagonal terms excluded; a scalar.

    MMD^2_u = 1/(n(n-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j) - 2/(nm) sum_ij k(x_i, y_j).
    x (n, D), y (m, D). `kernel="rbf"` with `bandwidth=None` uses the median heuristic over x and y.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected samples of shape (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples on each side")
    joint = torch.cat([x, y])
    squared = pairwise_squared_distances(joint, joint)  # (n+m, n+m)
    if kernel == "imq":
        gram = imq_kernel(squared, latent_dim=x.shape[1], prior_variance=prior_variance)
    elif kernel == "rbf":
        gram = rbf_kernel(squared, bandwidth=bandwidth if bandwidth is not None else median_bandwidth(squared))
    else:
        raise NotImplementedError(kernel)
    k_xx, k_yy, k_xy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * k_xy.mean()
