"""The one model interface every family implements, so one engine trains, evaluates, samples and saves it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vaekit.batch import Batch, Noise
from vaekit.config import CodeSpec, ModelConfig, TwoStageConfig
from vaekit.distributions import DiagonalGaussian
from vaekit.errors import CapabilityError, ConfigError
from vaekit.likelihoods import ImageDistribution


@dataclass(frozen=True)
class Losses:
    """What one update of one parameter group minimises.

    `total` is the scalar the engine back-propagates. `terms` are named tensors the engine logs
    (their mean): per-sample `(B,)` where the math is per-sample (reconstruction, KL), scalars
    where it is batch-level (a kernel MMD U-statistic, KL-balancing coefficients).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


# chooses z_l in a pass over latent groups: (group index, prior p(z_l|z_<l), posterior q(z_l|z_<l,x) or None) -> z_l
DrawFn = Callable[[int, DiagonalGaussian, DiagonalGaussian | None], Tensor]


class Capability(str, enum.Enum):
    """What a model can do; evaluation, pictures, CLI verbs and the contract test follow the declaration."""

    SAMPLE = "sample"  # sample(n, generator) draws new data
    GAUSSIAN_POSTERIOR = "gaussian_posterior"  # encode(x) -> DiagonalGaussian q(z|x) (latent diagnostics)
    LIKELIHOOD = "likelihood"  # log_weights(x, K, noise) (K, B) and a `likelihood` spec: log p(x), bits/dim
    FLAT_CODES = "flat_codes"  # latent_codes(x) (B, k) float, decode_mean(z): traversals, interpolations, parents
    DISCRETE_CODES = "discrete_codes"  # latent_codes(x) integer symbols, decode_mean(codes): code priors, coding
    LATENT_GROUPS = "latent_groups"  # latent_pass(n, draw, x): Gaussian groups p(z_l|z_<l), q(z_l|z_<l,x); bits back


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

    - after every optimiser step of a step, the engine calls `update_buffers(batch, step)` once,
      without gradients, in training only, not for a skipped step: the one place where buffers
      that gradients do not learn (an EMA codebook, dead-code restarts) change. Its randomness
      comes from `batch` (step-seeded, the same on every process) and its statistics from
      `batch.all_reduce`, so every process makes the same change;
    - `averaged_buffers()` names the buffers the weight EMA averages besides the parameters.

    A model declares its `capabilities`; a method of a capability it does not declare raises
    CapabilityError with one clear message. Two-stage models (a latent GMM or GAN on an
    auto-encoder's codes, a prior over VQ codes) set `requires_parent`, are built from their
    config alone (its `codes` spec of the parent's codes), and receive the parent run's frozen
    model through `attach_parent`; it is not a submodule, so it is neither trained nor saved in
    the child's checkpoints. Models fitted without gradients return no parameter groups and
    implement `fit`.
    """

    config: ModelConfig
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    requires_parent: ClassVar[bool] = False

    @classmethod
    def can(cls, capability: Capability) -> bool:
        return capability in cls.capabilities

    def require(self, capability: Capability, verb: str) -> None:
        """Raise CapabilityError ("model 'x' cannot <verb> ...") unless the model declares `capability`."""
        if not self.can(capability):
            raise self._cannot(capability, verb)

    def _cannot(self, capability: Capability, verb: str) -> CapabilityError:
        can = ", ".join(sorted(c.value for c in self.capabilities)) or "none of the optional capabilities"
        return CapabilityError(f"model {self.config.name!r} cannot {verb} (it does not declare "
                               f"{capability.value!r}; it declares {can})")

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

    def update_buffers(self, batch: Batch, step: int) -> None:
        """The post-step hook (see the class docstring); nothing by default."""

    def averaged_buffers(self) -> list[str]:
        """State-dict names of buffers the weight EMA averages besides the parameters; none by default."""
        return []

    def extra_scores(self, x: Tensor) -> dict[str, Any]:
        """Family-specific test scores of test inputs x (e.g. a latent MMD); none by default."""
        return {}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Deterministic reconstruction of x (decoder mean at the encoder's mean), same shape as x."""
        raise NotImplementedError

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Capability SAMPLE: num_samples new data points (images (N, C, H, W) in [0, 1], clouds (N, P, 3)).

        `temperature` scales the spread of the latent draws (1 = the model's distribution).
        """
        raise self._cannot(Capability.SAMPLE, "sample")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Capability GAUSSIAN_POSTERIOR: q(z|x) with mean, log_var (B, latent_dim)."""
        raise self._cannot(Capability.GAUSSIAN_POSTERIOR, "encode to a Gaussian posterior")

    def log_weights(self, x: Tensor, num_samples: int, generator: Noise | None = None) -> Tensor:
        """Capability LIKELIHOOD: log p(x, z_k) - log q(z_k|x) for K posterior draws: x (B, ...) -> (K, B); the
        draws from one generator, or keyed per example (`ExampleNoise`: independent of chunk and process)."""
        raise self._cannot(Capability.LIKELIHOOD, "score an importance-sampled likelihood")

    def latent_pass(self, batch_size: int, draw: DrawFn, x: Tensor | None = None) -> ImageDistribution:
        """Capability LATENT_GROUPS: the generator's pass over its Gaussian latent groups z_1..z_L in order, each
        z_l = draw(l, p(z_l | z_<l), q(z_l | z_<l, x) or None without x), then p(x | z) over (batch_size, C, H, W).
        The priors depend on z_<l only, so a decoder that draws the same z gets the same numbers (bits back)."""
        raise self._cannot(Capability.LATENT_GROUPS, "run a pass over latent groups")

    def code_spec(self) -> CodeSpec:
        """Capability FLAT_CODES or DISCRETE_CODES: shape, dtype and symbols of `latent_codes`."""
        raise self._cannot(Capability.FLAT_CODES, "encode to codes")

    def latent_codes(self, x: Tensor) -> Tensor:
        """Capability FLAT_CODES / DISCRETE_CODES: the codes of x, (B, *code_spec().shape)."""
        raise self._cannot(Capability.FLAT_CODES, "encode to codes")

    def decode_mean(self, codes: Tensor) -> Tensor:
        """Capability FLAT_CODES / DISCRETE_CODES: the decoder's mean output for codes (B, *code shape)."""
        raise self._cannot(Capability.FLAT_CODES, "decode codes")

    @property
    def device(self) -> torch.device:
        return next(iter(self.state_dict().values())).device


class LatentSpaceModel(GenerativeModel):
    """A two-stage model over a frozen parent's codes (latent GMM, latent GAN, code priors).

    Built from its config alone: `config.codes` (filled from the parent run at training time)
    says the codes' shape, dtype and symbols. It can sample (through the parent's decoder) and
    reconstructs through the parent.
    """

    config: TwoStageConfig
    capabilities = frozenset({Capability.SAMPLE})
    requires_parent = True

    def __init__(self, config: TwoStageConfig) -> None:
        super().__init__(config)
        if config.codes is None:
            raise ConfigError(f"model {config.name!r} needs model.codes (the parent's codes): set parent=RUN_DIR "
                              "and vaekit fills it from the parent run")

    def attach_parent(self, parent: GenerativeModel) -> None:
        if not (parent.can(Capability.FLAT_CODES) or parent.can(Capability.DISCRETE_CODES)):
            raise ConfigError(f"{self.config.name} builds on a parent with codes; model "
                              f"{parent.config.name!r} declares none")
        if parent.code_spec() != self.config.codes:
            raise ConfigError(f"the parent's codes are {parent.code_spec()} but this model was built for "
                              f"{self.config.codes}")
        self.__dict__["parent"] = parent  # not a submodule: frozen, not saved with this model

    def continuous_code_dim(self) -> int:
        """k of flat continuous codes (k,); a clear error for any other codes."""
        codes = self.config.codes
        if codes.dtype != "float32" or len(codes.shape) != 1:
            raise ConfigError(f"model {self.config.name!r} models flat continuous codes; the parent's are {codes}")
        return codes.shape[0]

    def parent_codes(self, x: Tensor, chunk: int = 256) -> Tensor:
        """The frozen parent's codes of x, without gradients, `chunk` rows at a time: (B, *code shape)."""
        with torch.no_grad():
            return torch.cat([self.parent.latent_codes(rows) for rows in x.split(chunk)])

    def training_inputs(self, x: Tensor) -> Tensor:
        """The parent's codes of the training rows: the data of a latent-space model, (B, *code shape)."""
        return self.parent_codes(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.parent.reconstruct(x)


def freeze(model: GenerativeModel) -> GenerativeModel:
    """A parent model as a child uses it: eval mode, no gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
