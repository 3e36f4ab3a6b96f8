"""VQ-VAE (van den Oord, Vinyals, Kavukcuoglu, NeurIPS 2017, arXiv 1711.00937).

x (B, C, H, W) -> conv + residual encoder -> z_e (B, D, H', W') -> one of K codes (the nearest, or
entropy-constrained with model.rate_weight) -> z_q -> decoder -> p(x | z_q), one of vaekit.likelihoods.
The codes form a grid of integers (B, H', W'), H' = H / 2^downsamples. Loss per image (eq. 3):
-log p(x | z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2, the two quantiser terms summed over grid
positions and code dimensions like the reconstruction is summed over pixels; with `ema` the codebook follows
an exponential moving average instead of its loss (App. A.1), updated in the post-step hook over the global
batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from vaekit.batch import Batch
from vaekit.config import CodeSpec, ImageShape, ModelConfig, PositiveFloat
from vaekit.errors import ConfigError
from vaekit.likelihoods import ImageLikelihood, LikelihoodName
from vaekit.models.base import Capability, GenerativeModel, Losses
from vaekit.models.registry import register_model
from vaekit.nn.residual import residual_stack
from vaekit.quantize import GradientMode, VectorQuantizer, perplexity


class VQVAEConfig(ModelConfig):
    """A VQ-VAE on images: a grid of discrete codes."""

    name: Literal["vqvae"] = "vqvae"
    image_shape: ImageShape | None = None  # (C, H, W); None = taken from the data
    channels: int = Field(64, ge=1)  # width of the encoder and decoder
    downsamples: int = Field(2, ge=0)  # stride-2 steps: the code grid is (H / 2^n, W / 2^n)
    residual_cells: int = Field(2, ge=0)  # residual cells after the encoder's and before the decoder's strides
    num_codes: int = Field(512, ge=2)  # K
    code_dim: int = Field(64, ge=1)  # D
    commitment_cost: float = Field(0.25, ge=0)  # beta of eq. 3
    ema: bool = True  # codebook by EMA (App. A.1) instead of the codebook loss
    ema_decay: float = Field(0.99, gt=0, lt=1)  # gamma of the EMA
    gradient: GradientMode = "straight_through"  # or "rotation" (Fifty et al. 2025)
    restart_after: int = Field(100, ge=0)  # restart a code unused (global batch) for more steps than this; 0 = off
    # entropy-constrained choice of codes in training and use: argmin ||z_e - e_k||^2 - lambda ln pi_k, pi the EMA
    # code shares, lambda = rate_weight x the running mean squared distance to the chosen code; 0 = nearest (needs ema)
    rate_weight: float = Field(0.0, ge=0)
    likelihood: LikelihoodName = "gaussian"  # p(x | z_q); gaussian with fixed std = scaled squared error
    gaussian_std: PositiveFloat | None = 0.1  # gaussian: fixed std
    num_bins: int = Field(256, ge=2)  # logistic likelihoods: intensity levels
    num_mixtures: int = Field(5, ge=1)  # logistic_mixture: components per pixel


@register_model("vqvae", VQVAEConfig)
class VQVAE(GenerativeModel):
    """Images -> integer code grids (B, H', W') -> images."""

    config: VQVAEConfig
    capabilities = frozenset({Capability.DISCRETE_CODES})

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config)
        if config.image_shape is None:
            raise ConfigError("model.image_shape is not set (vaekit.train fills it from the data)")
        in_channels, height, width = config.image_shape
        factor = 2**config.downsamples
        if height % factor or width % factor:
            raise ConfigError(f"vqvae with downsamples={config.downsamples} needs image height and width divisible "
                              f"by {factor}, got {height}x{width}")
        self.grid = (height // factor, width // factor)
        if config.rate_weight and not config.ema:
            raise ConfigError("vqvae: model.rate_weight needs model.ema=true (the EMA counts are the codes' rates)")
        self.likelihood = ImageLikelihood(name=config.likelihood, num_bins=config.num_bins,
                                          num_mixtures=config.num_mixtures, gaussian_std=config.gaussian_std)
        ch = config.channels
        down = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        for _ in range(config.downsamples):
            down += [nn.SiLU(), nn.Conv2d(ch, ch, 4, stride=2, padding=1)]
        self.encoder = nn.Sequential(*down, residual_stack(ch, config.residual_cells, squeeze_excitation=False),
                                     nn.SiLU(), nn.Conv2d(ch, config.code_dim, 1))
        up: list[nn.Module] = [nn.Conv2d(config.code_dim, ch, 3, padding=1),
                               residual_stack(ch, config.residual_cells, squeeze_excitation=False)]
        for _ in range(config.downsamples):
            up += [nn.SiLU(), nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*up, nn.SiLU(),
                                     nn.Conv2d(ch, self.likelihood.num_params(in_channels), 3, padding=1))
        self.quantizer = VectorQuantizer(config.num_codes, config.code_dim, ema=config.ema, decay=config.ema_decay,
                                         gradient=config.gradient, restart_after=config.restart_after,
                                         rate_weight=config.rate_weight)
        self._step_vectors: Tensor | None = None  # this step's encoder vectors, for the post-step codebook update
        self._step_indices: Tensor | None = None  # and their codes

    def _encode_vectors(self, x: Tensor) -> Tensor:
        """z_e as rows: (B, C, H, W) -> (B * H' * W', D)."""
        return self.encoder(2.0 * x - 1.0).permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)

    def _decode_vectors(self, vectors: Tensor, batch: int) -> Tensor:
        """Decoder parameters from rows (B * H' * W', D): (B, num_params, H, W)."""
        grid = vectors.view(batch, *self.grid, self.config.code_dim).permute(0, 3, 1, 2)  # (B, D, H', W')
        return self.decoder(grid)

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        """-log p(x | z_q) + codebook + beta * commitment per image (B,), batch mean; perplexity and codes used
        of the global batch."""
        x = batch.x
        vectors = self._encode_vectors(x)  # (B*H'*W', D)
        out = self.quantizer(vectors.float())
        if self.training:  # the step's vectors and assignments, for the post-step update
            self._step_vectors = vectors.detach().view(x.shape[0], -1, self.config.code_dim)  # (B, H'*W', D)
            self._step_indices = out.indices  # (B*H'*W',)
        params = self._decode_vectors(out.quantised.to(vectors.dtype), x.shape[0])
        reconstruction = -self.likelihood.log_likelihood(
            self.likelihood.distribution(params, channels=x.shape[1]), x)  # (B,)
        per_image = (-1, self.grid[0] * self.grid[1])
        codebook = out.codebook_loss.view(per_image).sum(1)  # (B,)
        commitment = out.commitment_loss.view(per_image).sum(1)  # (B,)
        total = (reconstruction + codebook + self.config.commitment_cost * commitment).mean()
        terms = {"reconstruction": reconstruction, "commitment": commitment}
        if not self.config.ema:
            terms["codebook"] = codebook
        with torch.no_grad():
            terms |= self.quantizer.code_statistics(out.indices, batch)
        return Losses(total=total, terms=terms)

    def update_buffers(self, batch: Batch, step: int) -> None:
        """The codebook's post-step update (k-means at the first step, EMA, restarts) from this step's vectors."""
        if self._step_vectors is not None:
            self.quantizer.update_buffers(self._step_vectors, batch, step, self._step_indices)
            self._step_vectors = self._step_indices = None

    def code_spec(self) -> CodeSpec:
        return CodeSpec(shape=self.grid, dtype="int64", num_symbols=self.config.num_codes)

    def latent_vectors(self, x: Tensor) -> Tensor:
        """The encoder's vectors z_e of x, one per grid position in raster order: (B, H' * W', D) float32."""
        return self._encode_vectors(x).float().view(x.shape[0], -1, self.config.code_dim)

    def latent_codes(self, x: Tensor) -> Tensor:
        """The code grid of x, each z_e's code (`VectorQuantizer.assign`: the nearest without a rate weight):
        (B, H', W') int64."""
        return self.quantizer(self.latent_vectors(x).flatten(0, 1)).indices.view(x.shape[0], *self.grid)

    def decode_mean(self, codes: Tensor) -> Tensor:
        """Images E[x | z_q] for code grids (B, H', W'): (B, C, H, W) in [0, 1]."""
        vectors = self.quantizer.lookup(codes.reshape(-1))  # (B*H'*W', D)
        return self.likelihood.mean_image(self.likelihood.distribution(
            self._decode_vectors(vectors, codes.shape[0]), channels=self.config.image_shape[0]))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_mean(self.latent_codes(x))

    def extra_scores(self, x: Tensor) -> dict[str, float]:
        """Codebook health on test inputs x: the share of codes in use and the perplexity of their use."""
        codes = torch.cat([self.latent_codes(chunk) for chunk in x.split(100)])
        counts = torch.bincount(codes.flatten(), minlength=self.config.num_codes).float()
        return {"codes_in_use": float((counts > 0).float().mean()), "code_perplexity": float(perplexity(counts))}
