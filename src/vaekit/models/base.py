"""The one model interface every family implements, so one engine trains, evaluates, samples and saves it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import ModelConfig


@dataclass(frozen=True)
class Losses:
    """What one update of one parameter group minimises.

    `total` is the scalar the engine back-propagates. `terms` are named tensors the engine logs
    (their mean): per-sample `(B,)` where the math is per-sample (reconstruction, KL), scalars
    where it is batch-level (a kernel MMD U-statistic, KL-balancing coefficients).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    """Base of every registered model.

    Training contract with the engine:
    - `parameter_groups()` names the parameter sets that get their own optimiser (one, "model",
      for a VAE; e.g. "discriminator" and "model" for an adversarial model), in update order;
    - each step, for each group in that order, the engine calls `loss(batch, group=..., step=...)`,
      back-propagates `total` and steps only that group's optimiser;
    - `forward` is `loss`, so DistributedDataParallel's gradient hooks see every call.
    """

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter sets with their own optimiser, in update order."""
        return {"model": list(self.parameters())}

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        raise NotImplementedError

    def forward(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        return self.loss(batch, group=group, step=step)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """num_samples new data points (images: (N, C, H, W) in [0, 1])."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction of x (decoder mean at the encoder's mean), same shape as x."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
