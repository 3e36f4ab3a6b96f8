"""Kill campaign (slow): SIGKILL at random moments of a short digits training, each kill followed by `--resume` from
the newest complete checkpoint; in the end the weights, optimiser state and weight averages are bit-identical to an
uninterrupted run's, and no staging left-over of a killed write remains.

A checkpoint is written every step (and the one before the last two deleted), so most of a life is spent on
checkpoints and many kills land inside a write or a deletion: a staging folder `checkpoints/.step-N.*.vaekit-tmp`
exists at the moment of the kill. One kill in five is timed within the start-up instead (imports, the checks of the
run directory, removing the last kill's left-overs, restoring the checkpoint); where each kill landed is told by what
it left. In the end the checkpoints folder holds
the last two checkpoints and nothing else (a kill while deleting an old one once left a `step-N` folder missing its
state.json, which nothing removed). With VAEKIT_CRASH_CAMPAIGN_JSON=FILE the counts are written to FILE:

    VAEKIT_CRASH_CAMPAIGN_JSON=benchmarks/results/crash_campaign.json OMP_NUM_THREADS=1 nice -n 10 \\
        python -m pytest -m slow tests/test_crash_campaign.py
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit.config import load_config
from vaekit.engine import checkpoint as checkpoint_module
from vaekit.engine.checkpoint import list_checkpoints, save_checkpoint
from vaekit.engine.rundir import remove_interrupted_writes
from vaekit.io import TEMP_SUFFIX, atomic_write_json

KILLS = 50
STEPS = 600
OVERRIDES = ["model.hidden_dims=[64]", "model.latent_dim=4", f"train.steps={STEPS}", "train.batch_size=32",
             "train.checkpoint_every=1", "train.eval_every=100000", "train.log_every=10", "train.ema_decay=0.9",
             "train.num_threads=1", "eval.num_importance_samples=20", "eval.num_images=40", "eval.num_grid_images=16"]
WINDOW_SECONDS = 0.6  # a training-time kill comes this long at most after the life's first new checkpoint
LIFE_TIMEOUT = 300


def _launch(out: Path, *, resume: bool, log: Path) -> subprocess.Popen:
    """`python -m vaekit train` of the campaign's config, resuming the run directory if asked."""
    command = [sys.executable, "-m", "vaekit", "train", "--config", "digits-vae", *OVERRIDES, f"out_dir={out}",
               "name=killed", "--quiet", *(["--resume"] if resume else [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _newest_step(run: Path) -> int:
    checkpoints = list_checkpoints(run / "checkpoints")
    return int(checkpoints[-1].name.split("-")[1]) if checkpoints else -1


def _kill_at_a_random_moment(process: subprocess.Popen, run: Path, rng: random.Random, startup: float | None) -> str:
    """SIGKILL `process` during its start-up (one time in five, once `startup` is known) or a random moment after
    its first new checkpoint; where the kill landed (see `_killed`)."""
    launched, before = time.monotonic(), _newest_step(run)
    if startup is not None and rng.random() < 0.2:
        time.sleep(rng.uniform(0, startup))
        return _killed(process, run, "start-up")
    while _newest_step(run) == before:
        assert process.poll() is None, "the training ended before its first new checkpoint"
        assert time.monotonic() - launched < LIFE_TIMEOUT, "no new checkpoint"
        time.sleep(0.005)
    time.sleep(rng.uniform(0, WINDOW_SECONDS))
    return _killed(process, run, "training")


def _killed(process: subprocess.Popen, run: Path, moment: str) -> str:
    """SIGKILL `process` now; "checkpoint write" if it leaves the staging folder of a newer checkpoint than the newest,
    "checkpoint deletion" if one of an older checkpoint being deleted, "other write" if another temporary file,
    else `moment`."""
    assert process.poll() is None, "the training ended before it was killed; raise STEPS"
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    staged = [int(p.name.split(".")[1].split("-")[1]) for p in (run / "checkpoints").glob(f".step-*{TEMP_SUFFIX}")]
    if staged:
        return "checkpoint write" if max(staged) > _newest_step(run) else "checkpoint deletion"
    if list(run.rglob(f"*{TEMP_SUFFIX}")):
        return "other write"
    return moment


def _tensor_files(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(checkpoint / name) for name in ("model.safetensors", "optimizer.safetensors",
                                                            "ema.safetensors")}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_fifty_kills_at_random_moments_resume_to_the_bit_identical_weights_without_leftovers(tmp_path):
    started, rng = time.monotonic(), random.Random(0)
    run, log = tmp_path / "killed", tmp_path / "life.log"
    startup, moments = None, {}
    for _ in range(KILLS):
        resume = run.is_dir() and any(run.iterdir())  # a kill before the run directory was made: start it afresh
        launched = time.monotonic()
        process = _launch(tmp_path, resume=resume, log=log)
        moment = _kill_at_a_random_moment(process, run, rng, startup)
        startup = startup or time.monotonic() - launched  # the first life's, up to its kill after a checkpoint
        moments[moment] = moments.get(moment, 0) + 1
    killed_at = _newest_step(run)
    final = _launch(tmp_path, resume=True, log=log)
    assert final.wait(timeout=LIFE_TIMEOUT) == 0, log.read_text()[-3000:]
    reference = vaekit.train(load_config("digits-vae", [*OVERRIDES, f"out_dir={tmp_path}", "name=reference"]),
                             quiet=True)
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob(f"*{TEMP_SUFFIX}"))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())  # keep_checkpoints=2: the last two, nothing else
    resumed, uninterrupted = (_tensor_files(r / "checkpoints" / f"step-{STEPS}") for r in (run, reference))
    identical = all(resumed[f].keys() == uninterrupted[f].keys()
                    and all(torch.equal(resumed[f][k], uninterrupted[f][k]) for k in resumed[f]) for f in resumed)
    counts = {"kills": KILLS, "kills_during_checkpoint_write": moments.get("checkpoint write", 0),
              "kills_during_other_write": moments.get("other write", 0),
              "kills_during_checkpoint_deletion": moments.get("checkpoint deletion", 0),
              "kills_during_start_up": moments.get("start-up", 0),
              "kills_during_training_outside_writes": moments.get("training", 0), "steps": STEPS,
              "newest_checkpoint_at_the_last_kill": killed_at, "final_bit_identical": identical,
              "leftovers_after_the_final_run": leftovers, "checkpoint_folders_after_the_final_run": kept,
              "seconds": round(time.monotonic() - started),
              "startup_seconds": round(startup, 1), "loadavg": os.getloadavg()}
    if os.environ.get("VAEKIT_CRASH_CAMPAIGN_JSON"):
        atomic_write_json(os.environ["VAEKIT_CRASH_CAMPAIGN_JSON"], counts)
    assert identical and not leftovers and kept == [f"step-{STEPS - 1}", f"step-{STEPS}"], counts
    assert 0 < killed_at < STEPS  # the kills spread over the training, which the last life finished


class _Killed(BaseException):
    """Stands for SIGKILL inside a deletion."""


def test_a_kill_while_an_old_checkpoint_is_deleted_leaves_only_what_the_next_start_removes(tmp_path, monkeypatch):
    """Found by the campaign: a kill inside the deletion of a checkpoint beyond keep_checkpoints left a `step-N`
    folder without its state.json, which no later start or save removed (it is not a complete checkpoint)."""
    model, folder = torch.nn.Linear(2, 2), tmp_path / "checkpoints"
    save_checkpoint(folder, step=1, model=model, model_name="vae", config={"model": {"name": "vae"}})

    def killed_after_the_first_file(path, *args, **kwargs):
        (Path(path) / "state.json").unlink()
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.shutil, "rmtree", killed_after_the_first_file)
        with pytest.raises(_Killed):
            save_checkpoint(folder, step=2, model=model, model_name="vae", config={"model": {"name": "vae"}}, keep=1)
    assert [p.name for p in folder.iterdir() if not p.name.endswith(TEMP_SUFFIX)] == ["step-2"]
    remove_interrupted_writes(tmp_path)  # what the next start of the run does
    assert [p.name for p in folder.iterdir()] == ["step-2"]
