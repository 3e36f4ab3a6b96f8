"""A learned prior over a VQ-VAE's code grids: the second stage of van den Oord et al. 2017 (sec. 3.2).

A two-stage run over the frozen parent's integer codes (`parent` names a run with discrete codes;
`model.codes` is filled from it): an autoregressive model p(c) = prod_i p(c_i | c_<i) in raster
order (vaekit.priors.CodeTransformer), trained by the same engine on the codes of the training
split. Samples are the parent decoder's images of sampled code grids. Its test score is the rate a
code grid costs under the prior, in bits per image: what an entropy coder with it would spend.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from vaekit.batch import Batch
from vaekit.config import TwoStageConfig
from vaekit.errors import ConfigError
from vaekit.models.base import Capability, LatentSpaceModel, Losses
from vaekit.models.registry import register_model
from vaekit.priors import CodeTransformer


class CodePriorConfig(TwoStageConfig):
    """An autoregressive transformer prior over a parent's discrete code grid."""

    name: Literal["code-prior"] = "code-prior"
    width: int = Field(128, ge=8)  # transformer width
    layers: int = Field(4, ge=1)  # transformer layers
    heads: int = Field(4, ge=1)  # attention heads (width must divide by them)
    kv_heads: int | None = Field(None, ge=1)  # key/value heads, heads must divide by them (grouped-query
    # attention: a smaller cache, faster coding steps); None: one per head
    dropout: float = Field(0.1, ge=0, lt=1)  # residual dropout in training (a prior over few grids overfits)


@register_model("code-prior", CodePriorConfig)
class CodePrior(LatentSpaceModel):
    """codes (B, H', W') of the frozen parent -> p(codes); samples decoded by the parent."""

    config: CodePriorConfig
    capabilities = frozenset({Capability.SAMPLE})

    def __init__(self, config: CodePriorConfig) -> None:
        super().__init__(config)
        codes = config.codes
        if codes.dtype != "int64":
            raise ConfigError(f"code-prior models discrete codes; the parent's are {codes}")
        if config.width % config.heads:
            raise ConfigError(f"model.width={config.width} must be divisible by model.heads={config.heads}")
        if config.kv_heads is not None and config.heads % config.kv_heads:
            raise ConfigError(f"model.heads={config.heads} must be divisible by model.kv_heads={config.kv_heads}")
        self.prior = CodeTransformer(codes.num_symbols, math.prod(codes.shape), width=config.width,
                                     layers=config.layers, heads=config.heads, dropout=config.dropout,
                                     kv_heads=config.kv_heads)

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        """-log p(codes) per grid (B,) in nats, batch mean, with residual dropout in training; bits_per_grid
        logged beside it."""
        noise = None
        if self.training and self.config.dropout > 0:  # per-example draws: the same masks at any process count
            noise = batch.rand(*self.prior.dropout_shape(batch.size), batch_dim=2)
        nll = -self.prior.log_prob(batch.x, noise)  # (B,)
        return Losses(total=nll.mean(), terms={"nll": nll, "bits_per_grid": nll / math.log(2.0)})

    def sample(self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """The parent's images of code grids drawn from the prior at `temperature`."""
        codes = self.prior.sample(num_samples, generator, temperature=temperature)
        return self.parent.decode_mean(codes.view(num_samples, *self.config.codes.shape))

    def extra_scores(self, x: Tensor) -> dict[str, float]:
        """Test rate of the parent's code grids under the prior (bits per grid), and log2 K per code for reference."""
        nll = torch.cat([-self.prior.log_prob(self.parent.latent_codes(chunk)) for chunk in x.split(100)])
        positions = math.prod(self.config.codes.shape)
        return {"code_bits_per_grid": float(nll.mean()) / math.log(2.0),
                "uniform_bits_per_grid": positions * math.log2(self.config.codes.num_symbols)}
