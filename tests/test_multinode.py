"""Two "machines" on this host: two torchrun launchers with --nnodes=2 meeting at a c10d rendezvous on
127.0.0.1 (one process each) train `vaekit train` to the parameters of one process with the whole batch."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from distributed_cases import case_config
from safetensors.torch import load_file
from test_distributed import ATOL

import vaekit
from vaekit.engine.checkpoint import read_state


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_at_a_c10d_rendezvous_reach_the_one_process_parameters(tmp_path):
    one = vaekit.train(case_config("vae", tmp_path, "one"), quiet=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=vaekit-test",
                "-m", "vaekit", "train", "--config", str(one / "config.yaml"), "name=two", "--quiet"]
    nodes = [subprocess.Popen(launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    a = load_file(vaekit.find_checkpoint(one) / "model.safetensors")
    b = load_file(vaekit.find_checkpoint(Path(tmp_path) / "two") / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=ATOL, msg=key)
    states = [read_state(vaekit.find_checkpoint(run)) for run in (one, Path(tmp_path) / "two")]
    assert [state["extra"]["world_size"] for state in states] == [1, 2]  # one group of 2, not 2 lone processes


def test_a_run_checkpointed_by_one_process_resumes_on_two_like_an_uninterrupted_run(tmp_path):
    """The global batch, its order and every random draw follow from (seed, step), so the process count may change
    at a resume: 1 process to step 3, then 2 processes to step 6, equal 1 process to step 6."""
    config = case_config("vae", tmp_path, "whole")
    whole = vaekit.train(config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every": 3})}),
                         quiet=True)
    first = Path(tmp_path) / "resumed"
    shutil.copytree(whole, first)
    shutil.rmtree(first / "checkpoints" / "step-6")  # as if the run had been stopped after step 3
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vaekit",
               "train", "--config", str(whole / "config.yaml"), "name=resumed", "--resume", "--quiet"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = read_state(vaekit.find_checkpoint(first))
    assert (state["step"], state["extra"]["world_size"]) == (6, 2)
    a = load_file(vaekit.find_checkpoint(whole) / "model.safetensors")
    b = load_file(vaekit.find_checkpoint(first) / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=ATOL, msg=key)
