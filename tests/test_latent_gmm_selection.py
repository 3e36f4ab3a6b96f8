"""Latent GMM model selection: held-out choice of size and covariance, fixed configs, save/load, overfit warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from vaekit import priors
from vaekit.models import build_model
from vaekit.models.latent_gmm import LatentGMM, LatentGMMConfig
from vaekit.priors import select_mixture


def _model(dim: int, **settings) -> LatentGMM:
    return build_model(LatentGMMConfig(codes={"shape": (dim,), "dtype": "float32"}, **settings))


def _planted_codes(num_codes: int, seed: int = 0) -> torch.Tensor:
    """Codes (N, 4) from a planted 8-component, unit-covariance mixture with well-separated centres."""
    centres = 6 * torch.randn(8, 4, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    return centres[torch.randint(0, 8, (num_codes,), generator=g)] + torch.randn(num_codes, 4, generator=g)


def _overfit_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "latent GMM overfits" in str(w.message)]


def test_selection_picks_fewer_components_on_few_codes_than_on_many_from_the_same_mixture():
    few = _model(4).fit_codes(_planted_codes(40))
    many = _model(4).fit_codes(_planted_codes(4000))
    assert few["num_components"] < many["num_components"]
    assert many["num_components"] >= 8  # enough components for the planted mixture


def test_selection_scores_held_out_codes_and_keeps_the_best_candidate():
    scale_tril = torch.tensor([[1.0, 0.0], [0.9, 0.3]])  # strongly correlated axes, det 0.3
    codes = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) @ scale_tril.T
    choice = select_mixture(codes, [(1, "diag"), (1, "full")], held_out_fraction=0.2, max_iter=100, seed=0,
                            reg_covar=1e-6)
    assert (choice.num_components, choice.covariance_type) == (1, "full")
    negative_entropy = -(1 + torch.log(torch.tensor(2 * torch.pi))) - torch.log(torch.tensor(0.3))  # E log N(z; 0, LL^T)
    assert choice.held_out_log_likelihood == pytest.approx(negative_entropy.item(), abs=0.2)


def test_selection_fits_only_candidates_the_fit_codes_support(monkeypatch):
    fitted = []
    original = priors.fit_sklearn_mixture

    def recording(codes, num_components, covariance_type, **kwargs):
        fitted.append((num_components, covariance_type))
        return original(codes, num_components, covariance_type, **kwargs)

    monkeypatch.setattr(priors, "fit_sklearn_mixture", recording)
    codes = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))  # 32 fit codes, 8 held out
    select_mixture(codes, [(1, "full"), (2, "full"), (16, "diag"), (32, "diag")], held_out_fraction=0.2,
                   max_iter=10, seed=0, reg_covar=1e-6)
    assert fitted == [(1, "full"), (16, "diag")]  # a full 16-D covariance needs 17 codes, a diagonal one 2
    fitted.clear()
    choice = select_mixture(codes, [(4, "full"), (8, "diag")], held_out_fraction=0.2, max_iter=10, seed=0,
                            reg_covar=1e-6)
    assert fitted == [(8, "diag")] and choice.num_components == 8  # none supported: the fewest parameters


def test_a_config_that_fixes_components_and_covariance_type_is_honoured():
    model = _model(4, num_components=3, covariance_type="full")
    metrics = model.fit_codes(_planted_codes(2000))
    assert model.mixture.log_weights.shape == (3,) and model.mixture.num_components == 3
    assert metrics["num_components"] == 3.0 and metrics["diagonal_covariance"] == 0.0
    assert model.mixture.scale_tril.tril(-1).abs().sum() > 0  # full factors have off-diagonal entries


def test_a_fixed_diagonal_covariance_is_stored_as_diagonal_factors_in_the_largest_grid_size():
    model = _model(4, covariance_type="diag", component_grid=(1, 2, 16))
    metrics = model.fit_codes(_planted_codes(2000))
    assert metrics["diagonal_covariance"] == 1.0
    assert model.mixture.means.shape == (16, 4)  # buffers sized by the config, not the data
    assert torch.equal(model.mixture.scale_tril, torch.diag_embed(model.mixture.scale_tril.diagonal(dim1=-2, dim2=-1)))
    torch.testing.assert_close(model.mixture.log_weights.exp().sum(), torch.tensor(1.0))


def test_a_fitted_model_saved_and_loaded_into_build_model_gives_identical_log_prob_and_samples(tmp_path):
    model = _model(4)
    metrics = model.fit_codes(_planted_codes(400))
    assert metrics["num_components"] < 32  # unused slots present in the saved weights
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    config = LatentGMMConfig.model_validate(model.config.model_dump())
    loaded = build_model(config)
    loaded.load_state_dict(load_file(tmp_path / "model.safetensors"))
    z = _planted_codes(50, seed=1)
    assert torch.equal(loaded.mixture.log_prob(z), model.mixture.log_prob(z))
    assert torch.isfinite(loaded.mixture.log_prob(z)).all()
    draws = [m.mixture.sample(100, torch.Generator().manual_seed(2)) for m in (model, loaded)]
    assert torch.equal(draws[0], draws[1])


def test_the_overfit_warning_fires_on_32_full_components_over_60_codes_in_16d():
    model = _model(16, num_components=32, covariance_type="full")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = model.fit_codes(torch.randn(60, 16, generator=torch.Generator().manual_seed(0)))
    assert len(_overfit_warnings(caught)) == 1 and metrics["overfit_warning"] == 1.0
    assert metrics["train_log_likelihood"] - metrics["held_out_log_likelihood"] > 16 * model.config.overfit_gap_per_dim


def test_the_overfit_warning_stays_silent_on_a_well_specified_mixture():
    model = _model(16, num_components=1, covariance_type="full")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = model.fit_codes(torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)))
    assert _overfit_warnings(caught) == [] and metrics["overfit_warning"] == 0.0
    assert abs(metrics["overfit_gap_per_dim"]) < 0.05
