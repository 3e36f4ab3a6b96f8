"""One contract over every registered model: build, loss shapes, backward, save/load, train vs eval steps."""

from __future__ import annotations

import pytest
import torch

from vaekit.batch import Batch
from vaekit.engine.checkpoint import (
    load_model_weights,
    load_tensor_file,
    read_state,
    save_checkpoint,
)
from vaekit.engine.train import make_optimizers
from vaekit.errors import CapabilityError, ConfigError
from vaekit.models import build_model, model_names
from vaekit.models.base import Capability, GenerativeModel, freeze
from vaekit.models.registry import lookup

CODES = {"shape": (3,), "dtype": "float32"}  # the codes of PARENT, as vaekit writes them into a child's config
DISCRETE_CODES = {"shape": (2, 2), "dtype": "int64", "num_symbols": 5}  # the codes of VQ_PARENT
# Per-family settings that make a model tiny enough for a contract test on 8x8 images.
TINY = {
    "vae": [{"image_shape": (1, 8, 8), "latent_dim": 3, "hidden_dims": (16,)},
            {"image_shape": (1, 8, 8), "latent_dim": 3, "architecture": "conv", "conv_channels": (4, 8),
             "hidden_dims": (16,), "likelihood": "logistic_mixture", "num_bins": 17, "num_mixtures": 2},
            {"image_shape": (3, 8, 8), "latent_dim": 3, "hidden_dims": (16,), "likelihood": "gaussian",
             "gaussian_std": None, "iwae_samples": 3}],
    "latent-gmm": [{"num_components": 2, "codes": CODES}],  # parent: a tiny VAE (PARENT)
    "latent-gan": [{"noise_dim": 4, "generator_hidden_dims": (8,), "discriminator_hidden_dims": (8,), "codes": CODES},
                   {"noise_dim": 4, "generator_hidden_dims": (8,), "discriminator_hidden_dims": (8,), "loss": "wgan-gp",
                    "codes": CODES}],
    "pointcloud-ae": [{"num_points": 32, "latent_dim": 8, "encoder_channels": (8, 16), "decoder_hidden_dims": (16,)}],
    "wae-mmd": [{"image_shape": (1, 8, 8), "latent_dim": 3, "architecture": "mlp", "hidden_dims": (16,)},
                {"image_shape": (1, 8, 8), "latent_dim": 3, "conv_channels": (4, 8), "hidden_dims": (16,),
                 "encoder": "gaussian", "kernel": "rbf"}],
    "hierarchical-vae": [{"image_shape": (1, 8, 8), "channels": 8, "latent_channels": 2, "groups_per_scale": (1, 2)},
                         {"image_shape": (3, 8, 8), "channels": 8, "latent_channels": 1, "groups_per_scale": (2,),
                          "downsamples": 2, "likelihood": "logistic_mixture", "num_bins": 17, "num_mixtures": 2,
                          "spectral_regularisation": 0.1, "kl_warmup_steps": 10, "squeeze_excitation": False},
                         {"image_shape": (1, 8, 8), "channels": 8, "latent_channels": 2, "groups_per_scale": (2,),
                          "downsamples": 1, "top_latent_dim": 3, "top_hidden": 8, "resampling": "strided",
                          "kl_warmup_steps": 10}],
    "vqvae": [{"image_shape": (1, 8, 8), "channels": 8, "downsamples": 1, "residual_cells": 1, "num_codes": 6,
               "code_dim": 3},
              {"image_shape": (3, 8, 8), "channels": 8, "downsamples": 2, "residual_cells": 0, "num_codes": 4,
               "code_dim": 2, "ema": False, "gradient": "rotation", "likelihood": "logistic", "num_bins": 17}],
    "code-prior": [{"width": 8, "layers": 1, "heads": 2, "codes": DISCRETE_CODES}],  # parent: VQ_PARENT
    "toy-codebook": [{"image_shape": (1, 8, 8)}],  # tests/toy_models.py: EMA codebook buffer, discrete codes
    "wae-gan": [{"image_shape": (1, 8, 8), "latent_dim": 3, "architecture": "mlp", "hidden_dims": (16,),
                 "discriminator_hidden_dims": (8, 8)}],
}
PARENT = {"name": "vae", "image_shape": (1, 8, 8), "latent_dim": 3, "hidden_dims": (16,)}
VQ_PARENT = {"name": "vqvae", "image_shape": (1, 8, 8), "channels": 8, "downsamples": 2, "num_codes": 5, "code_dim": 2}
CASES = [(name, settings) for name in model_names() for settings in TINY[name]]


