"""Mixed precision: the autocast dtype a run trains under (`train.precision`), resolved once for its device.

`auto` takes bfloat16 only where the device computes it in hardware: a CUDA GPU that supports it, or a CPU
with bfloat16 instructions (AVX512-BF16, which every AMX CPU also has, on x86; the BF16 extension on Arm).
On other CPUs (AVX2-only x86, most laptops) PyTorch emulates bfloat16 and a matrix product runs tens of
times slower than in float32 (benchmarks/precision.py measures it), so `auto` trains in float32 there and an
explicit `bf16` is honoured with a warning.
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from typing import Literal

import torch

from vaekit.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[Precision, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware (so bf16 autocast is faster than float32 there)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return torch.cpu._is_avx512_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: Precision | Literal["auto"], device: torch.device,
                      setting: str = "train.precision") -> Precision:
    """The dtype to compute in on `device`: `auto` resolved, `fp16` refused on a CPU, emulated bf16 warned of
    (`setting` names the option in messages)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"{setting}=fp16 needs a GPU; use bf16 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        warnings.warn(f"{setting}=bf16 on a CPU without bfloat16 instructions: PyTorch emulates them, many "
                      f"times slower than fp32 (8-22x per training step measured); {setting}=auto picks fp32 on such a CPU",
                      UserWarning, stacklevel=2)
    return precision


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])
