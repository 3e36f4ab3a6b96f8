"""Learned priors for sampling from a trained auto-encoder's latent space.

`GaussianMixture`: a Gaussian mixture over latent codes (the l-GMM of Achlioptas et al. 2018,
sec. 4; the ex-post density estimation of Ghosh et al. 2020), fitted by scikit-learn's EM and
stored as plain tensors (weights, means, Cholesky factors), never pickled. `select_mixture`
chooses its number of components and covariance type by held-out log-likelihood.
`CodeTransformer`: an autoregressive prior over grids of discrete codes (a VQ-VAE's), a small causal
transformer over raster order (the PixelCNN prior's role in van den Oord et al. 2017, sec. 3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from torch import Tensor, nn

CovarianceType = Literal["full", "diag"]


class GaussianMixture(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, Sigma_k) with Sigma_k = L_k L_k^T; buffers only (fitted, not trained).

    The buffers hold `max_components` slots, fixed at construction, so the state dict's shapes never
    depend on the data: a fit with fewer components leaves the other slots at log-weight -inf (mean
    0, L = I), and a diagonal fit stores each L_k as a diagonal lower-triangular matrix.
    """

    def __init__(self, max_components: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.full((max_components,), -math.log(max_components)))  # (K,)
        self.register_buffer("means", torch.zeros(max_components, dim))  # (K, D)
        self.register_buffer("scale_tril", torch.eye(dim).repeat(max_components, 1, 1))  # (K, D, D)

    @property
    def num_components(self) -> int:
        """Components in use: the slots with a positive weight."""
        return int(torch.isfinite(self.log_weights).sum())

    def fit(self, codes: Tensor, *, max_iter: int, seed: int, reg_covar: float, num_components: int | None = None,
            covariance_type: CovarianceType = "full") -> dict[str, float]:
        """EM fit (scikit-learn) of codes (N, D) into the first `num_components` slots (all if None)."""
        num_components = self.means.shape[0] if num_components is None else num_components
        if num_components > self.means.shape[0]:
            raise ValueError(f"{num_components} components do not fit in {self.means.shape[0]} mixture slots")
        codes_np = _numpy(codes)
        mixture = fit_sklearn_mixture(codes_np, num_components, covariance_type, max_iter=max_iter, seed=seed,
                                      reg_covar=reg_covar)
        covariances = torch.from_numpy(mixture.covariances_)  # full: (n, D, D); diag: (n, D)
        scale_tril = torch.linalg.cholesky(covariances) if covariance_type == "full" else torch.diag_embed(covariances.sqrt())
        self.log_weights.fill_(-math.inf)
        self.log_weights[:num_components] = torch.from_numpy(np.log(mixture.weights_))
        self.means.zero_()
        self.means[:num_components] = torch.from_numpy(mixture.means_)
        self.scale_tril.copy_(torch.eye(self.means.shape[1]))
        self.scale_tril[:num_components] = scale_tril
        return {"converged": float(mixture.converged_), "iterations": float(mixture.n_iter_),
                "train_log_likelihood": float(mixture.score(codes_np))}

    def _distribution(self) -> torch.distributions.MixtureSameFamily:
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=self.log_weights),
            torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril),
        )

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z): (N, D) -> (N,)."""
        return self._distribution().log_prob(z)

    def sample(self, num_samples: int, generator: torch.Generator | None = None, *, temperature: float = 1.0) -> Tensor:
        """(N, D) draws: a component per draw, then mu_k + temperature L_k eps."""
        component = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True, generator=generator)
        noise = temperature * torch.randn(num_samples, self.means.shape[1], generator=generator).to(self.means)
        return self.means[component] + (self.scale_tril[component] @ noise.unsqueeze(-1)).squeeze(-1)


def _numpy(codes: Tensor) -> np.ndarray:
    return codes.detach().double().cpu().numpy()


def fit_sklearn_mixture(codes: np.ndarray, num_components: int, covariance_type: CovarianceType, *, max_iter: int,
                        seed: int, reg_covar: float) -> SklearnGaussianMixture:
    """Scikit-learn EM of a `num_components` mixture on codes (N, D), float64."""
    if codes.shape[0] < num_components:
        raise ValueError(f"{codes.shape[0]} codes cannot fit {num_components} mixture components")
    return SklearnGaussianMixture(n_components=num_components, covariance_type=covariance_type, max_iter=max_iter,
                                  random_state=seed, reg_covar=reg_covar).fit(codes)


def supports(num_codes: int, dim: int, num_components: int, covariance_type: CovarianceType) -> bool:
    """Whether num_codes codes can estimate the mixture: D+1 codes per full covariance, 2 per diagonal one."""
    return num_codes >= num_components * (dim + 1 if covariance_type == "full" else 2)


def num_parameters(dim: int, num_components: int, covariance_type: CovarianceType) -> int:
    """Free parameters: K-1 weights, K D means, K D(D+1)/2 (full) or K D (diag) covariance entries."""
    covariance = dim * (dim + 1) // 2 if covariance_type == "full" else dim
    return num_components - 1 + num_components * (dim + covariance)


@dataclass(frozen=True)
class MixtureChoice:
    """The selected grid point and its mean held-out log-likelihood (nats per code)."""

    num_components: int
    covariance_type: CovarianceType
    held_out_log_likelihood: float


def held_out_split(num_codes: int, held_out_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random (fit, held-out) row indices; at least one row in each part."""
    if num_codes < 2:
        raise ValueError(f"{num_codes} code(s) cannot be split into fit and held-out parts; need at least 2")
    num_held_out = min(max(1, round(held_out_fraction * num_codes)), num_codes - 1)
    order = torch.randperm(num_codes, generator=torch.Generator().manual_seed(seed))
    return order[num_held_out:], order[:num_held_out]