def test_every_registered_model_has_contract_settings():
    assert set(model_names()) <= set(TINY)


def _model_and_batch(name, settings):
    config_class, _ = lookup(name)
    torch.manual_seed(0)
    model = build_model(config_class(name=name, **settings))
    if model.requires_parent:
        parent = VQ_PARENT if settings["codes"]["dtype"] == "int64" else PARENT
        model.attach_parent(freeze(build_model(lookup(parent["name"])[0](**parent))))
        settings = parent
    g = torch.Generator().manual_seed(1)
    if "num_points" in settings:
        x = torch.randn(6, settings["num_points"], 3, generator=g)
    else:
        levels = settings.get("num_bins", 2)
        x = torch.randint(0, levels, (6, *settings["image_shape"]), generator=g).float() / (levels - 1)
    return model, Batch.of(x, generator=torch.Generator().manual_seed(2))


def _training_batch(model, batch: Batch) -> Batch:
    """The batch as the engine hands it to `loss`: rows of `training_inputs` (a two-stage model's codes)."""
    return Batch.of(model.training_inputs(batch.x), generator=batch.generator)


@pytest.mark.parametrize("name,settings", CASES)
def test_loss_terms_are_finite_and_per_sample_or_scalar(name, settings):
    model, batch = _model_and_batch(name, settings)
    for group in model.parameter_groups():
        losses = model.loss(_training_batch(model, batch), group=group)
        assert losses.total.ndim == 0 and torch.isfinite(losses.total)
        for term, value in losses.terms.items():
            assert value.shape in [(batch.size,), ()], term
            assert torch.isfinite(value).all(), term
        losses.total.backward()


@pytest.mark.parametrize("name,settings", CASES)
def test_sample_and_reconstruct_shapes(name, settings):
    model, batch = _model_and_batch(name, settings)
    assert model.reconstruct(batch.x).shape == batch.x.shape
    if not model.can(Capability.SAMPLE):  # a plain auto-encoder: its latent generators sample
        return
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, *batch.x.shape[1:])
    assert samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("name,settings", CASES)
