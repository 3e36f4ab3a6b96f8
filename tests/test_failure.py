"""A process killed during distributed training ends the run on every process within a bounded time, names the
failed rank, and leaves the last complete checkpoint loadable."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed_cases import case_config

import vaekit

BOUND_SECONDS = 60


def _worker_with_rank(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker process whose environment says RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
def _train_command(template: Path, *launch: str) -> list[str]:
    """torchrun with `launch` options running a long `vaekit train` of the template's config, checkpoints every 5 steps."""
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vaekit", "train", "--config",
            str(template / "config.yaml"), "name=killed", "train.steps=100000", "train.checkpoint_every=5",
            "train.eval_every=100000", "--quiet"]


def _kill_rank_after_a_checkpoint(launchers: list[subprocess.Popen], run_dir: Path, rank: int) -> list[float]:
    """SIGKILL the worker of `rank` once a checkpoint exists; seconds until each launcher ended."""
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("step-*/state.json")):
        assert all(p.poll() is None for p in launchers) and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    worker = next(pid for p in launchers if (pid := _worker_with_rank(p.pid, rank)) is not None)
    os.kill(worker, signal.SIGKILL)
    killed_at, ended = time.monotonic(), []
    for launcher in launchers:
        launcher.wait(timeout=BOUND_SECONDS)
        ended.append(time.monotonic() - killed_at)
    return ended


@pytest.fixture
def template(tmp_path) -> Path:
    """A 1-step run of the tiny VAE case, whose config.yaml the distributed runs start from."""
    return vaekit.train(case_config("vae", tmp_path, "template"), quiet=True)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers through /proc")
@pytest.mark.parametrize("nodes", [1, 2])
def test_killing_one_rank_ends_the_run_everywhere_within_the_bound_and_keeps_the_last_checkpoint(template, nodes):
    """One machine with 2 processes, or two "machines" (c10d rendezvous on 127.0.0.1) with one each."""
    if nodes == 1:
        launches = [["--standalone", "--nproc-per-node=2"]]
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        launches = 2 * [["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                         f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=failure-test"]]
    launchers = [subprocess.Popen(_train_command(template, *launch), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True) for launch in launches]
    try:
        ended = _kill_rank_after_a_checkpoint(launchers, template.parent / "killed", rank=1)
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
    assert max(ended) < BOUND_SECONDS and all(p.returncode != 0 for p in launchers)
    errors = "".join(p.stderr.read() for p in launchers)
    assert re.search(r"rank\s*:\s*1 ", errors) and "Signal 9 (SIGKILL)" in errors, errors[-3000:]  # names rank 1
    model = vaekit.load(template.parent / "killed")  # the newest complete checkpoint
    assert model.run_config.name == "killed"
