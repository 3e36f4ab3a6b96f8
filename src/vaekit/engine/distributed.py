"""Process-group set-up for torchrun: gloo on CPU, NCCL on GPU; rank 0 writes. And the share of an
evaluation each process computes (`Shard`), gathered so that every process gets the 1-process numbers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from vaekit.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's share of an evaluation: items rank, rank + W, ... of every set it scores (as a
    training batch's rows), gathered back into global order on every process.

    On one process (the default) every method is the identity and torch.distributed is never used.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | str = "cpu"  # where the collectives run: the CPU for gloo, this process's GPU for NCCL

    def indices(self, count: int) -> range:
        """The global indices of this process's items among `count`: rank::world_size."""
        return range(self.rank, count, self.world_size)

    def map_rows(self, fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
        """fn(rows, their global indices) over this process's rows of x, `chunk` rows at a time; the per-row
        results (rows, ...) of every process gathered in global order: (N, ...)."""
        indices = torch.arange(self.rank, len(x), self.world_size)
        if not len(indices):
            raise ValueError(f"{len(x)} rows cannot be shared among {self.world_size} processes: "
                             "score at least one row per process")
        own = x[self.rank :: self.world_size].contiguous()  # x itself on one process
        return self.gather(torch.cat([fn(rows, keys) for rows, keys in zip(own.split(chunk), indices.split(chunk))]),
                           len(x))

    def gather(self, rows: Tensor, count: int) -> Tensor:
        """Each process's rows (its `indices(count)`, in order) -> all `count` rows in global order, everywhere."""
        if self.world_size == 1:
            return rows
        most = -(-count // self.world_size)
        padded = rows.new_zeros(most, *rows.shape[1:], device=self.device)  # all_gather needs equal shapes
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        # row j of rank r is global row j*W + r; the padding lands at global rows >= count
        return torch.stack(parts, 1).flatten(0, 1)[:count].to(rows.device)  # (most, W, ...) -> (count, ...)

    def sum(self, value: Tensor) -> Tensor:
        """Elementwise sum over processes: the whole of parts that are zero outside each process's share."""
        return self._all_reduce(value, dist.ReduceOp.SUM)

    def maximum(self, value: Tensor) -> Tensor:
        """Elementwise maximum over processes."""
        return self._all_reduce(value, dist.ReduceOp.MAX)

    def _all_reduce(self, value: Tensor, op: dist.ReduceOp) -> Tensor:
        if self.world_size == 1:
            return value
        reduced = value.to(self.device, copy=True)
        dist.all_reduce(reduced, op=op)
        return reduced.to(value.device)

    def own_file(self, path: Path | None) -> Path | None:
        """Where this process keeps the resumable state of its share: `path` on one process, else
        <stem>.rank<r>-of-<W><suffix> beside it (so a resume needs the same process count)."""
        if path is None or self.world_size == 1:
            return path
        return path.with_name(f"{path.stem}.rank{self.rank}-of-{self.world_size}{path.suffix}")


ONE_PROCESS = Shard()  # the whole evaluation in this process


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def shard(self) -> Shard:
        """This process's share of an evaluation."""
        return Shard(rank=self.rank, world_size=self.world_size, device=self.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> this process's GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and (not torch.cuda.is_available() or device.index >= torch.cuda.device_count()):
        raise ConfigError(f"train.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "use train.device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name}: MPS is not available here; use train.device=cpu or auto")
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
