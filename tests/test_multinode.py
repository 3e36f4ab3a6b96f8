"""Two "machines" on this host: two torchrun launchers with --nnodes=2 meeting at a c10d rendezvous on
127.0.0.1 (one process each) train `vaekit train` to the parameters of one process with the whole batch."""

from __future__ import annotations

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
