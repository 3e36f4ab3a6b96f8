"""train.precision: `auto` takes bf16 only where the hardware computes it; emulated bf16 is warned of."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

import vaekit
from vaekit.engine import precision
from vaekit.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [False, True])
def test_auto_autocasts_to_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    resolved = precision.resolve_precision("auto", CPU)
    with precision.autocast(resolved, CPU):
        out = torch.nn.Linear(3, 2)(torch.ones(4, 3))
    assert resolved == ("bf16" if native else "fp32")
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_explicit_bf16_is_kept_with_a_warning_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="emulates"):
        assert precision.resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16", CPU) == "bf16"


def test_fp16_is_refused_on_a_cpu_and_fp32_is_never_changed(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        precision.resolve_precision("fp16", CPU)


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64", reason="reads x86 /proc/cpuinfo")
def test_native_bf16_agrees_with_the_kernels_cpu_flags():
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert precision.native_bf16(CPU) == ("avx512_bf16" in flags.split())


@pytest.mark.parametrize("native", [False, True])
def test_run_directory_records_the_precision_auto_resolved_to(tmp_path, monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    run_dir = vaekit.train(tiny_config(tmp_path, "train.precision=auto", "train.steps=5", "train.eval_every=5"),
                           quiet=True)
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["precision"] == ("bf16" if native else "fp32")
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_the_command_line_prints_the_warning_as_one_line(tmp_path, monkeypatch, capsys):
    from vaekit.cli import main

    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert main(["train", f"out_dir={tmp_path}", "train.precision=bf16", "train.steps=2", "train.eval_every=2",
                 "eval.num_images=10", "eval.num_importance_samples=2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "vaekit: warning: train.precision=bf16 on a CPU without bfloat16 instructions" in err
    assert "resolve_precision" not in err  # no source line


def test_auto_on_two_processes_takes_bf16_only_where_both_have_it(tmp_path):
    """Rank 0 has bf16 instructions, rank 1 not: both train in fp32 (rank 0 writes versions.json)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).parent / "precision_worker.py"), str(tmp_path)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "tiny" / "versions.json").read_text())["precision"] == "fp32"
