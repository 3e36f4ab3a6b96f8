"""Point-cloud AE: PointNet's permutation invariance, and training through the shared engine."""

import json

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import vaekit
from vaekit.config import load_config
from vaekit.data import load_data
from vaekit.nn.pointnet import PointNetEncoder


def _mean_assignment_emd(clouds, reconstructions):
    """Mean exact EMD by scipy (not vaekit.emd): mean Euclidean length of an optimal bijection."""
    total = 0.0
    for a, b in zip(clouds, reconstructions):
        cost = torch.cdist(a.double(), b.double()).numpy()
        rows, cols = linear_sum_assignment(cost)
        total += cost[rows, cols].mean()
    return total / len(clouds)


def test_pointnet_encoder_is_permutation_invariant():
    torch.manual_seed(0)
    encoder = PointNetEncoder([16, 32, 8]).eval()
    g = torch.Generator().manual_seed(1)
    points = torch.randn(4, 100, 3, generator=g)
    shuffled = points[:, torch.randperm(100, generator=g)]
    torch.testing.assert_close(encoder(points), encoder(shuffled))


def test_pointcloud_ae_trains_on_procedural_shapes(tmp_path):
    config = load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=12",
        "data.num_points=256", "model.latent_dim=32", "train.steps=150", "train.batch_size=16",
        "train.eval_every=150", "train.checkpoint_every=150", "train.log_every=50", "train.num_threads=1"])
    run_dir = vaekit.train(config, quiet=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["chamfer"] for r in records if r["split"] == "train"]
    assert train[-1] < 0.5 * train[0]
    test = next(r for r in records if r["split"] == "test")
    assert test["num_clouds"] == 15 and test["reconstruction_chamfer"] < 0.05
    assert test["svm_accuracy"] >= 0.8  # five procedural categories: chance is 0.2
    assert (run_dir / "reconstructions/step-150.png").is_file() and (run_dir / "interpolations/step-150.png").is_file()
    model = vaekit.load(run_dir)
    clouds = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(0))
    assert model.config.num_points == 256 and model.latent_codes(clouds).shape == (2, 32)


def test_pointcloud_ae_trains_with_the_emd_loss_and_scores_exact_emd(tmp_path):
    config = load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=4",
        "data.num_points=64", "model.latent_dim=8", "model.loss=emd", "train.steps=40", "train.batch_size=8",
        "train.eval_every=40", "train.checkpoint_every=40", "train.log_every=10", "train.num_threads=1",
        "eval.point_cloud_emd=true"])
    run_dir = vaekit.train(config, quiet=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["emd"] for r in records if r["split"] == "train"]
    assert train[-1] < 0.7 * train[0]
    test = next(r for r in records if r["split"] == "test")
    model = vaekit.load(run_dir)
    clouds = load_data(model.run_config.data).test
    with torch.no_grad():
        expected = _mean_assignment_emd(clouds, model.reconstruct(clouds))
    assert test["reconstruction_emd"] == pytest.approx(expected, rel=1e-5)


def test_pointcloud_ae_trains_with_the_sliced_wasserstein_loss_and_lowers_the_exact_emd(tmp_path):
    config = load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=4",
        "data.num_points=64", "model.latent_dim=8", "model.loss=sliced", "model.sliced_directions=32",
        "train.steps=60", "train.batch_size=8", "train.eval_every=60", "train.checkpoint_every=60",
        "train.log_every=10", "train.num_threads=1", "eval.point_cloud_emd=true", "train.precision=fp32"])
    torch.manual_seed(0)
    untrained = vaekit.models.build_model(config.model.model_copy(update={"num_points": 64}))
    clouds = load_data(config.data).test
    with torch.no_grad():
        before = _mean_assignment_emd(clouds, untrained.reconstruct(clouds))
    run_dir = vaekit.train(config, quiet=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r["sliced_w1"] for r in records if r["split"] == "train"]
    assert train[-1] < 0.7 * train[0]
    test = next(r for r in records if r["split"] == "test")
    assert test["reconstruction_emd"] < 0.7 * before


def test_latent_gan_and_gmm_sample_clouds_through_the_frozen_ae(tmp_path):
    parent = vaekit.train(load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=6",
        "data.num_points=128", "model.latent_dim=8", "train.steps=20", "train.batch_size=8",
        "train.eval_every=20", "train.checkpoint_every=20", "train.num_threads=1"]), quiet=True)
    for preset, extra in [("pointcloud-latent-gan", ["model.loss=wgan-gp", "train.steps=6", "train.eval_every=6",
                                                     "train.checkpoint_every=6", "train.batch_size=8"]),
                          ("pointcloud-latent-gmm", ["model.num_components=2"])]:
        run_dir = vaekit.train(load_config(preset, [f"out_dir={tmp_path}", f"parent={parent}", *extra]), quiet=True)
        model = vaekit.load(run_dir)
        clouds = model.sample(3, generator=torch.Generator().manual_seed(0))
        assert clouds.shape == (3, 128, 3) and torch.isfinite(clouds).all()
        assert list((run_dir / "samples").glob("*.png"))


def test_latent_gan_encodes_the_training_split_once_per_run(tmp_path, monkeypatch):
    from vaekit.models.pointcloud import PointCloudAE

    parent = vaekit.train(load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=6",
        "data.num_points=64", "model.latent_dim=8", "train.steps=2", "train.batch_size=8",
        "train.eval_every=2", "train.checkpoint_every=2", "train.num_threads=1"]), quiet=True)
    encoded: list[int] = []
    original = PointCloudAE.latent_codes

    def counting(self, x):
        encoded.append(len(x))
        return original(self, x)

    monkeypatch.setattr(PointCloudAE, "latent_codes", counting)
    vaekit.train(load_config("pointcloud-latent-gan", [
        f"out_dir={tmp_path}", f"parent={parent}", "train.steps=12", "train.eval_every=100",
        "train.checkpoint_every=12", "train.batch_size=4"]), quiet=True)
    train_size = len(load_data(vaekit.load(parent).run_config.data).train)
    assert encoded == [train_size]  # 12 steps of 4 rows, 2 updates each: without the cache 24 encodings


def test_cli_pictures_for_point_clouds(tmp_path):
    from vaekit.cli import main

    run_dir = vaekit.train(load_config("pointcloud-ae", [
        f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "data.shapes_per_category=4",
        "data.num_points=64", "model.latent_dim=8", "train.steps=2", "train.batch_size=8",
        "train.eval_every=2", "train.checkpoint_every=2", "train.num_threads=1"]), quiet=True)
    for command in ("reconstruct", "interpolate"):
        out = tmp_path / f"{command}.png"
        assert main([command, str(run_dir), "--out", str(out)]) == 0 and out.stat().st_size > 1000
    assert main(["traverse", str(run_dir), "--out", str(tmp_path / "t.png")]) == 2
