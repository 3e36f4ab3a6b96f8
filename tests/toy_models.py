"""A tiny model that exercises the engine's contract for buffers and discrete codes (registered by conftest).

`toy-codebook`: a miniature VQ auto-encoder. Its codebook is a buffer learned by an exponential
moving average of the encoder outputs assigned to each code (van den Oord et al. 2017, App. A.1),
and dead codes restart at random rows of the global batch: both in the post-step hook, with the
batch's statistics (`all_reduce`) and randomness (its step-seeded generator).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import CodeSpec, ModelConfig
from vaekit.models.base import Capability, GenerativeModel, Losses
from vaekit.models.registry import lookup, model_names, register_model


class ToyCodebookConfig(ModelConfig):
    name: Literal["toy-codebook"] = "toy-codebook"
    image_shape: tuple[int, int, int] | None = None  # filled from the data
    num_codes: int = Field(8, ge=2)  # K
    code_dim: int = Field(2, ge=1)  # d of each code vector
    num_groups: int = Field(2, ge=1)  # codes per image
    ema_decay: float = 0.9  # codebook EMA
    restart_below: float = 0.02  # a code whose usage share falls below this restarts at a batch row


class ToyCodebook(GenerativeModel):
    """x -> G code vectors (B, G, d) -> nearest of K codes -> decoder."""

    capabilities = frozenset({Capability.DISCRETE_CODES})

    def __init__(self, config: ToyCodebookConfig) -> None:
        super().__init__(config)
        pixels = int(torch.tensor(config.image_shape).prod())
        self.encoder = nn.Linear(pixels, config.num_groups * config.code_dim)
        self.decoder = nn.Linear(config.num_groups * config.code_dim, pixels)
        self.register_buffer("codebook", torch.randn(config.num_codes, config.code_dim))  # (K, d)
        self.register_buffer("usage", torch.full((config.num_codes,), 1.0 / config.num_codes))  # (K,)

    def _vectors(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1)).view(len(x), self.config.num_groups, self.config.code_dim)  # (B, G, d)

    def _nearest(self, vectors: Tensor) -> Tensor:
        return torch.cdist(vectors.flatten(0, 1), self.codebook).argmin(1).view(vectors.shape[:2])  # (B, G)

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        vectors = self._vectors(batch.x)
        quantised = self.codebook[self._nearest(vectors)]  # (B, G, d)
        straight_through = vectors + (quantised - vectors).detach()
        reconstruction = (self._decode(straight_through) - batch.x).pow(2).flatten(1).sum(1)  # (B,)
        commitment = (vectors - quantised).pow(2).sum((1, 2))  # (B,)
        return Losses(total=(reconstruction + 0.25 * commitment).mean(),
                      terms={"reconstruction": reconstruction, "commitment": commitment})

    def update_buffers(self, batch: Batch, step: int) -> None:
        vectors = self._vectors(batch.x).flatten(0, 1)  # (B*G, d)
        assigned = F.one_hot(self._nearest(vectors.view(batch.size, -1, self.config.code_dim)).flatten(),
                             self.config.num_codes).float()  # (B*G, K)
        counts = batch.all_reduce(assigned.sum(0))  # (K,) over the global batch
        sums = batch.all_reduce(assigned.T @ vectors)  # (K, d)
        self.usage.lerp_(counts / counts.sum(), 1.0 - self.config.ema_decay)
        used = counts > 0
        self.codebook[used] = torch.lerp(self.codebook[used], sums[used] / counts[used, None], 1.0 - self.config.ema_decay)
        rows = batch.all_gather(vectors)  # (W*B*G, d)
        picks = torch.randint(len(rows), (self.config.num_codes,), generator=batch.generator,
                              device=batch.generator.device if batch.generator is not None else rows.device)
        dead = self.usage < self.config.restart_below
        self.codebook[dead] = rows[picks.to(rows.device)][dead]

    def _decode(self, vectors: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(vectors.flatten(1))).view(len(vectors), *self.config.image_shape)

    def code_spec(self) -> CodeSpec:
        return CodeSpec(shape=(self.config.num_groups,), dtype="int64", num_symbols=self.config.num_codes)

    def latent_codes(self, x: Tensor) -> Tensor:
        return self._nearest(self._vectors(x))  # (B, G) int64

    def decode_mean(self, codes: Tensor) -> Tensor:
        return self._decode(self.codebook[codes])

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_mean(self.latent_codes(x))


def register_toy_models() -> None:
    """Register `toy-codebook` once per process."""
    if "toy-codebook" not in model_names():
        register_model("toy-codebook", ToyCodebookConfig)(ToyCodebook)
    assert lookup("toy-codebook")[1] is ToyCodebook
