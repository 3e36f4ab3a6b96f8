"""Hierarchical VAE: exact likelihood by quadrature on a tiny model, the prior's dependence structure,
the residual-normal KL, KL balancing, spectral regularisation, temperature."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import colour_stripes
from torch import nn

from vaekit.batch import Batch
from vaekit.models.hierarchical import HierarchicalVAE, HierarchicalVAEConfig
from vaekit.nn.spectral import SpectralPenalty
from vaekit.objectives import importance_sampled_log_px, kl_balance_alphas, kl_balance_coefficients


def _perturbed(config: HierarchicalVAEConfig, seed: int = 0, scale: float = 0.3) -> HierarchicalVAE:
    """A model whose every weight is moved off its initialisation (zero-initialised heads included)."""
    torch.manual_seed(seed)
    model = HierarchicalVAE(config).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return model.eval()


TINY = HierarchicalVAEConfig(image_shape=(1, 2, 2), channels=8, downsamples=1, groups_per_scale=(2,), latent_channels=1,
                             cells_per_group=1)  # two 1-dimensional groups, 4 binary pixels
TINY_DENSE_TOP = TINY.model_copy(update={"groups_per_scale": (1,), "top_latent_dim": 1, "top_hidden": 8,
                                         "resampling": "strided"})  # a dense z_1, then one 1x1 group
ALL_IMAGES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 1, 2, 2)


def _fixed(z: list[torch.Tensor]):
    return lambda index, prior, posterior: z[index]


def _quadrature_log_px(model: HierarchicalVAE, images: torch.Tensor, half_width: float = 12.0,
                       points: int = 241) -> torch.Tensor:
    """log p(x) = log of the double integral of p(x | z1, z2) p(z2 | z1) p(z1) on a grid (midpoint rule)."""
    grid = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    step = grid[1] - grid[0]
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    z = [z1.reshape(-1, *model.latent_shapes()[0]), z2.reshape(-1, *model.latent_shapes()[1])]
    with torch.no_grad():
        likelihood, groups = model.top_down(len(z[0]), _fixed(z))
        log_prior = sum(g.prior.log_prob(g.z).flatten(1).sum(1) for g in groups)  # (N,)
        logits = likelihood.logits.flatten(1)  # (N, 4)
        x = images.flatten(1)  # (M, 4)
        log_px_z = (x @ torch.nn.functional.logsigmoid(logits).T + (1 - x) @ torch.nn.functional.logsigmoid(-logits).T)
    return torch.logsumexp(log_px_z + log_prior, dim=1) + 2 * torch.log(step)  # (M,)


TINY_CASES = pytest.mark.parametrize("config, scale", [(TINY, 0.1), (TINY_DENSE_TOP, 0.15)], ids=["spatial", "dense-top"])


@TINY_CASES
def test_quadrature_of_the_tiny_model_is_a_distribution_over_the_16_images(config, scale):
    model = _perturbed(config, scale=scale)  # spatial: prior std of z2 | z1 between 1 and 3.1 on the grid
    log_px = _quadrature_log_px(model, ALL_IMAGES)
    assert torch.logsumexp(log_px, 0).exp().item() == pytest.approx(1.0, abs=1e-6)
    assert log_px.max() - log_px.min() > 0.5  # the model is not uniform over images: the test has teeth


@TINY_CASES
def test_importance_sampled_log_px_matches_quadrature_within_a_hundredth_of_a_nat(config, scale):
    model = _perturbed(config, scale=scale)
    exact = _quadrature_log_px(model, ALL_IMAGES)
    estimate, elbo = importance_sampled_log_px(model, ALL_IMAGES, num_samples=20000, samples_per_chunk=10000,
                                               generator=torch.Generator().manual_seed(0))
    assert (estimate - exact).abs().max().item() < 0.01
    assert (elbo <= exact + 1e-6).all() and (exact - elbo).max() > 0.01  # the ELBO is a bound, and not tight


THREE_GROUPS = {  # three latent groups: over two scales, or a dense z_1 above two 2x2 groups
    "spatial": HierarchicalVAEConfig(image_shape=(1, 4, 4), channels=8, downsamples=1, groups_per_scale=(1, 2),
                                     latent_channels=2),
    "dense-top": HierarchicalVAEConfig(image_shape=(1, 4, 4), channels=8, downsamples=1, groups_per_scale=(2,),
                                       latent_channels=2, top_latent_dim=3, top_hidden=8, resampling="strided"),
}


@pytest.fixture(params=list(THREE_GROUPS))
def three_groups(request) -> HierarchicalVAE:
    return _perturbed(THREE_GROUPS[request.param], seed=3, scale=0.1)


def _draws(model: HierarchicalVAE, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=g, dtype=torch.float64) for shape in model.latent_shapes()]


def test_with_z_fixed_no_prior_parameter_depends_on_x(three_groups):
    model = three_groups
    g = torch.Generator().manual_seed(5)
    x1, x2 = (torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64).round() for _ in range(2))
    z = _draws(model, 3, seed=6)
    with torch.no_grad():
        _, with_x1 = model.top_down(3, _fixed(z), model.bottom_up(x1))
        _, with_x2 = model.top_down(3, _fixed(z), model.bottom_up(x2))
    for a, b in zip(with_x1, with_x2):
        torch.testing.assert_close(a.prior.mean, b.prior.mean, rtol=0, atol=0)
        torch.testing.assert_close(a.prior.log_var, b.prior.log_var, rtol=0, atol=0)
    assert not torch.allclose(with_x1[1].posterior.mean, with_x2[1].posterior.mean)  # but the posterior does


@pytest.mark.parametrize("perturbed_group", [0, 1])
def test_perturbing_z_l_leaves_earlier_priors_unchanged_and_moves_a_later_one(perturbed_group, three_groups):
    model = three_groups
    z = _draws(model, 2, seed=7)
    moved = [t.clone() for t in z]
    moved[perturbed_group] = moved[perturbed_group] + 0.5
    with torch.no_grad():
        _, before = model.top_down(2, _fixed(z))
        _, after = model.top_down(2, _fixed(moved))
    for index in range(perturbed_group + 1):
        torch.testing.assert_close(before[index].prior.mean, after[index].prior.mean, rtol=0, atol=0)
    assert any(not torch.allclose(before[i].prior.mean, after[i].prior.mean) for i in range(perturbed_group + 1, 3))


def test_the_sampling_path_recomputes_the_priors_and_likelihood_used_in_training(three_groups):
    model = three_groups
    g = torch.Generator().manual_seed(8)
    x = torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64).round()
    noise = _draws(model, 4, seed=9)
    with torch.no_grad():
        likelihood, trained = model.top_down(4, lambda i, p, q: q.rsample(noise[i]), model.bottom_up(x))
        regenerated_likelihood, regenerated = model.top_down(4, _fixed([group.z for group in trained]))
    torch.testing.assert_close(regenerated_likelihood.logits, likelihood.logits, rtol=0, atol=0)
    for a, b in zip(trained, regenerated):
        torch.testing.assert_close(b.prior.mean, a.prior.mean, rtol=0, atol=0)
        torch.testing.assert_close(b.prior.log_var, a.prior.log_var, rtol=0, atol=0)


def test_kl_per_group_is_the_residual_normal_closed_form_of_eq_2(three_groups):
    """KL(N(mu_p + dmu, (sigma_p dsigma)^2) || N(mu_p, sigma_p^2)) = 1/2 (dmu^2/sigma_p^2 + dsigma^2 - 1 - log dsigma^2)."""
    model = three_groups
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64).round()
    generator = torch.Generator().manual_seed(11)
    kl = model.kl_per_group(x, generator)  # (B, L)
    noise_generator = torch.Generator().manual_seed(11)
    _, groups = model.top_down(4, lambda i, p, q: q.rsample(torch.randn(q.mean.shape, generator=noise_generator)),
                               model.bottom_up(x))  # the same draws as kl_per_group
    for index, group in enumerate(groups):
        delta_mean = group.posterior.mean - group.prior.mean
        prior_var = group.prior.log_var.exp()
        delta_var = (group.posterior.log_var - group.prior.log_var).exp()
        closed_form = 0.5 * (delta_mean**2 / prior_var + delta_var - 1 - delta_var.log())
        torch.testing.assert_close(kl[:, index], closed_form.flatten(1).sum(1))
    assert (kl > 0).all()


def test_kl_balancing_weights_follow_nvaes_square_rule():
    alphas = kl_balance_alphas((1, 2, 4))  # 4^s / groups: 1, 2, 2, 4, 4, 4, 4 (minimum 1)
    torch.testing.assert_close(alphas, torch.tensor([1.0, 2, 2, 4, 4, 4, 4]))
    kl = torch.tensor([3.99, 0.99, 1.99])  # + 0.01: 4, 1, 2; sum 7
    coefficients = kl_balance_coefficients(kl, torch.tensor([1.0, 2.0, 2.0]))
    raw = torch.tensor([4 / 1 * 7, 1 / 2 * 7, 2 / 2 * 7])
    torch.testing.assert_close(coefficients, raw / raw.mean())


def test_kl_balancing_applies_during_warm_up_only():
    config = HierarchicalVAEConfig(image_shape=(1, 4, 4), channels=8, groups_per_scale=(1, 2), latent_channels=2,
                                   kl_warmup_steps=10)
    torch.manual_seed(0)
    model = HierarchicalVAE(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(2)).round()

    def total(step: int, balancing: bool) -> float:
        model.config = config.model_copy(update={"kl_balancing": balancing})
        return model.loss(Batch.of(x, generator=torch.Generator().manual_seed(3)), step=step).total.item()

    assert total(5, True) != pytest.approx(total(5, False), rel=1e-6)  # warm-up: balanced
    assert total(10, True) == total(10, False)  # after warm-up: the plain ELBO


def test_power_iteration_finds_the_largest_singular_value():
    layer = nn.Linear(7, 5)
    penalty = SpectralPenalty([layer], generator=torch.Generator().manual_seed(0))
    penalty.power_iteration(steps=200)
    expected = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    torch.testing.assert_close(penalty().detach(), expected, rtol=1e-4, atol=1e-6)


def test_spectral_term_covers_every_convolution_and_the_dense_group_but_not_the_gates():
    """Transposed convolutions (model.resampling=strided) and the dense group's linear layers are penalised; the
    squeeze-excitation gates' linear layers are not; the term is the sum of u^T W v over exactly those layers."""
    config = TINY_DENSE_TOP.model_copy(update={"spectral_regularisation": 0.1, "downsamples": 2, "image_shape": (1, 8, 8),
                                               "cells_per_resolution": 1})
    model = HierarchicalVAE(config)
    covered = {id(layer) for layer in model.spectral.layers}
    transposed = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    dense = [m for m in model.dense_top.modules() if isinstance(m, nn.Linear)]
    gates = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".gate." in name]
    assert transposed and len(dense) == 4 and gates
    assert all(id(m) in covered for m in [*transposed, *dense])
    assert not any(id(m) in covered for m in gates)
    assert covered == {id(m) for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)} | {
        id(m) for m in dense}
    by_hand = sum(getattr(model.spectral, f"u{i}") @ layer.weight.flatten(1) @ getattr(model.spectral, f"v{i}")
                  for i, layer in enumerate(model.spectral.layers))
    torch.testing.assert_close(model.spectral(), by_hand)


