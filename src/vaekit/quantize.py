"""Vector quantisation (van den Oord et al. 2017, arXiv 1711.00937), written once for every model that
quantises: nearest code in blocks, straight-through (or rotation-trick) gradients, the codebook and
commitment losses, and the EMA codebook with k-means initialisation and dead-code restarts.

Notation: encoder vectors z_e (N, D), codebook e (K, D), z_q = e[argmin_k ||z_e - e_k||^2].
Buffers that gradients do not learn (the EMA statistics, the codebook under EMA, restarts, the
k-means initialisation) change only in `VectorQuantizer.update_buffers`, which a model calls from
its post-step hook with the step's batch: counts and sums are summed over processes and every
random choice comes from the batch's step-seeded generator, so every process makes the same change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaekit.batch import Batch

GradientMode = Literal["straight_through", "rotation"]


def nearest_codes(vectors: Tensor, codebook: Tensor, *, code_bias: Tensor | None = None,
                  max_block_bytes: int = 4 * 2**20, codes_per_tile: int = 1024) -> Tensor:
    """argmin_k ||z_e - e_k||^2 + b_k for vectors (N, D), codebook (K, D), an optional bias per code b (K,)
    (default 0: the nearest code) -> indices (N,), int64 (the first of ties).

    ||z_e||^2 does not change the argmin, so a tile of rows x codes scores ||e_k||^2 + b_k - 2 z_e . e_k with
    one matmul into a reused buffer of `max_block_bytes`; each row keeps its running minimum over the
    tiles of codes. Never the whole N x K matrix: with a code dimension of ~64 the matmul is bound by
    writing its scores, so tiles that stay in cache are faster (and a tile of codes is reused by many rows).
    """
    vectors, codebook = vectors.float(), codebook.float()
    code_norms = codebook.pow(2).sum(1)  # (K,)
    if code_bias is not None:
        code_norms = code_norms + code_bias.float()
    codes_per_tile = min(codes_per_tile, len(codebook))
    rows_per_tile = max(1, min(len(vectors), max_block_bytes // (4 * codes_per_tile)))
    scores = vectors.new_empty(rows_per_tile, codes_per_tile)  # one buffer for every tile: no page faults
    indices = torch.empty(len(vectors), dtype=torch.long, device=vectors.device)
    for start in range(0, len(vectors), rows_per_tile):
        rows = vectors[start: start + rows_per_tile]
        best = rows.new_full((len(rows),), float("inf"))
        chosen = torch.zeros(len(rows), dtype=torch.long, device=vectors.device)
        for first in range(0, len(codebook), codes_per_tile):
            codes = codebook[first: first + codes_per_tile]
            tile = torch.addmm(code_norms[first: first + len(codes)], rows, codes.T, alpha=-2.0,
                               out=scores[: len(rows), : len(codes)])  # (rows, codes)
            value, index = tile.min(1)
            better = value < best  # strict: an earlier tile keeps a tie
            best = torch.where(better, value, best)
            chosen = torch.where(better, index + first, chosen)
        indices[start: start + len(rows)] = chosen
    return indices


def rate_constrained_codes(vectors: Tensor, codebook: Tensor, log_probabilities: Tensor, rate_weight: float) -> Tensor:
    """argmin_k ||z_e - e_k||^2 - lambda ln p(k), entropy-constrained VQ (Chou, Lookabaugh & Gray 1989, eq. 9):
    vectors (N, D), codebook (K, D), log_probabilities (N, K) of each code under the entropy coder's model,
    rate_weight lambda (squared distance per nat) -> indices (N,), int64. lambda = 0: the nearest code (as
    `nearest_codes` up to rounding); larger lambda: likelier codes, fewer bits, more distortion."""
    distances = torch.cdist(vectors.double(), codebook.double()).pow(2)  # (N, K); N is one grid position's batch
    return (distances - rate_weight * log_probabilities.double()).argmin(1)


def straight_through(vectors: Tensor, quantised: Tensor) -> Tensor:
    """z_e + sg[z_q - z_e]: the value of z_q, the gradient of the identity (van den Oord et al. 2017, eq. 3)."""
    return vectors + (quantised - vectors).detach()


def rotation_trick(vectors: Tensor, quantised: Tensor, eps: float = 1e-6) -> Tensor:
    """sg[|z_q| / |z_e| R] z_e, R the rotation taking z_e's direction to z_q's (Fifty et al. 2025, eq. 4 and
    Alg. 1, as two Householder reflections): the value of z_q; the gradient rotated and scaled with it."""
    e_norm = vectors.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = quantised.norm(dim=-1, keepdim=True).clamp_min(eps)
    u, v = (vectors / e_norm).detach(), (quantised / q_norm).detach()
    w = F.normalize(u + v, dim=-1, eps=eps).detach()
    rotated = vectors - 2 * w * (w * vectors).sum(-1, keepdim=True) + 2 * v * (u * vectors).sum(-1, keepdim=True)
    return (q_norm / e_norm).detach() * rotated


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code histogram counts (K,): from 1 (one code) to K (uniform use)."""
    probabilities = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum())


