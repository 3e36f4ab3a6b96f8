"""Divergences between samples, written once: kernel maximum mean discrepancy (IMQ, RBF) and the Chamfer distance.

Not to be confused with the point-cloud metric "MMD" (minimum matching distance), which lives
with the point-cloud metrics under its own name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from vaekit.distributions import at_least_fp32
from vaekit.nearest import Backend, nearest_neighbour_indices

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


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """Cubic kernel k(x, y) = (x.y / d + 1)^3 of KID (Binkowski et al. 2018): (N, D), (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def median_bandwidth(squared_distances: Tensor) -> Tensor:
    """Median heuristic (Gretton et al. 2012): h = median pairwise distance, off-diagonal pairs only.

    It depends on the samples, so the MMD estimator using it is slightly biased.
    """
    n = squared_distances.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=squared_distances.device)
    return torch.quantile(squared_distances[off_diagonal].sqrt(), 0.5).detach()  # NumPy's median convention


def kernel_matrix(points: Tensor, *, kernel: Literal["imq", "rbf", "polynomial"], prior_variance: float = 1.0,
                  bandwidth: float | None = None) -> Tensor:
    """Gram matrix k(p_i, p_j) of points (N, D) for the named kernel: (N, N)."""
    if kernel == "polynomial":
        return polynomial_kernel(points, points)
    squared = pairwise_squared_distances(points, points)
    if kernel == "imq":
        return imq_kernel(squared, latent_dim=points.shape[1], prior_variance=prior_variance)
    if kernel == "rbf":
        return rbf_kernel(squared, bandwidth=bandwidth if bandwidth is not None else median_bandwidth(squared))
    raise NotImplementedError(kernel)


def mmd_unbiased(x: Tensor, y: Tensor, *, kernel: Literal["imq", "rbf", "polynomial"], prior_variance: float = 1.0,
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
    gram = kernel_matrix(torch.cat([x, y]), kernel=kernel, prior_variance=prior_variance, bandwidth=bandwidth)
    k_xx, k_yy, k_xy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2.0 * k_xy.mean()


def _check_points(points: Tensor, name: str) -> None:
    if points.ndim != 3:
        raise ValueError(f"Expected {name} of shape (N, P, D), got {tuple(points.shape)}")


def chamfer_distance(x: Tensor, y: Tensor, *, reduction: Literal["none", "mean", "sum"] = "mean",
                     backend: Backend | None = None, max_bytes: int = 2 * 2**20) -> Tensor:
    """Chamfer distance (PointFlow's convention): mean_i min_j ||x_i - y_j||^2 + mean_j min_i ||x_i - y_j||^2.

    x (B, N, D), y (B, M, D) -> (B,) for reduction="none". The neighbours are found without
    gradients; the distances are then recomputed exactly from the chosen pairs, so the backward
    pass costs O(B (N + M) D) (gradients flow through the neighbour indices) instead of going
    through the (N, M) distance matrix.
    """
    _check_points(x, "x")
    _check_points(y, "y")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must agree in batch size and dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f'reduction must be "none", "mean" or "sum", got {reduction!r}')
    nearest_y, nearest_x = nearest_neighbour_indices(x, y, backend=backend, max_bytes=max_bytes)
    dims = x.shape[2]
    x_to_y = (x - torch.gather(y, 1, nearest_y.unsqueeze(-1).expand(-1, -1, dims))).pow(2).sum(-1)  # (B, N)
    y_to_x = (y - torch.gather(x, 1, nearest_x.unsqueeze(-1).expand(-1, -1, dims))).pow(2).sum(-1)  # (B, M)
    per_pair = x_to_y.mean(1) + y_to_x.mean(1)
    if reduction == "none":
        return per_pair
    return per_pair.mean() if reduction == "mean" else per_pair.sum()