def test_sampling_temperature_per_group(three_groups):
    model = three_groups.float()
    at_zero_noise = model.sample(3, torch.Generator().manual_seed(0), temperature=[1e-6, 1e-6, 1e-6])
    again = model.sample(3, torch.Generator().manual_seed(1), temperature=[1e-6, 1e-6, 1e-6])
    torch.testing.assert_close(at_zero_noise, again, rtol=0, atol=1e-5)  # the prior means' path: no noise left
    hot = model.sample(3, torch.Generator().manual_seed(0), temperature=1.0)
    assert not torch.allclose(hot, at_zero_noise, atol=1e-3)
    with pytest.raises(ValueError, match="temperatures"):
        model.sample(3, temperature=[1.0, 1.0])


def test_the_image_size_must_divide_by_the_scales():
    with pytest.raises(ValueError, match="divisible by 8"):
        HierarchicalVAE(HierarchicalVAEConfig(image_shape=(1, 12, 12), downsamples=1, groups_per_scale=(1, 1, 1)))



@pytest.mark.parametrize("cells_per_resolution", [0, 2])
@pytest.mark.parametrize("resampling, resolutions_with_cells", [("nearest", 2), ("strided", 1)])
def test_cells_per_resolution_sets_the_cells_between_the_image_and_the_latent_scales(
        cells_per_resolution, resampling, resolutions_with_cells):
    """With downsamples=2 on 16x16 images: cells at 16x16 and 8x8 ('nearest'), at 8x8 only ('strided': no map of
    `channels` at the image's resolution)."""
    from vaekit.nn.residual import ResidualCell

    config = HierarchicalVAEConfig(image_shape=(1, 16, 16), downsamples=2, groups_per_scale=(1, 2), cells_per_group=1,
                                   cells_per_resolution=cells_per_resolution, resampling=resampling)
    model = HierarchicalVAE(config)
    cells = sum(isinstance(m, ResidualCell) for m in model.modules())
    assert cells == 2 * 3 * 1 + 2 * resolutions_with_cells * cells_per_resolution  # both towers, 3 groups
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)).round()
    assert model.reconstruct(x).shape == x.shape
    full_resolution_maps = []
    model.stem.register_forward_hook(lambda module, inputs, output: full_resolution_maps.append(output.shape[-1]))
    model.reconstruct(x)
    assert full_resolution_maps == [16 if resampling == "nearest" else 8]


