"""Point-cloud auto-encoder (Achlioptas, Diamanti, Mitliagkas, Guibas, ICML 2018, sec. 3).

PointNet encoder (per-point layers [64, 128, 128, 256, k] with max-pooling, k = 128) and an MLP
decoder [256, 256, P*3], trained to minimise the Chamfer distance or the EMD (PointFlow's
conventions, see `vaekit.divergences` and `vaekit.emd`) between each cloud and its reconstruction. A deterministic auto-encoder: it reconstructs and interpolates,
and latent generators (l-GMM, l-GAN) sample through its decoder as two-stage runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from vaekit.batch import Batch
from vaekit.config import CodeSpec, ModelConfig, PositiveInt, Sizes
from vaekit.divergences import chamfer_distance
from vaekit.emd import matched_emd, random_directions, sliced_wasserstein
from vaekit.errors import ConfigError
from vaekit.models.base import Capability, GenerativeModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.pointnet import PointDecoder, PointNetEncoder


class PointCloudAEConfig(ModelConfig):
    """The paper's AE with the Chamfer or the EMD loss, or the sliced Wasserstein distance (a fast EMD surrogate)."""

    name: Literal["pointcloud-ae"] = "pointcloud-ae"
    num_points: PositiveInt | None = None  # points per cloud; None = taken from the data
    latent_dim: int = Field(128, ge=1)  # k, the bottleneck
    encoder_channels: Sizes = (64, 128, 128, 256)  # per-point layers before the k-wide one
    decoder_hidden_dims: Sizes = (256, 256)
    loss: Literal["chamfer", "emd", "sliced"] = "chamfer"  # reconstruction distance
    emd_solver: Literal["exact", "auction"] = "exact"  # matching behind the EMD loss (vaekit.emd.matched_emd)
    emd_epsilon: float = Field(1e-3, gt=0)  # the auction's accuracy, in distance units per point
    sliced_directions: int = Field(128, ge=1)  # loss=sliced: random directions per step (vaekit.emd.sliced_wasserstein)


@register_model("pointcloud-ae", PointCloudAEConfig)
class PointCloudAE(GenerativeModel):
    """points (B, P, 3) -> code (B, k) -> points (B, P, 3)."""

    config: PointCloudAEConfig
    capabilities = frozenset({Capability.FLAT_CODES})

    def __init__(self, config: PointCloudAEConfig) -> None:
        super().__init__(config)
        if config.num_points is None:
            raise ConfigError("model.num_points is not set (vaekit.train fills it from the data)")
        self.encoder = PointNetEncoder([*config.encoder_channels, config.latent_dim])
        self.decoder = PointDecoder(config.latent_dim, config.decoder_hidden_dims, config.num_points)

    def code_spec(self) -> CodeSpec:
        return CodeSpec(shape=(self.config.latent_dim,), dtype="float32")

    def latent_codes(self, points: Tensor) -> Tensor:
        return self.encoder(points)

    def decode_mean(self, codes: Tensor) -> Tensor:
        return self.decoder(codes)

    def reconstruct(self, points: Tensor) -> Tensor:
        return self.decoder(self.encoder(points))

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        """Chamfer distance, EMD or sliced W1 between each cloud and its reconstruction, averaged over the batch."""
        # batch-norm statistics over the global batch; on one process torch's fused batch norm
        reducer = batch.all_reduce if batch.world_size > 1 else None
        codes = self.encoder(batch.x, sum_over_processes=reducer)  # (B, k)
        reconstruction = self.decoder(codes).float()  # (B, P, 3)
        if self.config.loss == "sliced":  # fresh directions each step, the same on every process
            directions = random_directions(self.config.sliced_directions, batch.x.shape[2], generator=batch.generator)
            sliced = sliced_wasserstein(batch.x.float(), reconstruction, directions.to(batch.x.device))  # (B,)
            return Losses(total=sliced.mean(), terms={"sliced_w1": sliced})
        if self.config.loss == "emd":
            emd = matched_emd(batch.x, reconstruction, solver=self.config.emd_solver, epsilon=self.config.emd_epsilon,
                              reduction="none")  # (B,)
            return Losses(total=emd.mean(), terms={"emd": emd})
        chamfer = chamfer_distance(batch.x, reconstruction, reduction="none")  # (B,)
        return Losses(total=chamfer.mean(), terms={"chamfer": chamfer})