def select_mixture(codes: Tensor, candidates: list[tuple[int, CovarianceType]], *, held_out_fraction: float,
                   max_iter: int, seed: int, reg_covar: float) -> MixtureChoice:
    """Held-out model selection: fit each candidate on a seeded split's fit part, keep the best mean log-likelihood.

    Candidates the fit part cannot support (see `supports`) are skipped; if none is supported,
    the one with the fewest parameters is scored alone.
    """
    fit_rows, held_out_rows = held_out_split(codes.shape[0], held_out_fraction, seed)
    fit_codes, held_out_codes = _numpy(codes[fit_rows]), _numpy(codes[held_out_rows])
    dim = codes.shape[1]
    supported = [c for c in candidates if supports(len(fit_codes), dim, *c)]
    if not supported:
        supported = [min(candidates, key=lambda c: num_parameters(dim, *c))]
    scores = {c: float(fit_sklearn_mixture(fit_codes, *c, max_iter=max_iter, seed=seed, reg_covar=reg_covar)
                       .score(held_out_codes)) for c in supported}
    best = max(scores, key=scores.__getitem__)
    return MixtureChoice(*best, held_out_log_likelihood=scores[best])


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over positions <= i, without biases (a key bias only shifts every score of
    a query, which softmax ignores: its true gradient is 0 and Adam would step on rounding noise).

    kv_heads: key/value heads, each shared by heads / kv_heads consecutive query heads (grouped-query
    attention, Ainslie et al. 2023; 1: multi-query, Shazeer 2019): the cache and its reads shrink by that
    factor, and reading the cache is most of a step on a CPU. kv_heads = heads is plain multi-head attention.
    """

    def __init__(self, width: int, heads: int, kv_heads: int | None = None) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        if width % heads or heads % self.kv_heads:
            raise ValueError(f"width {width}, heads {heads}, kv_heads {self.kv_heads}: heads must divide the width "
                             "and key/value heads the heads")
        depth = width // heads
        self.qkv = nn.Linear(width, width + 2 * self.kv_heads * depth, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def _split(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, W) -> queries (B, heads, T, W / heads), keys and values (B, kv_heads, T, W / heads)."""
        batch, length, width = hidden.shape
        depth = width // self.heads
        q, k, v = self.qkv(hidden).split([width, self.kv_heads * depth, self.kv_heads * depth], -1)
        return tuple(part.view(batch, length, -1, depth).transpose(1, 2) for part in (q, k, v))

    def forward(self, hidden: Tensor) -> Tensor:
        """Every position at once: (B, T, W) -> (B, T, W)."""
        q, k, v = self._split(hidden)
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, heads, T, W / heads)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, W / heads)
        return self.out(attended.transpose(1, 2).flatten(2))

    def step(self, hidden: Tensor, cache: Tensor, position: int) -> Tensor:
        """One position given the keys and values of the earlier ones: hidden (B, 1, W), cache (2, B * kv_heads,
        P * W / heads) filled up to `position` and extended by it -> (B, 1, W). The cache holds the keys as
        (B * kv_heads, W / heads, P) and the values as (B * kv_heads, P, W / heads), and both products of a
        group's queries run over all P positions, the later ones masked: a few rows times whole contiguous
        matrices is the fastest batched product on a CPU (a slice of the earlier positions is copied at every
        step, since bfloat16 products need contiguous batches; SDPA's kernels are slower still)."""
        batch = hidden.shape[0]
        q, k, v = self._split(hidden)  # (B, heads or kv_heads, 1, W / heads)
        depth = q.shape[-1]
        keys = cache[0].view(batch * self.kv_heads, depth, -1)
        values = cache[1].view(batch * self.kv_heads, -1, depth)
        keys[:, :, position], values[:, position] = k.reshape(-1, depth), v.reshape(-1, depth)
        queries = q.reshape(batch * self.kv_heads, self.heads // self.kv_heads, depth)  # a group's heads together
        scores = torch.bmm(queries, keys).float() * depth**-0.5  # (B * kv_heads, heads / kv_heads, P)
        scores[:, :, position + 1:] = float("-inf")
        attended = torch.bmm(scores.softmax(-1).to(values.dtype), values)  # (B * kv_heads, heads / kv_heads, W / heads)
        return self.out(attended.view(batch, 1, -1))


def dropped(values: Tensor, uniform: Tensor | None, rate: float) -> Tensor:
    """Inverted dropout with the caller's uniform noise (same shape): kept / (1 - rate), dropped 0; None: as is."""
    if uniform is None or rate == 0:
        return values
    return values * (uniform >= rate).to(values.dtype) / (1.0 - rate)


class TransformerBlock(nn.Module):
    """Pre-norm block: h + drop(attn(norm(h))), then h + drop(mlp(norm(h))); no biases."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, kv_heads: int | None = None) -> None:
        super().__init__()
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(width, bias=False)
        self.attention = CausalSelfAttention(width, heads, kv_heads)
        self.mlp_norm = nn.LayerNorm(width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False))

    def forward(self, hidden: Tensor, uniform: Tensor | None = None) -> Tensor:
        """hidden (B, T, W); uniform (2, B, T, W): the dropout noise of the two residual branches, or None."""
        hidden = hidden + dropped(self.attention(self.attention_norm(hidden)), None if uniform is None else uniform[0],
                                  self.dropout)
        return hidden + dropped(self.mlp(self.mlp_norm(hidden)), None if uniform is None else uniform[1], self.dropout)

    def step(self, hidden: Tensor, cache: Tensor, position: int) -> Tensor:
        hidden = hidden + self.attention.step(self.attention_norm(hidden), cache, position)
        return hidden + self.mlp(self.mlp_norm(hidden))


class CodeTransformer(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over a code grid in raster order: codes (B, H, W) -> logits (B, H*W, K).

    Tokens are embedded with a learned position embedding and read by pre-norm causal transformer
    blocks; position i sees a start token and c_<i only. `forward` scores all positions at once
    (training: residual dropout from noise the caller draws, so that it can come from the step's
    per-example generator); `step` scores one position from a cache of the earlier ones (sampling
    and coding: no dropout).
    """

    def __init__(self, num_symbols: int, num_positions: int, *, width: int, layers: int, heads: int,
                 dropout: float = 0.0, kv_heads: int | None = None) -> None:
        super().__init__()
        self.num_symbols, self.num_positions, self.heads = num_symbols, num_positions, heads
        self.kv_heads = kv_heads or heads  # key/value heads (see CausalSelfAttention)
        self.embedding = nn.Embedding(num_symbols + 1, width)  # the last index is the start token
        self.position = nn.Parameter(torch.zeros(1, num_positions, width))
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, dropout, kv_heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_symbols)
        nn.init.normal_(self.position, std=0.02)

    def dropout_shape(self, batch: int) -> tuple[int, ...]:
        """The shape of the uniform noise `forward` takes for dropout: (layers, 2, B, P, W)."""
        return (len(self.blocks), 2, batch, self.num_positions, self.position.shape[-1])

    def forward(self, codes: Tensor, dropout_uniform: Tensor | None = None) -> Tensor:
        """Logits of every position given the codes before it: codes (B, ...) -> (B, P, K); dropout_uniform
        (layers, 2, B, P, W) uniform [0, 1) noise for residual dropout (training), None: none."""
        flat = codes.reshape(codes.shape[0], -1)  # (B, P)
        start = flat.new_full((flat.shape[0], 1), self.num_symbols)
        hidden = self.embedding(torch.cat([start, flat[:, :-1]], 1)) + self.position  # (B, P, W): shifted right
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, None if dropout_uniform is None else dropout_uniform[index])
        return self.head(self.norm(hidden))

    def new_cache(self, batch: int) -> Tensor:
        """Empty keys and values for `batch` sequences: (layers, 2, B * kv_heads, P * W / heads), laid out as
        `CausalSelfAttention.step` reads them."""
        return self.position.new_zeros(len(self.blocks), 2, batch * self.kv_heads,
                                       self.num_positions * self.position.shape[-1] // self.heads)

    def step(self, previous: Tensor, position: int, cache: Tensor) -> Tensor:
        """Logits (B, K) of position `position` given the code before it, previous (B,) int64 (ignored at
        position 0, where the start token is read), and the cache of earlier positions (extended in place)."""
        token = previous if position > 0 else torch.full_like(previous, self.num_symbols)
        hidden = self.embedding(token)[:, None] + self.position[:, position: position + 1]  # (B, 1, W)
        for index, block in enumerate(self.blocks):
            hidden = block.step(hidden, cache[index], position)
        return self.head(self.norm(hidden))[:, 0]

    def log_prob(self, codes: Tensor, dropout_uniform: Tensor | None = None) -> Tensor:
        """log p(c) in nats per grid: codes (B, ...) -> (B,); dropout as in `forward`."""
        logits = self(codes, dropout_uniform).float()
        return -F.cross_entropy(logits.transpose(1, 2), codes.reshape(codes.shape[0], -1), reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, *, temperature: float = 1.0
               ) -> Tensor:
        """Codes (N, P) drawn position by position from softmax(logits / temperature)."""
        device = self.position.device
        codes = torch.zeros(num_samples, self.num_positions, dtype=torch.long, device=device)
        cache = self.new_cache(num_samples)
        for position in range(self.num_positions):
            logits = self.step(codes[:, position - 1], position, cache).float() / temperature  # (N, K)
            uniform = torch.rand(num_samples, 1, generator=generator,
                                 device=generator.device if generator is not None else device).to(device)
            cumulative = logits.softmax(-1).cumsum(-1)
            codes[:, position] = (cumulative < uniform * cumulative[:, -1:]).sum(-1).clamp_max(self.num_symbols - 1)
        return codes
