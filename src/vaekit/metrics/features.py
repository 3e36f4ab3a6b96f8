"""Sample quality in the features of vaekit's own Fashion-MNIST classifier: Frechet distance and KID.

The classifier (`FashionClassifier`) was trained once with a fixed seed by
`scripts/train_fashion_classifier.py` and ships in `vaekit/assets/` as safetensors with a JSON card
(seed, epochs, test accuracy), so every machine scores with the same features and nothing is
downloaded. These are "FD in vaekit's Fashion-MNIST classifier features", not Inception FID.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy import linalg
from torch import Tensor, nn

from vaekit.divergences import mmd_unbiased
from vaekit.errors import CheckpointError

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
CLASSIFIER_WEIGHTS = ASSET_DIR / "fashion_mnist_classifier.safetensors"
CLASSIFIER_CARD = ASSET_DIR / "fashion_mnist_classifier.json"
FEATURE_DIM = 128
FEATURE_CHUNK = 1000  # images through the classifier at once


class FashionClassifier(nn.Module):
    """A small CNN for 28x28 grey images: two conv blocks, a 128-wide feature layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),  # (B, 128)
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def load_classifier() -> FashionClassifier:
    """The shipped classifier in eval mode."""
    if not CLASSIFIER_WEIGHTS.is_file():
        raise CheckpointError(f"{CLASSIFIER_WEIGHTS}: missing; run scripts/train_fashion_classifier.py")
    model = FashionClassifier()
    model.load_state_dict(load_file(CLASSIFIER_WEIGHTS))
    return model.eval()


def classifier_card() -> dict:
    return json.loads(CLASSIFIER_CARD.read_text())


@torch.inference_mode()
def classifier_features(images: Tensor, classifier: FashionClassifier | None = None,
                        chunk: int = FEATURE_CHUNK) -> Tensor:
    """128-d penultimate features of images (N, 1, 28, 28) in [0, 1]: (N, 128), float64."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected Fashion-MNIST images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
    classifier = classifier or load_classifier()
    return torch.cat([classifier.features(c.float()) for c in images.split(chunk)]).double()


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) between Gaussian fits (Heusel et al. 2017, eq. 6).

    1e-6 is added to both covariance diagonals (as pytorch-fid does when the product is singular):
    ReLU features have dead units, whose zero variance makes S_a S_b singular.
    """
    a, b = features_a.double().cpu().numpy(), features_b.double().cpu().numpy()
    mean_a, mean_b = a.mean(0), b.mean(0)
    offset = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + offset, np.cov(b, rowvar=False) + offset
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real  # discard the tiny imaginary parts of numerical error
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * root))


def kernel_inception_distance(features_a: Tensor, features_b: Tensor, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std over random subsets of the unbiased MMD^2 with the cubic kernel."""
    generator = torch.Generator().manual_seed(seed)
    size = min(subset_size, len(features_a), len(features_b))
    values = []
    for _ in range(subsets):
        a = features_a[torch.randperm(len(features_a), generator=generator)[:size]]
        b = features_b[torch.randperm(len(features_b), generator=generator)[:size]]
        values.append(mmd_unbiased(a, b, kernel="polynomial").item())
    return float(np.mean(values)), float(np.std(values))
