"""Train vaekit's Fashion-MNIST feature classifier once (fixed seed) and write it into the package.

    python scripts/train_fashion_classifier.py            # ~2-4 minutes on 2 CPU cores

Writes src/vaekit/assets/fashion_mnist_classifier.safetensors and .json (seed, epochs, test
accuracy, versions). The FD/KID metrics of vaekit.metrics.features score samples in its 128-d
penultimate features. Grey-level images in [0, 1] (not binarised), the official split.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save

from vaekit.config import DataConfig
from vaekit.data import load_image_data
from vaekit.io import atomic_write_bytes, atomic_write_json
from vaekit.metrics.features import CLASSIFIER_CARD, CLASSIFIER_WEIGHTS, FashionClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_image_data(DataConfig(name="fashion_mnist"))
    model = FashionClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.train), generator=generator)
        for batch in order.split(args.batch_size):
            loss = F.cross_entropy(model(data.train[batch]), data.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy = test_accuracy(model, data.test, data.test_labels)
        print(f"epoch {epoch + 1}: test accuracy {accuracy:.4f} ({time.time() - started:.0f} s)")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(CLASSIFIER_WEIGHTS, save(state))
    atomic_write_json(CLASSIFIER_CARD, {
        "script": "scripts/train_fashion_classifier.py", "seed": args.seed, "epochs": args.epochs,
        "batch_size": args.batch_size, "lr": args.lr, "test_accuracy": accuracy, "data": "Fashion-MNIST official split, grey levels / 255",
        "feature_dim": 128, "torch": torch.__version__, "python": platform.python_version(),
        "train_seconds": round(time.time() - started, 1),
    })


@torch.inference_mode()
def test_accuracy(model: FashionClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(c).argmax(1) for c in images.split(1000)])
    return (predictions == labels).double().mean().item()


if __name__ == "__main__":
    main()
