"""WAE-MMD and WAE-GAN through the shared engine: losses, two optimisers, resume, latent matching."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import vaekit
from vaekit.batch import Batch
from vaekit.config import load_config
from vaekit.divergences import mmd_unbiased
from vaekit.models.wae import WAEGAN, WAEMMD, WAEGANConfig, WAEMMDConfig


def _config(tmp_path, name, *overrides):
    return load_config("digits-wae-mmd", [f"out_dir={tmp_path}", f"name={name}", "train.steps=40",
                                          "train.batch_size=50", "train.log_every=10", "train.eval_every=40",
                                          "train.checkpoint_every=20", "eval.num_images=100",
                                          "eval.num_grid_images=16", *overrides])


GAN = ["model={name: wae-gan, architecture: mlp, hidden_dims: [64], latent_dim: 4, discriminator_hidden_dims: [32, 32]}",
       "train.group_lr={discriminator: 0.0005}"]


def test_wae_mmd_loss_is_cost_plus_lambda_mmd():
    torch.manual_seed(0)
    model = WAEMMD(WAEMMDConfig(image_shape=(1, 8, 8), latent_dim=3, architecture="mlp", hidden_dims=(16,)))
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    batch = Batch.of(x, generator=torch.Generator().manual_seed(1))
    losses = model.loss(batch)
    z = model.latent_codes(x)
    prior = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))  # the batch's first draw
    expected_cost = 0.05 * ((x - model.decode_mean(z)) ** 2).flatten(1).sum(1)
    torch.testing.assert_close(losses.terms["reconstruction"], expected_cost)
    torch.testing.assert_close(losses.terms["mmd"], mmd_unbiased(z, prior, kernel="imq"))
    torch.testing.assert_close(losses.total, expected_cost.mean() + 10.0 * losses.terms["mmd"])


def test_wae_gan_step_changes_both_networks_and_the_encoder_loss_never_moves_the_discriminator(tmp_path):
    torch.manual_seed(0)
    initial = WAEGAN(WAEGANConfig(image_shape=(1, 8, 8), architecture="mlp", hidden_dims=(64,), latent_dim=4,
                                  discriminator_hidden_dims=(32, 32))).state_dict()
    trained = load_file(vaekit.train(_config(tmp_path, "both", *GAN), quiet=True) / "checkpoints/step-40/model.safetensors")
    assert not torch.equal(trained["encoder.1.0.weight"], initial["encoder.1.0.weight"])
    assert not torch.equal(trained["discriminator.0.0.weight"], initial["discriminator.0.0.weight"])
    frozen = load_file(vaekit.train(_config(tmp_path, "frozen-d", *GAN, "train.group_lr={discriminator: 0.0}"),
                                    quiet=True) / "checkpoints/step-40/model.safetensors")
    assert all(torch.equal(frozen[k], initial[k]) for k in initial if k.startswith("discriminator"))
    # and the discriminator's own loss sends no gradient into the encoder
    torch.manual_seed(1)
    model = WAEGAN(WAEGANConfig(image_shape=(1, 8, 8), architecture="mlp", hidden_dims=(64,), latent_dim=4))
    g = torch.Generator().manual_seed(2)
    batch = Batch.of(torch.rand(6, 1, 8, 8, generator=g), generator=g)
    model.loss(batch, group="discriminator").total.backward()
    assert all(p.grad is None for p in model.encoder.parameters())


def test_wae_gan_resume_is_bit_exact(tmp_path):
    full = vaekit.train(_config(tmp_path, "full", *GAN), quiet=True)
    vaekit.train(_config(tmp_path, "split", *GAN, "train.steps=20"), quiet=True)
    resumed = vaekit.train(_config(tmp_path, "split", *GAN), resume=True, quiet=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(full / f"checkpoints/step-40/{name}"), load_file(resumed / f"checkpoints/step-40/{name}")
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_wae_mmd_training_matches_the_aggregate_posterior_to_the_prior(tmp_path):
    run_dir = vaekit.train(_config(tmp_path, "mmd", "train.steps=400", "train.eval_every=400",
                                   "train.checkpoint_every=400", "train.log_every=100"), quiet=True)
    test = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    model = vaekit.load(run_dir)
    torch.manual_seed(0)
    untrained = WAEMMD(model.config)
    x = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert test["latent_mmd"] < untrained.extra_scores(x)["latent_mmd"]
    assert test["latent_mmd"] < 0.05 and test["reconstruction_mse"] < 0.06
    assert (run_dir / "samples/step-400.png").is_file() and (run_dir / "traversals/step-400.png").is_file()
