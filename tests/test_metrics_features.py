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