def laplace_smoothed(cluster_size: Tensor, eps: float) -> Tensor:
    """(N_k + eps) / (n + K eps) * n: counts that are never 0 (Sonnet's VectorQuantizerEMA)."""
    total = cluster_size.sum()
    return (cluster_size + eps) / (total + cluster_size.numel() * eps) * total


def assignment_statistics(vectors: Tensor, indices: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """Per code: how many vectors chose it (K,) and their sum (K, D), without an N x K one-hot matrix."""
    counts = torch.bincount(indices, minlength=num_codes).to(vectors.dtype)
    sums = vectors.new_zeros(num_codes, vectors.shape[1]).index_add_(0, indices, vectors)
    return counts, sums


def kmeans(vectors: Tensor, num_codes: int, *, iterations: int, generator: torch.Generator | None) -> Tensor:
    """Lloyd's k-means of vectors (N, D) into num_codes centres (K, D), started at random rows.

    Deterministic given the generator and the rows; an empty cluster keeps its centre.
    """
    device = generator.device if generator is not None else vectors.device
    picks = torch.randint(len(vectors), (num_codes,), generator=generator, device=device).to(vectors.device)
    centres = vectors[picks].clone()
    for _ in range(iterations):
        counts, sums = assignment_statistics(vectors, nearest_codes(vectors, centres), num_codes)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], centres)
    return centres


@dataclass(frozen=True)
class Quantised:
    """The quantiser's output for vectors (N, D)."""

    quantised: Tensor  # (N, D) z_q with the chosen gradient path to z_e
    indices: Tensor  # (N,) int64 code of each vector
    codebook_loss: Tensor  # (N,) ||sg[z_e] - z_q||^2 per vector (0 under EMA: the codebook is not learned by it)
    commitment_loss: Tensor  # (N,) ||z_e - sg[z_q]||^2 per vector (times beta in the model's loss)


