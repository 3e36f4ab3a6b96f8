"""Batch normalisation over the global batch: the same statistics at any process count, on any device.

PyTorch's SyncBatchNorm refuses CPU tensors, so this one reduces its statistics through a summing
function the caller provides (`Batch.all_reduce`, the identity on one process).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

SumOverProcesses = Callable[[Tensor], Tensor]


class GlobalBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d (Ioffe & Szegedy 2015, Alg. 1) whose training statistics span every process's rows.

    Same parameters, buffers and state-dict keys as nn.BatchNorm1d. In training with
    `sum_over_processes` given, mean and (biased) variance are computed in fp32 by two reductions
    over all rows of all processes, and the running statistics are updated with the unbiased
    variance, as nn.BatchNorm1d does; otherwise it is nn.BatchNorm1d.
    x: (N, C) -> (N, C).
    """

    def forward(self, x: Tensor, sum_over_processes: SumOverProcesses | None = None) -> Tensor:
        if not self.training or sum_over_processes is None:
            return super().forward(x)
        rows = x.float()  # (N, C)
        count = sum_over_processes(rows.new_tensor(float(rows.shape[0])))  # () global rows
        mean = sum_over_processes(rows.sum(0)) / count  # (C,)
        centred = rows - mean
        variance = sum_over_processes(centred.pow(2).sum(0)) / count  # (C,) biased, used to normalise
        normalised = centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            unbiased = variance * count / (count - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        return normalised.to(x.dtype)
