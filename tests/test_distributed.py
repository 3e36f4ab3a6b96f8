"""Every registered model: 2 CPU processes (torchrun, gloo) with batch B each reach the same parameters,
buffers and weight averages after N steps as 1 process with batch 2B; and `evaluate` of a trained run
on 2 processes (sharded evaluation) gives every process the scores of 1 process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_cases import CASES, case_config, case_scores, sharded_scores_path
from safetensors.torch import load_file

import vaekit
from vaekit.models import model_names

TESTS = Path(__file__).resolve().parent
# Summation order differs between 1 and 2 processes, and Adam normalises each gradient element, so a
# weight whose gradient is near 0 may move by rounding noise: 5e-5 is 2% of what 6 steps at lr 5e-4
# can move a weight. A per-process batch-level term misses by far more (kernel MMD: ~1e-2).
ATOL = 5e-5
# Sharded evaluation scores the same examples in chunks of other sizes: float32 rounding only. The NLL
# must hold to 1e-4 nats per image (the mean NLL then too).
EVAL_RTOL, EVAL_ATOL = 1e-5, 1e-6
NATS_PER_IMAGE = 1e-4


def test_every_registered_model_has_a_distributed_case():
    assert set(model_names()) <= set(CASES), "add a tiny case to tests/distributed_cases.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every case trained once in 1 process (OUT/<case>-1) and once in 2 processes (OUT/<case>-2), and the
    1-process run scored by 2 processes."""
    out_dir = tmp_path_factory.mktemp("distributed")
    cases = sorted(CASES, key=lambda name: CASES[name][2] is not None)  # parents first
    for case in cases:
        vaekit.train(case_config(case, out_dir, f"{case}-1"), quiet=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(TESTS / "distributed_worker.py"), str(out_dir), *cases]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return out_dir


def _final(run_dir: Path, filename: str) -> dict[str, torch.Tensor]:
    return load_file(vaekit.find_checkpoint(run_dir) / filename)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_match_one_process_with_the_doubled_batch(runs, case):
    one, two = runs / f"{case}-1", runs / f"{case}-2"
    for filename in ("model.safetensors", "ema.safetensors"):
        if not (vaekit.find_checkpoint(one) / filename).exists():
            assert case == "latent-gmm" and filename == "ema.safetensors"  # fitted once, no weight average
            continue
        a, b = _final(one, filename), _final(two, filename)
        assert a.keys() == b.keys()
        for key in a:  # parameters and buffers (batch-norm statistics, EMA codebooks, usage counts)
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=ATOL, msg=f"{case}: {filename}: {key}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_evaluation_on_two_processes_equals_one_process(runs, case):
    one = case_scores(runs / f"{case}-1")
    for rank in range(2):  # every process returns the gathered scores
        two = json.loads(sharded_scores_path(runs, case, rank).read_text())
        assert two.keys() == one.keys()
        for key, value in one.items():
            tolerance = {"rel": 0, "abs": NATS_PER_IMAGE} if key.startswith(("nll", "elbo")) else \
                {"rel": EVAL_RTOL, "abs": EVAL_ATOL}
            assert two[key] == pytest.approx(value, **tolerance), f"{case}: {key} on process {rank}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_runs_really_moved(runs, case):
    """The equivalence is not vacuous: the 1-process weights differ from a fresh initialisation."""
    trained = _final(runs / f"{case}-1", "model.safetensors")
    model_config = vaekit.load(runs / f"{case}-1").run_config.model
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the engine's initialisation (train.seed=0)
        fresh = vaekit.build_model(model_config).state_dict()
    assert max((fresh[k].float() - trained[k].float()).abs().max().item() for k in trained) > 1e-3


def test_buffers_that_the_post_step_hook_updates_moved(runs):
    """The toy codebook's EMA buffers changed from their initial values in both runs."""
    for run in ("toy-codebook-1", "toy-codebook-2"):
        usage = _final(runs / run, "model.safetensors")["usage"]
        assert not torch.allclose(usage, torch.full_like(usage, 1 / len(usage)))