class VectorQuantizer(nn.Module):
    """K codes of dimension D; the codebook learned by its loss or by an EMA (paper App. A.1).

    Losses per vector are squared distances summed over the code dimension; a model sums them over
    the positions of an image, like its reconstruction term, and weighs the commitment by beta.
    """

    def __init__(self, num_codes: int, code_dim: int, *, ema: bool = True, decay: float = 0.99, eps: float = 1e-5,
                 gradient: GradientMode = "straight_through", kmeans_iterations: int = 10,
                 restart_after: int = 0, rate_weight: float = 0.0) -> None:
        super().__init__()
        if rate_weight and not ema:
            raise ValueError("rate_weight needs the EMA codebook (its counts are the codes' probabilities)")
        self.num_codes, self.code_dim = num_codes, code_dim
        self.ema, self.decay, self.eps, self.gradient = ema, decay, eps, gradient
        self.kmeans_iterations, self.restart_after, self.rate_weight = kmeans_iterations, restart_after, rate_weight
        codebook = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)  # (K, D)
        if ema:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.zeros(num_codes))  # (K,) EMA of assignment counts
            self.register_buffer("embed_sum", codebook.clone())  # (K, D) EMA of assigned vector sums
        else:
            self.codebook = nn.Parameter(codebook)
        # (K,) the last step with an assignment in the global batch (-1: none yet), and of the code's (re)start
        self.register_buffer("last_used", torch.full((num_codes,), -1, dtype=torch.long))
        self.register_buffer("last_restart", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))  # k-means done
        if rate_weight:  # EMA (decay) of the global batch's mean squared distance from z_e to its code: lambda's unit
            self.register_buffer("mean_distance", torch.zeros(()))

    def code_bias(self) -> Tensor | None:
        """Per code (K,): -lambda ln pi_k, pi_k the EMA share of assignments (Laplace smoothed), lambda = rate_weight
        x `mean_distance` (entropy-constrained VQ, Chou, Lookabaugh & Gray 1989, eq. 9, with the codes' unigram
        rates); None without a rate weight or before the first statistics."""
        if not self.rate_weight or not bool(self.initialised):
            return None
        smoothed = laplace_smoothed(self.cluster_size, self.eps)
        return -self.rate_weight * self.mean_distance * torch.log(smoothed / smoothed.sum())

    def assign(self, vectors: Tensor) -> Tensor:
        """The code of each of vectors (N, D) -> (N,) int64: the nearest, or with a rate weight the one of least
        squared distance + lambda x its unigram information (`code_bias`); the same rule in training and in use."""
        return nearest_codes(vectors.detach(), self.codebook.detach(), code_bias=self.code_bias())

    def forward(self, vectors: Tensor) -> Quantised:
        """Quantise vectors (N, D): their codes (`assign`), their losses, z_q with the configured gradient."""
        indices = self.assign(vectors)  # (N,)
        codes = self.codebook[indices].to(vectors.dtype)  # (N, D)
        commitment = (vectors - codes.detach()).pow(2).sum(-1)
        codebook_loss = torch.zeros_like(commitment) if self.ema else (vectors.detach() - codes).pow(2).sum(-1)
        mix = straight_through if self.gradient == "straight_through" else rotation_trick
        return Quantised(mix(vectors, codes), indices, codebook_loss, commitment)

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors of integer indices (...,) -> (..., D)."""
        return self.codebook[indices]

    @torch.no_grad()
    def update_buffers(self, vectors: Tensor, batch: Batch, step: int = 0, indices: Tensor | None = None) -> None:
        """The post-step update from this process's encoder vectors (B, ..., D) of the step, B = batch rows
        (so that gathering keeps each example's vectors together, in the global batch's order), and
        their nearest codes (B*...,) when the forward pass found them against the same codebook.

        First call: k-means initialisation on the global batch's vectors (under EMA the counts set to
        those of its clusters). Then, under EMA: N_k <- g N_k + (1-g) n_k, m_k <- g m_k + (1-g)
        sum_{z_e -> k} z_e, e_k = m_k / smoothed N_k (paper App. A.1, eqs. 6-8; Laplace smoothing as
        Sonnet). A code without an assignment in the global batch for more than `restart_after` steps
        restarts at a random vector of the global batch (a dead code costs bits and buys nothing). With a
        rate weight, `mean_distance` follows the global batch's mean ||z_e - e_k||^2 by the same EMA.
        """
        per_example = vectors.detach().float().reshape(vectors.shape[0], -1, self.code_dim)  # (B, P, D)
        vectors = per_example.reshape(-1, self.code_dim)  # (B*P, D)
        first = not bool(self.initialised)
        if first:
            self._set_codebook(kmeans(self._gathered(per_example, batch), self.num_codes,
                                      iterations=self.kmeans_iterations, generator=batch.generator))
            self.initialised.fill_(True)
            self.last_restart.fill_(step)
        if first or indices is None:
            indices = self.assign(vectors)
        local_counts, local_sums = assignment_statistics(vectors, indices.reshape(-1), self.num_codes)
        counts = batch.all_reduce(local_counts)  # (K,) over the global batch
        if self.rate_weight:  # before the codebook moves: the distances the step's assignments had
            distance = batch.all_reduce((vectors - self.codebook[indices.reshape(-1)]).pow(2).sum()) / counts.sum()
            self.mean_distance.copy_(distance if first else torch.lerp(self.mean_distance, distance, 1.0 - self.decay))
        self.last_used[counts > 0] = step
        if self.ema and first:  # the counts of the k-means clusters; the centres stay as they are
            self.cluster_size.copy_(counts)
            self.embed_sum.copy_(self.codebook * laplace_smoothed(self.cluster_size, self.eps)[:, None])
        elif self.ema:
            self.cluster_size.lerp_(counts, 1.0 - self.decay)
            self.embed_sum.lerp_(batch.all_reduce(local_sums), 1.0 - self.decay)
            self.codebook.copy_(self.embed_sum / laplace_smoothed(self.cluster_size, self.eps)[:, None])
        if self.restart_after > 0:
            self._restart_dead_codes(per_example, batch, step)

    def _gathered(self, per_example: Tensor, batch: Batch) -> Tensor:
        """The global batch's vectors (W*B*P, D) in global order, from this process's (B, P, D)."""
        return batch.all_gather(per_example).reshape(-1, self.code_dim)

    def _restart_dead_codes(self, per_example: Tensor, batch: Batch, step: int) -> None:
        """Restart codes unused for more than restart_after steps at random vectors of the global batch (gathered
        only then: every process holds the same buffers, so all decide alike)."""
        dead = step - torch.maximum(self.last_used, self.last_restart) > self.restart_after  # (K,)
        if not bool(dead.any()):
            return
        vectors, generator = self._gathered(per_example, batch), batch.generator
        device = generator.device if generator is not None else vectors.device
        picks = torch.randint(len(vectors), (self.num_codes,), generator=generator, device=device).to(vectors.device)
        self.last_restart[dead] = step  # another restart_after steps to be chosen
        if self.ema:
            self.cluster_size[dead] = self.cluster_size.sum() / self.num_codes
        self._set_codebook(torch.where(dead[:, None], vectors[picks], self.codebook.float()))

    def _set_codebook(self, codebook: Tensor) -> None:
        """Replace the codes (and, under EMA, the sums whose means they are)."""
        self.codebook.data.copy_(codebook)
        if self.ema:
            if not bool(self.cluster_size.sum() > 0):  # before any statistics: one vector per code
                self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(codebook * laplace_smoothed(self.cluster_size, self.eps)[:, None])

    def code_statistics(self, indices: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Logged scalars over the global batch: perplexity and the share of codes used in it."""
        counts = batch.all_reduce(torch.bincount(indices.flatten(), minlength=self.num_codes).float())
        return {"perplexity": perplexity(counts), "codes_used": (counts > 0).float().mean()}

