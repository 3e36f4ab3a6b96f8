"""Spectral regularisation (Yoshida & Miyato 2017; NVAE sec. 3.2): lambda * sum over layers of the
largest singular value of each weight, estimated by power iteration.

The singular vectors are buffers that change only in `power_iteration` (a model's post-step hook),
so a step's penalty is a pure function of the weights and the buffers, the same on every process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SpectralPenalty(nn.Module):
    """sum_W sigma_max(W) over the given conv and linear layers, sigma = u^T W v with power-iteration u, v; a kernel
    is the matrix (its first dimension, the rest): (out, in * k * k), for a transposed convolution (in, out * k * k)."""

    def __init__(self, layers: list[nn.Conv2d | nn.ConvTranspose2d | nn.Linear],
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.layers = layers  # a plain list: the layers belong to the model, not to this module
        for index, layer in enumerate(layers):
            rows, cols = layer.weight.shape[0], layer.weight[0].numel()
            self.register_buffer(f"u{index}", F.normalize(torch.randn(rows, generator=generator), dim=0))
            self.register_buffer(f"v{index}", F.normalize(torch.randn(cols, generator=generator), dim=0))

    def forward(self) -> Tensor:
        """sum of u^T W v over layers: differentiable in W, the vectors held fixed."""
        total = torch.zeros((), device=self.u0.device)
        for index, layer in enumerate(self.layers):
            matrix = layer.weight.flatten(1)  # (out, in * k * k); transposed: (in, out * k * k)
            total = total + getattr(self, f"u{index}") @ matrix @ getattr(self, f"v{index}")
        return total

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        """v <- W^T u / |.|, u <- W v / |.|, `steps` times per layer."""
        for index, layer in enumerate(self.layers):
            matrix = layer.weight.flatten(1).float()
            u, v = getattr(self, f"u{index}"), getattr(self, f"v{index}")
            for _ in range(steps):
                v.copy_(F.normalize(matrix.T @ u, dim=0))
                u.copy_(F.normalize(matrix @ v, dim=0))
