"""The engine's contract with a model: the post-step buffer hook, update skipping, the weight EMA's
coverage, global-batch normalisation, and a training run that leaves the caller's RNG alone."""

from __future__ import annotations

import json
import math

import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch import nn
from toy_models import ToyCodebook

import vaekit
from vaekit.engine.train import WeightEMA
from vaekit.nn.normalization import GlobalBatchNorm


def _toy_config(tmp_path, *overrides, name="toy"):
    return tiny_config(tmp_path, "data.binarize=none", "model={name: toy-codebook}", "train.steps=6",
                       "train.log_every=3", "train.eval_every=6", "train.checkpoint_every=6", *overrides, name=name)


def test_a_training_run_leaves_torchs_global_rng_state_unchanged(tmp_path):
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    vaekit.train(_toy_config(tmp_path, "train.ema_decay=0.5"), quiet=True)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_post_step_hook_runs_once_per_step_after_every_optimiser_step_without_gradients(tmp_path, monkeypatch):
    seen_by_loss, seen_by_hook = [], []
    original_loss, original_hook = ToyCodebook.loss, ToyCodebook.update_buffers

    def loss(self, batch, *, group="model", step=0):
        seen_by_loss.append((step, self.encoder.weight.detach().clone()))
        return original_loss(self, batch, group=group, step=step)

    def hook(self, batch, step):
        seen_by_hook.append((step, self.encoder.weight.detach().clone(), torch.is_grad_enabled(), self.training))
        original_hook(self, batch, step)

    monkeypatch.setattr(ToyCodebook, "loss", loss)
    monkeypatch.setattr(ToyCodebook, "update_buffers", hook)
    vaekit.train(_toy_config(tmp_path), quiet=True)
    training_losses = [(step, weight) for step, weight in seen_by_loss if step < 6][:6]  # evaluation calls come later
    assert [step for step, *_ in seen_by_hook] == [0, 1, 2, 3, 4, 5]  # once per step
    assert all(not grad and training for _, _, grad, training in seen_by_hook)
    for (step, hook_weight, _, _), (loss_step, loss_weight) in zip(seen_by_hook, training_losses):
        assert step == loss_step
        assert not torch.equal(hook_weight, loss_weight)  # the optimiser stepped before the hook
    for (step, hook_weight, _, _), (next_step, next_weight) in zip(seen_by_hook, training_losses[1:]):
        assert next_step == step + 1 and torch.equal(hook_weight, next_weight)  # and nothing moved after it


def test_skipped_updates_change_no_weight_and_no_buffer_and_are_counted(tmp_path):
    run_dir = vaekit.train(_toy_config(tmp_path, "train.skip_grad_norm=1e-12"), quiet=True)
    model_config = vaekit.load(run_dir).run_config.model
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the engine's initialisation (train.seed=0)
        initial = vaekit.build_model(model_config).state_dict()
    final = load_file(run_dir / "checkpoints/step-6/model.safetensors")
    for key, value in initial.items():
        assert torch.equal(value, final[key]), key  # parameters, the EMA codebook and usage alike
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if r["split"] == "train"] == [3, 6]
    # the pre-clip gradient norm is logged for skipped updates too (a threshold is chosen from it); without
    # clipping or skipping no norm is computed
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 1e-12 for r in records if r["split"] == "train")
    plain = vaekit.train(_toy_config(tmp_path / "plain"), quiet=True)
    assert '"grad_norm"' not in (plain / "metrics.jsonl").read_text()


def test_the_weight_ema_averages_parameters_not_the_codebook_that_is_itself_an_average(tmp_path):
    run_dir = vaekit.train(_toy_config(tmp_path, "train.ema_decay=0.5"), quiet=True)
    ema = load_file(run_dir / "checkpoints/step-6/ema.safetensors")
    model = vaekit.load(run_dir, ema=False)
    assert set(ema) == {name for name, _ in model.named_parameters()}


def test_the_weight_ema_averages_the_buffers_a_model_opts_into():
    class OptsIn(ToyCodebook):
        def averaged_buffers(self) -> list[str]:
            return ["usage"]

    model = OptsIn(vaekit.load_config("digits-vae", ["model={name: toy-codebook, image_shape: [1, 8, 8]}"]).model)
    ema = WeightEMA(model, decay=0.75)
    assert "usage" in ema.shadow and "codebook" not in ema.shadow
    start = model.usage.clone()
    model.usage.fill_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["usage"], 0.75 * start + 0.25)  # (1 - decay) of the way to 1


def test_global_batch_norm_on_one_process_is_torchs_batch_norm():
    g = torch.Generator().manual_seed(0)
    x = (3.0 + 2.0 * torch.randn(64, 5, generator=g)).requires_grad_(True)
    ours, reference = GlobalBatchNorm(5), nn.BatchNorm1d(5)
    with torch.no_grad():
        for norm in (ours, reference):
            norm.weight.copy_(torch.linspace(0.5, 1.5, 5))
            norm.bias.copy_(torch.linspace(-1.0, 1.0, 5))
    out = ours(x, sum_over_processes=lambda value: value)  # the identity: one process
    expected = reference(x)
    torch.testing.assert_close(out, expected)
    grad_ours = torch.autograd.grad(out.pow(3).sum(), x)[0]
    grad_reference = torch.autograd.grad(expected.pow(3).sum(), x)[0]
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(reference, name))
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x))


def test_an_update_with_a_non_finite_gradient_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    original = ToyCodebook.loss

    def nan_at_step_2(self, batch, *, group="model", step=0):
        losses = original(self, batch, group=group, step=step)
        if step == 2 and self.training:
            return type(losses)(total=losses.total * float("nan"), terms=losses.terms)
        return losses

    monkeypatch.setattr(ToyCodebook, "loss", nan_at_step_2)
    run_dir = vaekit.train(_toy_config(tmp_path, "train.skip_grad_norm=1e6"), quiet=True)  # no TrainingDivergedError
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["skipped_steps"] for r in train] == [1, 1]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)  # the skipped update is not in the means
