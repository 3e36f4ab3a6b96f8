"""Two-stage runs: a latent GMM fitted without gradients on a frozen parent VAE's codes."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file

import vaekit
from vaekit.config import load_config
from vaekit.errors import CheckpointError, ConfigError
from vaekit.priors import GaussianMixture


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory):
    return vaekit.train(tiny_config(tmp_path_factory.mktemp("parent"), "train.steps=20"), quiet=True)


def _gmm_config(out_dir, parent, *overrides):
    return load_config("digits-latent-gmm", [f"out_dir={out_dir}", f"parent={parent}", "model.num_components=3",
                                             "eval.num_images=40", "eval.num_grid_images=16", *overrides])


def test_latent_gmm_fits_on_the_parent_codes_and_samples_through_its_decoder(parent_run, tmp_path):
    parent_before = load_file(parent_run / "checkpoints/step-20/model.safetensors")
    run_dir = vaekit.train(_gmm_config(tmp_path, parent_run), quiet=True)
    weights = load_file(run_dir / "checkpoints/step-1/model.safetensors")
    assert set(weights) == {"mixture.log_weights", "mixture.means", "mixture.scale_tril"}  # parent not copied
    assert weights["mixture.means"].shape == (3, 4)
    torch.testing.assert_close(weights["mixture.log_weights"].exp().sum(), torch.tensor(1.0))
    parent_after = load_file(parent_run / "checkpoints/step-20/model.safetensors")
    assert all(torch.equal(parent_before[k], parent_after[k]) for k in parent_before)
    model = vaekit.load(run_dir)
    assert model.run_config.data == vaekit.load(parent_run).run_config.data  # inherited from the parent
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    assert (run_dir / "samples/step-1.png").is_file()
    record = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    assert "latent_log_likelihood" in record


def test_two_stage_model_without_parent_is_refused(tmp_path):
    config = load_config("digits-latent-gmm", [f"out_dir={tmp_path}", "parent=null"])
    with pytest.raises(ConfigError, match="set parent=RUN_DIR"):
        vaekit.train(config, quiet=True)


def test_single_stage_model_with_parent_is_refused(parent_run, tmp_path):
    with pytest.raises(ConfigError, match="does not build on a parent run"):
        vaekit.train(tiny_config(tmp_path, f"parent={parent_run}"), quiet=True)


def test_gaussian_mixture_recovers_planted_components():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-5.0, 0.0], [5.0, 0.0]])
    codes = torch.cat([centres[0] + 0.5 * torch.randn(400, 2, generator=g),
                       centres[1] + torch.randn(600, 2, generator=g)])
    mixture = GaussianMixture(2, 2)
    mixture.fit(codes, max_iter=100, seed=0, reg_covar=1e-6)
    order = mixture.means[:, 0].argsort()
    torch.testing.assert_close(mixture.means[order], centres, atol=0.15, rtol=0)
    torch.testing.assert_close(mixture.log_weights[order].exp(), torch.tensor([0.4, 0.6]), atol=0.01, rtol=0)
    draws = mixture.sample(20000, torch.Generator().manual_seed(1))
    assert (draws[:, 0] > 0).float().mean().item() == pytest.approx(0.6, abs=0.02)
    assert draws[draws[:, 0] < 0].std(0).mean().item() == pytest.approx(0.5, abs=0.05)


def test_the_childs_config_records_the_parents_codes_and_checkpoint_and_rebuilds_it_alone(parent_run, tmp_path):
    run_dir = vaekit.train(_gmm_config(tmp_path, parent_run), quiet=True)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["codes"] == {"shape": [4], "dtype": "float32", "num_symbols": None}  # the VAE's latent_dim
    parent_state = vaekit.find_checkpoint(parent_run) / "state.json"
    assert saved["parent_sha256"] == hashlib.sha256(parent_state.read_bytes()).hexdigest()
    child = vaekit.build_model(load_config(str(run_dir / "config.yaml")).model)  # no parent needed
    weights = load_file(run_dir / "checkpoints/step-1/model.safetensors")
    child.load_state_dict(weights)
    assert torch.equal(child.mixture.means, weights["mixture.means"])


def test_a_child_refuses_a_parent_that_changed_since_it_was_trained(tmp_path):
    parent = vaekit.train(tiny_config(tmp_path, "train.steps=10", name="parent"), quiet=True)
    child = vaekit.train(_gmm_config(tmp_path, parent, "name=child"), quiet=True)
    vaekit.load(child)  # the parent as trained on: fine
    vaekit.train(tiny_config(tmp_path, "train.steps=20", name="parent"), resume=True, quiet=True)  # parent moves on
    with pytest.raises(CheckpointError, match="the parent run changed"):
        vaekit.load(child)
    with pytest.raises(CheckpointError, match="parent run changed"):
        vaekit.train(_gmm_config(tmp_path, parent, "name=child"), resume=True, quiet=True)


def test_a_child_refuses_a_parent_whose_codes_differ_from_its_spec(parent_run, tmp_path):
    config = _gmm_config(tmp_path, parent_run, "model.codes={shape: [7], dtype: float32}")
    with pytest.raises(ConfigError, match="the parent's codes are"):
        vaekit.train(config, quiet=True)


def test_a_selected_latent_gmm_logs_its_choice_and_loads_from_its_config_alone(parent_run, tmp_path):
    config = load_config("digits-latent-gmm", [f"out_dir={tmp_path}", f"parent={parent_run}", "eval.num_images=40",
                                               "eval.num_grid_images=16"])
    run_dir = vaekit.train(config, quiet=True)
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"train"' in line][-1]
    assert train["num_components"] in {1, 2, 4, 8, 16, 32} and train["diagonal_covariance"] in {0.0, 1.0}
    assert train["held_out_log_likelihood"] < train["train_log_likelihood"]
    assert train["overfit_warning"] == float(train["overfit_gap_per_dim"] > 1.0)
    weights = load_file(run_dir / "checkpoints/step-1/model.safetensors")
    assert weights["mixture.means"].shape == (32, 4)  # the grid's largest size, whatever was chosen
    assert torch.isfinite(weights["mixture.log_weights"]).sum().item() == train["num_components"]
    model = vaekit.load(run_dir)
    codes = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model.mixture.log_prob(codes)).all()