def test_strided_resampling_needs_a_downsample():
    with pytest.raises(ValueError, match="downsamples >= 1"):
        HierarchicalVAE(HierarchicalVAEConfig(image_shape=(1, 4, 4), downsamples=0, groups_per_scale=(1, 1),
                                              resampling="strided"))

def test_logged_kl_per_group_sums_to_the_kl(three_groups):
    model = three_groups.float()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(12)).round()
    losses = model.loss(Batch.of(x, generator=torch.Generator().manual_seed(13)))
    per_group = sum(losses.terms[f"kl_group_{i}"] for i in range(3))
    torch.testing.assert_close(per_group, losses.terms["kl"])
    assert math.isfinite(losses.total.item())


def test_trains_on_generated_colour_images_with_the_logistic_mixture(tmp_path):
    """A user's colour array file (N, H, W, 3) uint8: 3 channels, discretised logistic mixture, a few steps."""
    import numpy as np

    import vaekit
    from vaekit.config import load_config

    images = colour_stripes(60, 8, 32)  # (60, 8, 8, 3)
    np.save(tmp_path / "colour.npy", images)
    config = load_config("digits-hvae", [
        f"out_dir={tmp_path}", "name=colour", "data={name: images, path: " + str(tmp_path / "colour.npy") + "}",
        "model.likelihood=logistic_mixture", "model.num_mixtures=2", "model.channels=8", "train.steps=4",
        "train.batch_size=16", "train.eval_every=4", "train.checkpoint_every=4", "train.log_every=2",
        "eval.num_importance_samples=3", "eval.num_images=8", "eval.num_grid_images=4"])
    run_dir = vaekit.train(config, quiet=True)
    model = vaekit.load(run_dir)
    assert model.config.image_shape == (3, 8, 8)
    samples = model.sample(2, torch.Generator().manual_seed(0), temperature=0.8)
    assert samples.shape == (2, 3, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    assert (run_dir / "samples/step-4-t0.7.png").is_file()
    record = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    assert '"bits_per_dim"' in record and '"active_groups"' in record
