"""Paths through latent space for pictures: spherical interpolation and one-dimension traversals."""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(start: Tensor, end: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces).

    start, end (B, D); t (T,) in [0, 1] -> (B, T, D). Falls back to linear interpolation where
    the two vectors are (anti)parallel, sin(angle) < 1e-3: in float32 the angle between parallel
    vectors comes out ~3e-4, not 0, and dividing by its sine would amplify rounding noise.
    """
    a, b = start.unsqueeze(1), end.unsqueeze(1)  # (B, 1, D)
    cos = torch.nn.functional.cosine_similarity(start, end, dim=-1).clamp(-1.0, 1.0)  # (B,)
    omega = torch.arccos(cos).unsqueeze(1).unsqueeze(2)  # (B, 1, 1)
    t = t.view(1, -1, 1).to(start)  # (1, T, 1)
    sin_omega = torch.sin(omega)
    linear = (1 - t) * a + t * b
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega.clamp_min(1e-12)
    return torch.where(sin_omega.abs() < 1e-3, linear, spherical)


def traversal(center: Tensor, dims: list[int], values: Tensor) -> Tensor:
    """Vary one latent dimension at a time around `center` (D,): -> (len(dims), len(values), D)."""
    grid = center.expand(len(dims), len(values), center.shape[-1]).clone()
    for row, dim in enumerate(dims):
        grid[row, :, dim] = values
    return grid
