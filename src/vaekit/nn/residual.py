"""Residual cells with squeeze-excitation for hierarchical VAEs (NVAE, Vahdat & Kautz 2020, fig. 3).

No batch normalisation (as VDVAE, Child 2021): a cell computes the same function at any process
count and needs no statistics re-estimated before sampling.
"""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcitation(nn.Module):
    """Channel gates from globally pooled features (Hu et al. 2018): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x.mean(dim=(2, 3)))[:, :, None, None]  # (B, C) gates broadcast over H, W


class ResidualCell(nn.Module):
    """x + 0.1 * f(x), f = SiLU, conv3x3, SiLU, conv3x3 [, SE]: the same channels and size."""

    def __init__(self, channels: int, *, squeeze_excitation: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(channels, channels, 3, padding=1)]
        if squeeze_excitation:
            layers.append(SqueezeExcitation(channels))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * self.branch(x)  # a small residual scale keeps a deep stack near the identity at init


def residual_stack(channels: int, count: int, *, squeeze_excitation: bool) -> nn.Sequential:
    """`count` residual cells in a row (the identity when count is 0)."""
    return nn.Sequential(*[ResidualCell(channels, squeeze_excitation=squeeze_excitation) for _ in range(count)])
