"""A training batch, and the per-sample noise that makes results independent of the process count.

Every random draw of a training step (reparameterisation noise, dynamic binarisation) comes from a
generator seeded by (seed, step) and shared by all processes. A process holding rows
`rank::world_size` of the global batch draws the noise of the whole global batch and keeps its
rows, so one process with batch 2B and two processes with batch B each see the same numbers; and
a resumed run sees the same numbers as an uninterrupted one.

Global-batch terms (a kernel MMD U-statistic, free-bits batch means, normalisation statistics) are
computed over the whole global batch through `Batch.all_gather` / `Batch.all_reduce`, the identity
on one process. Gradient rule: DDP averages parameter gradients over the W processes, and every
process computes the same global term, so the gradient reaching a process's own rows through
`all_gather` is multiplied by W; `all_reduce` sums gradients over processes in its backward. Either
way W processes with batch B get the gradients of one process with batch W*B.

Evaluation draws (importance sampling) are keyed by (seed, example index) instead (`ExampleNoise`):
each example has its own generator, so its draws do not depend on the chunk or the process that
scores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """One process's share of a global batch."""

    x: Tensor  # (B, C, H, W) this process's rows of the global batch
    generator: torch.Generator | None = None  # step-seeded, identical on every process
    rank: int = 0  # this process holds rows rank::world_size of the global batch
    world_size: int = 1

    @staticmethod
    def of(x: Tensor, generator: torch.Generator | None = None) -> Batch:
        """A single-process batch (Python API and evaluation)."""
        return Batch(x=x, generator=generator)

    @property
    def size(self) -> int:
        return self.x.shape[0]

    @property
    def global_size(self) -> int:
        """Rows in the global batch (all processes)."""
        return self.x.shape[0] * self.world_size

    def all_gather(self, rows: Tensor) -> Tensor:
        """This process's rows (B, ...) -> the global batch's rows (W*B, ...) in global order.

        Only for terms every process computes identically: the gradient of the gathered tensor
        reaches this process's own rows, multiplied by W (see the module docstring).
        """
        if self.world_size == 1:
            return rows
        return _GatherRows.apply(rows, self.rank, self.world_size)

    def all_reduce(self, value: Tensor) -> Tensor:
        """Sum of `value` over processes (differentiable: the backward sums gradients too)."""
        if self.world_size == 1:
            return value
        return _SumOverProcesses.apply(value)

    def global_mean(self, per_sample: Tensor) -> Tensor:
        """Mean over the global batch of a per-sample tensor (B, ...) -> (...)."""
        return self.all_reduce(per_sample.sum(0)) / self.global_size

    def randn(self, *shape: int, batch_dim: int = 0) -> Tensor:
        """Standard normal noise of `shape`, whose `batch_dim` indexes this process's samples."""
        return self._draw(torch.randn, shape, batch_dim)

    def rand(self, *shape: int, batch_dim: int = 0) -> Tensor:
        """Uniform [0, 1) noise of `shape`, whose `batch_dim` indexes this process's samples."""
        return self._draw(torch.rand, shape, batch_dim)

    def _draw(self, sampler, shape: tuple[int, ...], batch_dim: int) -> Tensor:
        if self.generator is None:
            return sampler(shape, device=self.x.device)
        global_shape = list(shape)
        global_shape[batch_dim] *= self.world_size
        noise = sampler(global_shape, generator=self.generator, device=self.generator.device)
        if self.world_size > 1:
            rows = torch.arange(self.rank, global_shape[batch_dim], self.world_size)
            noise = noise.index_select(batch_dim, rows.to(noise.device))
        return noise.to(self.x.device)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 into global row order; backward: W times the gradient of the own rows."""

    @staticmethod
    def forward(ctx, rows: Tensor, rank: int, world_size: int) -> Tensor:
        parts = [torch.empty_like(rows) for _ in range(world_size)]
        dist.all_gather(parts, rows.contiguous())
        ctx.rank, ctx.world_size = rank, world_size
        # local row i of rank r is global row i*W + r (rows rank::world_size)
        return torch.stack(parts, dim=1).flatten(0, 1)  # (B, W, ...) -> (W*B, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        own = grad.unflatten(0, (-1, ctx.world_size))[:, ctx.rank]  # (B, ...)
        return ctx.world_size * own, None, None


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) whose backward all-reduces the gradient (each input feeds every process's sum)."""

    @staticmethod
    def forward(ctx, value: Tensor) -> Tensor:
        total = value.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of training step `step`: a pure function of (seed, step)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return generator


def example_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of example `index` under `seed`: seeded from a hash of (seed, index), a pure function of both."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") >> 1)  # 63 bits
    return generator


@dataclass(frozen=True)
class ExampleNoise:
    """Noise keyed by (seed, example index): each example draws from its own generator, so its draws do not
    depend on the chunk, its position in it or the process that holds it (evaluation's importance sampling)."""

    generators: tuple[torch.Generator, ...]  # one per example, in batch order

    @staticmethod
    def of(seed: int, indices: Iterable[int], device: torch.device | str = "cpu") -> ExampleNoise:
        """The generators of the examples with these global indices."""
        return ExampleNoise(tuple(example_generator(seed, index, device) for index in indices))

    def randn(self, *shape: int, batch_dim: int = 0) -> Tensor:
        """Standard normal noise of `shape` whose `batch_dim` indexes the examples, each from its own generator."""
        if shape[batch_dim] != len(self.generators):
            raise ValueError(f"noise of shape {shape} for {len(self.generators)} examples along dim {batch_dim}")
        per_example = shape[:batch_dim] + shape[batch_dim + 1 :]
        return torch.stack([torch.randn(per_example, generator=g, device=g.device) for g in self.generators], batch_dim)


Noise = torch.Generator | ExampleNoise  # one stream for the whole batch, or one per example


def standard_normal(shape: tuple[int, ...], noise: Noise | None, *, batch_dim: int, device: torch.device) -> Tensor:
    """N(0, I) draws of `shape` on `device`: from one generator's stream, from each example's own (`batch_dim`
    indexes the examples), or from torch's global generator (None)."""
    if isinstance(noise, ExampleNoise):
        drawn = noise.randn(*shape, batch_dim=batch_dim)
    else:
        drawn = torch.randn(shape, generator=noise, device=noise.device if noise is not None else device)
    return drawn.to(device)
