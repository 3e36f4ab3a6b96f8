"""The engine with two optimisers and a step schedule (the shape of WAE-GAN / latent GANs to come)."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import vaekit
from vaekit.batch import Batch
from vaekit.config import ModelConfig, load_config
from vaekit.models.base import Capability, GenerativeModel, Losses
from vaekit.models.registry import register_model, unregister_model


class ToyAdversarialConfig(ModelConfig):
    name: Literal["toy-adversarial"] = "toy-adversarial"
    image_shape: tuple[int, int, int] | None = None
    latent_dim: int = 2


class ToyAdversarial(GenerativeModel):
    """An adversarial auto-encoder in miniature: a latent discriminator against the encoder."""

    capabilities = frozenset({Capability.SAMPLE})

    def __init__(self, config: ToyAdversarialConfig) -> None:
        super().__init__(config)
        pixels = int(torch.tensor(config.image_shape).prod())
        self.encoder = nn.Linear(pixels, config.latent_dim)
        self.decoder = nn.Linear(config.latent_dim, pixels)
        self.discriminator = nn.Sequential(nn.Linear(config.latent_dim, 8), nn.ReLU(), nn.Linear(8, 1))

    def parameter_groups(self):
        return {"discriminator": list(self.discriminator.parameters()),
                "model": [*self.encoder.parameters(), *self.decoder.parameters()]}

    def updates(self, step):
        return ["discriminator", "discriminator", "model"]  # two critic updates per model update

    def loss(self, batch: Batch, *, group: str = "model", step: int = 0) -> Losses:
        z = self.encoder(batch.x.flatten(1))
        prior = batch.randn(batch.size, self.config.latent_dim)
        if group == "discriminator":
            real, fake = self.discriminator(prior).squeeze(1), self.discriminator(z.detach()).squeeze(1)
            per_sample = F.softplus(-real) + F.softplus(fake)
            return Losses(total=per_sample.mean(), terms={"discriminator": per_sample})
        reconstruction = ((self.decoder(z) - batch.x.flatten(1)) ** 2).sum(1)
        adversarial = F.softplus(-self.discriminator(z).squeeze(1))
        latent_spread = z.var(0).sum()  # a batch-level scalar term
        return Losses(total=(reconstruction + adversarial).mean(),
                      terms={"reconstruction": reconstruction, "adversarial": adversarial, "latent_spread": latent_spread})

    def reconstruct(self, x):
        return self.decoder(self.encoder(x.flatten(1))).clamp(0, 1).view_as(x)

    def sample(self, num_samples, generator=None, temperature=1.0):
        z = temperature * torch.randn(num_samples, self.config.latent_dim, generator=generator)
        return self.decoder(z).clamp(0, 1).view(num_samples, *self.config.image_shape)


@pytest.fixture
def toy_registered():
    register_model("toy-adversarial", ToyAdversarialConfig)(ToyAdversarial)
    yield
    unregister_model("toy-adversarial")


def _config(tmp_path, *overrides, name="adv"):
    return load_config("digits-vae", [
        f"out_dir={tmp_path}", f"name={name}", "data.binarize=none", "model={name: toy-adversarial}",
        "train.steps=20", "train.batch_size=32", "train.log_every=5", "train.eval_every=20",
        "train.checkpoint_every=10", "eval.num_images=16", "eval.num_grid_images=4", *overrides])


def _weights(run_dir, step):
    return load_file(run_dir / f"checkpoints/step-{step}/model.safetensors")


def test_two_optimisers_log_every_group_and_scalar_terms(toy_registered, tmp_path):
    run_dir = vaekit.train(_config(tmp_path), quiet=True)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert {"discriminator/discriminator", "discriminator/loss", "model/reconstruction", "model/adversarial",
            "model/latent_spread", "model/loss"} <= set(record)
    state = json.loads((run_dir / "checkpoints/step-20/state.json").read_text())
    assert set(state["optimizers"]) == {"discriminator", "model"}
    # the discriminator's Adam took two steps per training step
    optimizer = load_file(run_dir / "checkpoints/step-20/optimizer.safetensors")
    assert optimizer["discriminator/0/step"].item() == 40 and optimizer["model/0/step"].item() == 20


def test_a_group_is_moved_only_by_its_own_loss(toy_registered, tmp_path):
    torch.manual_seed(0)  # the engine seeds initialisation with train.seed=0
    initial = ToyAdversarial(ToyAdversarialConfig(image_shape=(1, 8, 8))).state_dict()
    frozen_discriminator = vaekit.train(_config(tmp_path, "train.group_lr={discriminator: 0.0}", name="d0"), quiet=True)
    weights = _weights(frozen_discriminator, 20)
    assert all(torch.equal(weights[k], initial[k]) for k in initial if k.startswith("discriminator"))
    assert not torch.equal(weights["encoder.weight"], initial["encoder.weight"])
    frozen_model = vaekit.train(_config(tmp_path, "train.group_lr={model: 0.0}", name="m0"), quiet=True)
    weights = _weights(frozen_model, 20)
    assert all(torch.equal(weights[k], initial[k]) for k in initial if not k.startswith("discriminator"))
    assert not torch.equal(weights["discriminator.0.weight"], initial["discriminator.0.weight"])


def test_two_optimiser_resume_is_bit_exact(toy_registered, tmp_path):
    full = vaekit.train(_config(tmp_path, name="full"), quiet=True)
    vaekit.train(_config(tmp_path, "train.steps=10", name="split"), quiet=True)
    resumed = vaekit.train(_config(tmp_path, name="split"), resume=True, quiet=True)
    a, b = _weights(full, 20), _weights(resumed, 20)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = load_file(full / "checkpoints/step-20/optimizer.safetensors")
    ob = load_file(resumed / "checkpoints/step-20/optimizer.safetensors")
    assert all(torch.equal(oa[k], ob[k]) for k in oa)
