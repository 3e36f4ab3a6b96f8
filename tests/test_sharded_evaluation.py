"""Sharded evaluation: 2 CPU processes (torchrun, gloo) score a small set like 1 process (the VAE's NLL
per image, the Chamfer and exact-EMD set metrics, reconstruction scores), and the importance-sampling
noise keyed by (seed, image index) makes an image's NLL independent of the chunk that holds it.
The registry-wide 2-process contract (every model's `evaluate`) is in tests/test_distributed.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from sharded_evaluation_worker import NLL, binary_images, small_set_scores, tiny_vae

from vaekit.batch import ExampleNoise, example_generator
from vaekit.engine.distributed import ONE_PROCESS, Shard
from vaekit.metrics.images import per_image_log_px
from vaekit.models.hierarchical import HierarchicalVAE, HierarchicalVAEConfig
from vaekit.objectives import importance_sampled_log_px

TESTS = Path(__file__).resolve().parent
NATS_PER_IMAGE = 1e-4  # the tolerance for the sharded NLL


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The worker's folder: the small set scored by each of 2 processes, twice (the second run resumed)."""
    out_dir = tmp_path_factory.mktemp("sharded")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(TESTS / "sharded_evaluation_worker.py"), str(out_dir)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"VAEKIT_NEAREST": "matmul"})
    assert result.returncode == 0, result.stderr[-5000:]
    return out_dir


@pytest.fixture(scope="module")
def scores(run_dir) -> tuple[dict, list[dict]]:
    """The small set scored by 1 process and by each of 2 processes."""
    (run_dir / "one").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEKIT_NEAREST", "matmul")  # as the worker
        one = small_set_scores(ONE_PROCESS, run_dir / "one")
    return one, [json.loads((run_dir / f"scores-rank{rank}.json").read_text()) for rank in range(2)]


def test_sharded_nll_of_every_image_equals_one_process_within_1e_4_nats(scores):
    one, twos = scores
    for two in twos:  # every process gets every image's numbers
        assert two["log_px"] == pytest.approx(one["log_px"], rel=0, abs=NATS_PER_IMAGE)
        assert two["elbo"] == pytest.approx(one["elbo"], rel=0, abs=NATS_PER_IMAGE)


def test_sharded_chamfer_set_metrics_equal_one_process(scores):
    one, twos = scores
    assert 0 < one["chamfer"]["mmd_cd"] and 0 < one["chamfer"]["1nna_cd"] < 1  # the sets are not degenerate
    for two in twos:
        assert two["chamfer"] == pytest.approx(one["chamfer"], rel=1e-9)


def test_sharded_exact_emd_set_metrics_equal_one_process(scores):
    one, twos = scores
    assert one["emd"]["emd_exact_solves"] > 0
    for two in twos:  # the solve and pruning counts may differ: the processes search apart
        for metric in ("mmd_emd", "cov_emd", "1nna_emd"):
            assert two["emd"][metric] == pytest.approx(one["emd"][metric], rel=1e-12), metric


def test_sharded_set_metrics_resume_from_one_state_file_per_process(run_dir):
    for rank in range(2):
        first, resumed = (json.loads((run_dir / f"{name}-rank{rank}.json").read_text())
                          for name in ("scores", "resumed"))
        assert resumed["chamfer"] == first["chamfer"] and resumed["emd"] == first["emd"]
        for state in ("chamfer_sample_reference", "chamfer_sample_sample", "chamfer_reference_reference", "emd"):
            assert (run_dir / "state" / f"{state}.rank{rank}-of-2.npz").is_file()


def test_sharded_reconstruction_chamfer_and_exact_emd_equal_one_process(scores):
    one, twos = scores
    for two in twos:
        assert two["reconstruction"] == pytest.approx(one["reconstruction"], rel=1e-6)


def _tiny_hierarchical_vae() -> HierarchicalVAE:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return HierarchicalVAE(HierarchicalVAEConfig(image_shape=(1, 8, 8), channels=4, groups_per_scale=(1, 1),
                                                     latent_channels=2, cells_per_group=0)).eval()


@pytest.mark.parametrize("build", [tiny_vae, _tiny_hierarchical_vae], ids=["vae", "hierarchical-vae"])
def test_an_images_nll_does_not_depend_on_its_chunk_or_its_position_in_it(build):
    model, x = build(), binary_images()
    by_chunk = [per_image_log_px(model, x, NLL.model_copy(update={"images_per_chunk": size}))[0] for size in (1, 3, 7)]
    for log_px in by_chunk[1:]:
        torch.testing.assert_close(log_px, by_chunk[0], rtol=0, atol=1e-5)
    alone, _ = importance_sampled_log_px(model, x[5:6], num_samples=NLL.num_importance_samples,
                                         samples_per_chunk=NLL.samples_per_chunk,
                                         generator=ExampleNoise.of(NLL.seed, [5]))  # image 5 at position 0
    torch.testing.assert_close(alone, by_chunk[0][5:6], rtol=0, atol=1e-5)
    other_seed = per_image_log_px(model, x, NLL.model_copy(update={"seed": NLL.seed + 1}))[0]
    assert (other_seed - by_chunk[0]).abs().max() > 1e-3  # the draws are keyed by the seed too


def test_example_noise_draws_each_example_from_the_generator_of_its_seed_and_index():
    noise = ExampleNoise.of(3, [4, 9]).randn(2, 2, 5, batch_dim=1)  # (K, B, D) for examples 4 and 9
    torch.testing.assert_close(noise[:, 1], torch.randn(2, 5, generator=example_generator(3, 9)), rtol=0, atol=0)
    torch.testing.assert_close(noise[:, 0], torch.randn(2, 5, generator=example_generator(3, 4)), rtol=0, atol=0)
    assert not torch.equal(torch.randn(5, generator=example_generator(3, 9)),
                           torch.randn(5, generator=example_generator(9, 3)))
    with pytest.raises(ValueError, match="2 examples"):
        ExampleNoise.of(3, [4, 9]).randn(3, 5)


def test_one_process_shards_nothing_and_needs_no_process_group():
    assert not dist.is_initialized()
    x = torch.arange(10.0).view(5, 2)
    seen = []

    def double(rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        seen.append(indices.tolist())
        return 2 * rows

    assert torch.equal(ONE_PROCESS.map_rows(double, x, 2), 2 * x) and seen == [[0, 1], [2, 3], [4]]
    assert ONE_PROCESS.own_file(Path("state.npz")) == Path("state.npz")
    second = Shard(rank=1, world_size=2)
    assert list(second.indices(5)) == [1, 3]
    assert second.own_file(Path("run/state.npz")) == Path("run/state.rank1-of-2.npz")


def test_vaekit_eval_under_torchrun_writes_the_one_process_scores_once(trained_digits_run, tmp_path):
    """`torchrun --nproc-per-node=2 -m vaekit eval RUN` shards the test split and rank 0 alone writes eval.json."""
    options = ["--importance-samples", "5", "--num-images", "9", "--quiet"]
    single = tmp_path / "one.json"
    subprocess.run([sys.executable, "-m", "vaekit", "eval", str(trained_digits_run), *options, "--out", str(single)],
                   check=True, capture_output=True, text=True, timeout=300)
    sharded = tmp_path / "two.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "vaekit", "eval", str(trained_digits_run), *options, "--out", str(sharded)],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert two.keys() == one.keys() and one["nll"] > 0
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5, abs=NATS_PER_IMAGE), key
    assert result.stdout.count('"nll"') == 1  # printed once, by rank 0
