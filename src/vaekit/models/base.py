"""The one model interface every family implements, so one engine trains, evaluates, samples and saves it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError


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
    - each step, for each group `updates(step)` lists (default: every group once, in order), the
      engine calls `loss(batch, group=..., step=...)`, zeroes every gradient, back-propagates
      `total` and steps only that group's optimiser, so one group's loss never moves another's
      weights;
    - `forward` is `loss`, so DistributedDataParallel's gradient hooks see every call;
    - the batches `loss` receives hold rows of `training_inputs(data)` (the data itself by default).

    Two-stage models (a latent GMM or GAN on an auto-encoder's codes, a prior over VQ codes) set
    `requires_parent` and receive the parent run's frozen model through `attach_parent`; it is
    not a submodule, so it is neither trained nor saved in the child's checkpoints. Models fitted
    without gradients return no parameter groups and implement `fit`.
    """

    config: ModelConfig
    requires_parent: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def attach_parent(self, parent: GenerativeModel) -> None:
        """Receive the frozen model of the parent run (two-stage models only)."""
        raise ConfigError(f"model {self.config.name!r} does not build on a parent run; remove `parent`")

    def fit(self, x: Tensor) -> dict[str, float]:
        """Fit without gradients on the whole training split (models with no parameter groups)."""
        raise NotImplementedError(f"model {self.config.name!r} is trained by gradient steps")

    def training_inputs(self, x: Tensor) -> Tensor:
        """What the training batches hold, computed from training rows x (B, ...): x itself unless overridden.

        The engine applies it once to the whole training split (to each batch after a dynamic
        binarisation), so a two-stage model encodes the data through its frozen parent once per run.
        """
        return x

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter sets with their own optimiser, in update order."""
        return {"model": list(self.parameters())}

    def updates(self, step: int) -> list[str]:
        """The parameter groups updated at `step`, in order (e.g. 5 critic updates per generator update)."""
        return list(self.parameter_groups())

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
        return next(iter(self.state_dict().values())).device


class LatentSpaceModel(GenerativeModel):
    """A two-stage model over a frozen auto-encoder's codes (latent GMM, latent GAN, code priors).

    The parent must expose `latent_codes(x) -> (B, k)` and `decode_mean(z) -> x`; the child builds its
    own layers once k is known (`build_for_latent_dim`) and reconstructs through the parent.
    """

    requires_parent = True

    def attach_parent(self, parent: GenerativeModel) -> None:
        for needed in ("latent_codes", "decode_mean"):
            if not hasattr(parent, needed):
                raise ConfigError(f"{self.config.name} needs a parent with `{needed}`; {parent.config.name!r} has none")
        self.__dict__["parent"] = parent  # not a submodule: frozen, not saved with this model
        self.build_for_latent_dim(parent.config.latent_dim)
        self.to(parent.device)

    def build_for_latent_dim(self, latent_dim: int) -> None:
        """Create the layers or buffers that depend on the parent's code size k."""
        raise NotImplementedError

    def parent_codes(self, x: Tensor, chunk: int = 256) -> Tensor:
        """The frozen parent's codes of x, without gradients, `chunk` rows at a time: (B, k)."""
        with torch.no_grad():
            return torch.cat([self.parent.latent_codes(rows).float() for rows in x.split(chunk)])

    def training_inputs(self, x: Tensor) -> Tensor:
        """The parent's codes of the training rows: the data of a latent-space model, (B, k)."""
        return self.parent_codes(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.parent.reconstruct(x)


def freeze(model: GenerativeModel) -> GenerativeModel:
    """A parent model as a child uses it: eval mode, no gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
