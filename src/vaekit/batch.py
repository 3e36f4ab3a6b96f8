"""A training batch, and the per-sample noise that makes results independent of the process count.

Every random draw of a training step (reparameterisation noise, dynamic binarisation) comes from a
generator seeded by (seed, step) and shared by all processes. A process holding rows
`rank::world_size` of the global batch draws the noise of the whole global batch and keeps its
rows, so one process with batch 2B and two processes with batch B each see the same numbers; and
a resumed run sees the same numbers as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of training step `step`: a pure function of (seed, step)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return generator
