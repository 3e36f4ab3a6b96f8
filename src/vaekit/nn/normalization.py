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
    `sum_over_processes` given, each process's per-channel mean and variance (one fused pass, fp32)
    are combined over processes into the global batch's (Chan et al. 1979: E[x^2] - E[x]^2 of the
    pooled moments) with one reduction, and the running statistics are updated with the unbiased
    variance, as nn.BatchNorm1d does; otherwise (one process: pass None) it is nn.BatchNorm1d, whose
    fused kernel computes the same statistics faster.
    x: (N, C) -> (N, C).
    """

    def forward(self, x: Tensor, sum_over_processes: SumOverProcesses | None = None) -> Tensor:
        if not self.training or sum_over_processes is None:
            return super().forward(x)
        rows = x.float()  # (N, C)
        local_var, local_mean = torch.var_mean(rows, dim=0, unbiased=False)  # (C,) each, one fused pass
        count = rows.new_tensor(float(rows.shape[0]))
        totals = sum_over_processes(torch.stack([count.expand_as(local_mean), count * local_mean,
                                                 count * (local_var + local_mean.pow(2))]))  # (3, C)
        mean = totals[1] / totals[0]  # (C,) over every process's rows
        variance = (totals[2] / totals[0] - mean.pow(2)).clamp_min(0.0)  # (C,) biased: E[x^2] - E[x]^2
        scale = self.weight * torch.rsqrt(variance + self.eps)
        normalised = torch.addcmul(self.bias - mean * scale, rows, scale)  # x * scale + shift, one fused op
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            total = totals[0, 0]
            unbiased = variance * total / (total - 1).clamp_min(1.0)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        return normalised.to(x.dtype)
