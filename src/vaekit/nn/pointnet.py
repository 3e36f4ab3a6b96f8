"""PointNet encoder (Qi et al. 2017) as used by Achlioptas et al. 2018, and an MLP point decoder.

Encoder: shared per-point layers (the paper's 1-D convolutions of kernel 1, written as linear maps
on the (B*P, C) rows: the same function, and a plain matmul, several times faster on a CPU) with
batch-norm over all points of the global batch (every process's clouds: `GlobalBatchNorm`) and
ReLU, then a max over points: symmetric in the points,
so permutation-invariant by construction. points (B, P, 3) -> (B, k).
Decoder: an MLP from the code to P*3 coordinates: (B, k) -> (B, P, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vaekit.nn.image_nets import mlp
from vaekit.nn.normalization import GlobalBatchNorm, SumOverProcesses


class PointNetEncoder(nn.Module):
    """points (B, P, 3) -> codes (B, channels[-1]) through shared per-point layers and a max-pool."""

    def __init__(self, channels: Sequence[int], in_dim: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip([in_dim, *channels[:-1]], channels)):
            normalised = index < len(channels) - 1
            # no bias before a batch norm: the norm subtracts it again, so its true gradient is 0 and Adam
            # would turn the rounding noise left in its place into full-size steps
            layers.append(nn.Linear(fan_in, fan_out, bias=not normalised))
            if normalised:
                layers += [GlobalBatchNorm(fan_out), nn.ReLU()]
        self.per_point = nn.Sequential(*layers)

    def forward(self, points: Tensor, sum_over_processes: SumOverProcesses | None = None) -> Tensor:
        """`sum_over_processes` (training: `Batch.all_reduce`) makes the batch statistics global."""
        batch, num_points, dims = points.shape
        features = points.reshape(batch * num_points, dims)  # (B*P, 3)
        for layer in self.per_point:
            if isinstance(layer, GlobalBatchNorm):
                features = layer(features, sum_over_processes)
            else:
                features = layer(features)
        return features.view(batch, num_points, -1).max(dim=1).values  # (B, k): symmetric in the points


class PointDecoder(nn.Module):
    """codes (B, k) -> points (B, P, 3) through an MLP (ReLU between layers, linear output)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], num_points: int) -> None:
        super().__init__()
        self.num_points = num_points
        self.net = mlp([latent_dim, *hidden_dims, num_points * 3], "relu")

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes).view(-1, self.num_points, 3)  # (B, P, 3)