def test_train_step_changes_weights_and_eval_does_not(name, settings):
    model, batch = _model_and_batch(name, settings)
    from vaekit.config import TrainConfig

    optimizers = make_optimizers(model, TrainConfig(lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.inference_mode():
        for group in optimizers:
            model.loss(_training_batch(model, batch), group=group)
        if model.can(Capability.SAMPLE):
            model.sample(3)
        model.reconstruct(batch.x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()
    if not optimizers:  # fitted without gradients
        model.fit(torch.rand(50, *batch.x.shape[1:], generator=torch.Generator().manual_seed(5)))
    for group, optimizer in optimizers.items():
        optimizer.zero_grad()
        model.loss(_training_batch(model, batch), group=group).total.backward()
        optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "a training step changed no weight"
    for params in model.parameter_groups().values():
        assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("name,settings", CASES)
def test_save_load_round_trip_restores_the_models_own_weights_and_outputs(name, settings, tmp_path):
    model, batch = _model_and_batch(name, settings)
    if not model.parameter_groups():  # fitted without gradients: fit it so its buffers are not the initial ones
        model.fit(torch.rand(50, *batch.x.shape[1:], generator=torch.Generator().manual_seed(5)))
    path = save_checkpoint(tmp_path, step=1, model=model, model_name=name, config={"model": settings | {"name": name}})
    restored, _ = _model_and_batch(name, settings)
    with torch.no_grad():
        for value in restored.state_dict().values():  # parameters and buffers: loading must replace every one
            if value.is_floating_point():
                value.add_(1.0)
    differs = [k for k, v in model.state_dict().items() if not torch.equal(v, restored.state_dict()[k])]
    assert differs, "the perturbed copy must differ before loading"
    load_model_weights(restored, load_tensor_file(path, "model.safetensors", read_state(path)), path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    model.eval(), restored.eval()
    with torch.inference_mode():
        torch.testing.assert_close(model.reconstruct(batch.x), restored.reconstruct(batch.x), rtol=0, atol=0)
        if model.can(Capability.SAMPLE):  # a child's samples come from its own weights (the parent is shared)
            torch.testing.assert_close(model.sample(4, generator=torch.Generator().manual_seed(3)),
                                       restored.sample(4, generator=torch.Generator().manual_seed(3)), rtol=0, atol=0)


CAPABILITY_METHODS = {
    Capability.SAMPLE: lambda m, x: m.sample(2, generator=torch.Generator().manual_seed(0)),
    Capability.GAUSSIAN_POSTERIOR: lambda m, x: m.encode(x),
    Capability.LIKELIHOOD: lambda m, x: m.log_weights(x, 2, torch.Generator().manual_seed(0)),
}


def _codes_round_trip(model, x):
    return model.decode_mean(model.latent_codes(x))


@pytest.mark.parametrize("name,settings", CASES)
def test_declared_capabilities_work_and_undeclared_ones_raise_one_clear_error(name, settings):
    model, batch = _model_and_batch(name, settings)
    model.eval()
    for capability, call in CAPABILITY_METHODS.items():
        with torch.inference_mode():
            if model.can(capability):
                out = call(model, batch.x)
                assert out is not None
            else:
                with pytest.raises(CapabilityError, match=f"cannot .*{capability.value}"):
                    call(model, batch.x)
    has_codes = model.can(Capability.FLAT_CODES) or model.can(Capability.DISCRETE_CODES)
    with torch.inference_mode():
        if has_codes:
            assert _codes_round_trip(model, batch.x).shape == batch.x.shape
        else:
            with pytest.raises(CapabilityError, match="cannot encode to codes"):
                _codes_round_trip(model, batch.x)


@pytest.mark.parametrize("name,settings", CASES)
def test_models_with_codes_declare_a_spec_that_matches_their_codes(name, settings):
    model, batch = _model_and_batch(name, settings)
    if not (model.can(Capability.FLAT_CODES) or model.can(Capability.DISCRETE_CODES)):
        return
    spec = model.code_spec()
    with torch.inference_mode():
        codes = model.latent_codes(batch.x)
    assert tuple(codes.shape[1:]) == spec.shape and str(codes.dtype) == f"torch.{spec.dtype}"
    if model.can(Capability.DISCRETE_CODES):  # integer symbols stay integer, within 0..K-1
        assert spec.dtype == "int64" and 0 <= codes.min() and codes.max() < spec.num_symbols
    else:
        assert spec.dtype == "float32" and spec.num_symbols is None and len(spec.shape) == 1


def test_a_child_is_built_from_its_config_alone_before_any_parent_is_attached():
    for name in ("latent-gmm", "latent-gan"):
        config_class, _ = lookup(name)
        child = build_model(config_class(name=name, codes={"shape": (7,), "dtype": "float32"}))
        assert any(value.shape[-1] == 7 for value in child.state_dict().values())
        with pytest.raises(ConfigError, match="model.codes"):
            build_model(config_class(name=name))


def test_the_base_model_declares_nothing():
    assert GenerativeModel.capabilities == frozenset()
