"""Frechet distance and KID: known answers on Gaussians, zero for identical sets; the shipped classifier."""

import numpy as np
import pytest
import torch

from vaekit.divergences import mmd_unbiased, polynomial_kernel
from vaekit.metrics import features
from vaekit.metrics.features import frechet_distance, kernel_inception_distance


def test_frechet_distance_matches_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2.0 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # N(0, I) vs N(m, 4I): |m|^2 + 3 * (1 + 4 - 2 * 2) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    shifted, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=300)
    assert abs(same) < 0.01 < shifted


def test_polynomial_mmd_matches_numpy():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3
    xx, yy, xy = k(x.numpy(), x.numpy()), k(y.numpy(), y.numpy()), k(x.numpy(), y.numpy())
    expected = (xx.sum() - np.trace(xx)) / 42 + (yy.sum() - np.trace(yy)) / 20 - 2 * xy.mean()
    assert mmd_unbiased(x, y, kernel="polynomial").item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(polynomial_kernel(x, y), torch.from_numpy(xy))


@pytest.mark.skipif(not features.CLASSIFIER_WEIGHTS.is_file(), reason="classifier not trained yet")
def test_shipped_classifier_reaches_its_recorded_accuracy():
    from vaekit.config import DataConfig
    from vaekit.data import load_image_data
    from vaekit.errors import DataError

    try:
        data = load_image_data(DataConfig(name="fashion_mnist"))
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    classifier = features.load_classifier()
    with torch.inference_mode():
        predictions = classifier(data.test[:2000]).argmax(1)
    accuracy = (predictions == data.test_labels[:2000]).double().mean().item()
    assert accuracy == pytest.approx(features.classifier_card()["test_accuracy"], abs=0.02)
    assert accuracy > 0.88
    assert features.classifier_features(data.test[:10]).shape == (10, 128)


@pytest.mark.skipif(not features.CLASSIFIER_WEIGHTS.is_file(), reason="classifier not trained yet")
def test_eval_scores_fashion_samples_by_fd_and_kid(tmp_path):
    import vaekit
    from vaekit.config import load_config
    from vaekit.data import load_image_data
    from vaekit.errors import DataError
    from vaekit.evaluation import sample_quality

    try:
        load_image_data(load_config("fashion-mnist-vae").data.model_copy(update={"max_train": 10, "max_test": 10}))
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    run_dir = vaekit.train(load_config("fashion-mnist-vae", [
        f"out_dir={tmp_path}", "data.max_train=500", "data.max_test=500", "model.architecture=mlp",
        "model.hidden_dims=[64]", "model.latent_dim=4", "train.steps=30", "train.batch_size=50",
        "train.precision=fp32", "train.eval_every=30", "train.checkpoint_every=30", "train.num_threads=1",
        "eval.num_importance_samples=5", "eval.num_images=50", "eval.sample_quality_samples=500"]), quiet=True)
    model = vaekit.load(run_dir)
    data = load_image_data(model.run_config.data)
    assert data.test_grey is not None and not torch.equal(data.test_grey, data.test)
    scores = sample_quality(model, data, 500, seed=0)
    assert scores["fd_classifier"] > 0 and np.isfinite(scores["kid_classifier"])
    # the real test images against themselves score ~0: the metric can tell good from bad
    half = data.test_grey[:250], data.test_grey[250:]
    assert frechet_distance(features.classifier_features(half[0]), features.classifier_features(half[1])) < scores["fd_classifier"]
    record = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    assert "fd_classifier" in record
