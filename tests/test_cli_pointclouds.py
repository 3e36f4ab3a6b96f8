"""The CLI on point-cloud runs (AE, l-GMM, l-GAN): renders plus the raw clouds as .npy and .ply, and one
clear message (exit 2) for each verb a model cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from distributed_cases import COMMON, case_config
from PIL import Image

import vaekit
from vaekit.cli import main
from vaekit.config import load_config
from vaekit.data import load_data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny point-cloud AE (64 points) and an l-GMM and l-GAN on its codes; and the toy discrete-code model."""
    out_dir = tmp_path_factory.mktemp("pointcloud-cli")
    for case in ("pointcloud-ae", "latent-gan", "toy-codebook", "vae"):
        vaekit.train(case_config(case, out_dir, f"{case}-1"), quiet=True)
    gmm = load_config("pointcloud-latent-gmm", [f"out_dir={out_dir}", "name=latent-gmm-1",
                                                f"parent={out_dir / 'pointcloud-ae-1'}", *COMMON,
                                                "model={name: latent-gmm, num_components: 2}"])
    vaekit.train(gmm, quiet=True)
    return out_dir


def _clouds_written(stem, count, num_points=64):
    clouds = np.load(f"{stem}.npy", allow_pickle=False)
    assert clouds.shape == (count, num_points, 3) and clouds.dtype == np.float32 and np.isfinite(clouds).all()
    for index in range(count):
        cloud = trimesh.load(f"{stem}-{index}.ply")
        np.testing.assert_allclose(np.asarray(cloud.vertices), clouds[index], rtol=0, atol=1e-6)
    return clouds


@pytest.mark.parametrize("case", ["latent-gan", "latent-gmm"])
def test_sample_draws_point_clouds_from_latent_generators(runs, tmp_path, case, capsys):
    out = tmp_path / "samples.png"
    assert main(["sample", str(runs / f"{case}-1"), "--num", "4", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.width > 200 and image.height > 100
    clouds = _clouds_written(tmp_path / "samples", 4)
    assert clouds.std(axis=(1, 2)).min() > 1e-3  # real shapes, not a point
    assert str(tmp_path / "samples.npy") in capsys.readouterr().out


@pytest.mark.parametrize("case", ["pointcloud-ae", "latent-gmm"])
def test_reconstruct_writes_test_clouds_above_their_reconstructions(runs, tmp_path, case):
    out = tmp_path / "reconstruct.png"
    assert main(["reconstruct", str(runs / f"{case}-1"), "--num", "8", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    test = load_data(vaekit.load(runs / f"{case}-1").run_config.data).test[:5].numpy()
    clouds = _clouds_written(tmp_path / "reconstruct", 2 * len(test))
    np.testing.assert_allclose(clouds[: len(test)], test, rtol=0, atol=1e-6)  # the inputs, then their reconstructions
    own = np.abs(clouds[len(test):] - test).mean(axis=(1, 2))
    assert np.isfinite(own).all() and own.max() < np.abs(test).max()


def test_interpolate_writes_clouds_between_two_test_shapes(runs, tmp_path):
    out = tmp_path / "interpolate.png"
    assert main(["interpolate", str(runs / "pointcloud-ae-1"), "--num", "8", "--out", str(out)]) == 0
    clouds = _clouds_written(tmp_path / "interpolate", 5)
    steps = np.abs(np.diff(clouds, axis=0)).mean(axis=(1, 2))  # a path: consecutive clouds differ, and not by jumps
    assert (steps > 0).all()


@pytest.mark.parametrize("verb,case,message", [
    ("sample", "pointcloud-ae", "cannot sample"),
    ("traverse", "pointcloud-ae", "for point clouds use interpolate"),
    ("traverse", "toy-codebook", "cannot traverse continuous code dimensions"),
    ("interpolate", "toy-codebook", "cannot interpolate between continuous codes"),
    ("interpolate", "latent-gmm", "cannot interpolate between continuous codes"),
    ("sample", "toy-codebook", "cannot sample"),
])
def test_a_verb_the_model_cannot_do_exits_2_with_one_message(runs, tmp_path, verb, case, message, capsys):
    assert main([verb, str(runs / f"{case}-1"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_eval_plots_on_a_point_cloud_run_exit_2_with_one_message(runs, tmp_path, capsys):
    assert main(["eval", str(runs / "pointcloud-ae-1"), "--plots", "--out", str(tmp_path / "eval.json")]) == 2
    assert "no Gaussian encoder" in capsys.readouterr().err


def test_an_unwritable_output_path_exits_2_with_one_message(runs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["sample", str(runs / "vae-1"), "--num", "4", "--out", str(blocker / "grid.png")]) == 2
    assert capsys.readouterr().err.startswith("vaekit: error:")
