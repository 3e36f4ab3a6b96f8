"""PointNet encoder (Qi et al. 2017) as used by Achlioptas et al. 2018, and an MLP point decoder.

Encoder: shared per-point layers (the paper's 1-D convolutions of kernel 1, written as linear maps
on the (B*P, C) rows: the same function, and a plain matmul, several times faster on a CPU) with
batch-norm over all points of the batch and ReLU, then a max over points: symmetric in the points,
so permutation-invariant by construction. points (B, P, 3) -> (B, k).
Decoder: an MLP from the code to P*3 coordinates: (B, k) -> (B, P, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaekit.nn.image_nets import mlp


class PointNetEncoder(nn.Module):
    """points (B, P, 3) -> codes (B, channels[-1]) through shared per-point layers and a max-pool."""

    def __init__(self, channels: Sequence[int], in_dim: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip([in_dim, *channels[:-1]], channels)):
            layers.append(nn.Linear(fan_in, fan_out))
            if index < len(channels) - 1:
                layers += [nn.BatchNorm1d(fan_out), nn.ReLU()]
        self.per_point = nn.Sequential(*layers)

    def forward(self, points: Tensor) -> Tensor:
        batch, num_points, dims = points.shape
        features = self.per_point(points.reshape(batch * num_points, dims))  # (B*P, k)
        return features.view(batch, num_points, -1).max(dim=1).values  # (B, k): symmetric in the points


class PointDecoder(nn.Module):
    """codes (B, k) -> points (B, P, 3) through an MLP (ReLU between layers, linear output)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.net = mlp([latent_dim, *hidden_dims, num_points * 3], "relu")

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes).view(-1, self.num_points, 3)  # (B, P, 3)
