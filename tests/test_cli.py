"""The command line: every subcommand on a trained run, and one clear message (exit 2) on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vaekit.cli import main
from vaekit.config import load_config, preset_names
from vaekit.objectives import iwae_bound


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vae:" in out and "latent-gmm:" in out and "latent_dim" in out


def test_presets_lists_the_shipped_configs(capsys):
    assert main(["presets"]) == 0
    assert "digits-vae" in capsys.readouterr().out


def test_info_reports_model_step_and_parameters(trained_digits_run, capsys):
    assert main(["info", str(trained_digits_run)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "vae" and info["step"] == 300
    assert info["parameters"] == 64 * 64 + 64 + 64 * 8 + 8 + 4 * 64 + 64 + 64 * 64 + 64
    assert info["versions"]["torch"] == torch.__version__


def test_sample_writes_a_png_grid(trained_digits_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(trained_digits_run), "--num", "16", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.width > 8 * 8 and image.width == image.height  # 4x4 tiles of enlarged digits


@pytest.mark.parametrize("command", ["reconstruct", "traverse", "interpolate"])
def test_picture_commands_write_pngs(trained_digits_run, tmp_path, command):
    out = tmp_path / f"{command}.png"
    assert main([command, str(trained_digits_run), "--num", "8", "--out", str(out)]) == 0
    assert out.stat().st_size > 100


def test_eval_writes_json_with_likelihood_and_diagnostics(trained_digits_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_digits_run), "--importance-samples", "50", "--num-images", "30",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["importance_samples"] == 50 and results["num_images"] == 30
    assert results["elbo"] <= -results["nll"] + 1e-6
    assert 0 <= results["active_units"] <= results["latent_dim"] == 4
    assert results["bits_per_dim"] == pytest.approx(results["nll"] / (64 * 0.6931471805599453))
    bar = capsys.readouterr().err
    assert "NLL, K=50" in bar and "30/30" in bar and "nll=" in bar  # progress of the long part, on stderr


def test_eval_quiet_shows_no_progress_bar(trained_digits_run, tmp_path, capsys):
    assert main(["eval", str(trained_digits_run), "--importance-samples", "5", "--num-images", "10",
                 "--out", str(tmp_path / "eval.json"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["num_images"] == 10


def test_eval_plots_draw_the_posterior_per_dimension(trained_digits_run, tmp_path, capsys):
    from PIL import Image

    assert main(["eval", str(trained_digits_run), "--importance-samples", "5", "--num-images", "30",
                 "--out", str(tmp_path / "eval.json"), "--plots"]) == 0
    picture = trained_digits_run / "plots" / "posterior.png"
    assert str(picture) in capsys.readouterr().out
    with Image.open(picture) as image:
        assert image.size[0] >= 600 and image.size[1] == 600  # two panels, one box per latent dimension


def test_eval_plots_refuse_a_model_without_a_gaussian_encoder(tmp_path, capsys):
    assert main(["train", "--config", "digits-wae-mmd", f"out_dir={tmp_path}", "train.steps=2", "train.eval_every=2",
                 "train.checkpoint_every=2", "--quiet"]) == 0
    run_dir = next(tmp_path.iterdir())
    assert main(["eval", str(run_dir), "--plots", "--out", str(tmp_path / "eval.json")]) == 2
    assert "no Gaussian encoder" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_message(tmp_path, capsys):
    assert main(["train", f"out_dir={tmp_path}", "train.stepz=3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error: invalid config") and "valid keys of train" in err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_iwae_bound_exceeds_elbo_and_grows_with_k_on_a_trained_model(trained_digits_run):
    import vaekit
    from vaekit.data import load_image_data

    model = vaekit.load(trained_digits_run)
    x = load_image_data(model.run_config.data).test[:100]
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        bounds = {k: torch.stack([iwae_bound(model.log_weights(x, k, generator)).mean() for _ in range(20)]).mean()
                  for k in (1, 5, 50)}
    assert bounds[1] < bounds[5] < bounds[50]
    assert bounds[50] - bounds[1] > 0.1  # clearly, not by noise


@pytest.mark.parametrize("preset", preset_names())
def test_every_shipped_preset_validates(preset):
    config = load_config(preset)
    assert config.name == preset  # a preset's run directory is named after it


def test_sample_temperature_narrows_the_samples(trained_digits_run, tmp_path):
    import numpy as np

    spreads = {}
    for temperature in ("0.001", "1.0"):
        out = tmp_path / f"t{temperature}.png"
        assert main(["sample", str(trained_digits_run), "--num", "16", "--temperature", temperature,
                     "--out", str(out)]) == 0
        with Image.open(out) as image:
            tiles = np.asarray(image.convert("L"), dtype=np.float64)
        spreads[temperature] = tiles.std()
    # at temperature ~0 every tile is the decoding of z = 0: the grid is 16 copies of one digit
    assert spreads["0.001"] < spreads["1.0"]
    with pytest.raises(SystemExit):
        main(["sample", str(trained_digits_run), "--temperature", "0"])


def test_the_run_directory_holds_a_sample_grid_per_temperature(tmp_path):
    from conftest import tiny_config

    import vaekit

    run_dir = vaekit.train(tiny_config(tmp_path, "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
                                       "eval.sample_temperatures=[0.5, 1.0]"), quiet=True)
    assert (run_dir / "samples/step-2.png").is_file() and (run_dir / "samples/step-2-t0.5.png").is_file()
