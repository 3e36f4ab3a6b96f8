"""Shared fixtures: tiny, fast runs on the embedded digits (fixed seeds only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import register_toy_models

from vaekit.config import RunConfig, load_config

register_toy_models()  # the engine-contract test model, for every test module and the contract tests


def tiny_config(out_dir: Path, *overrides: str, name: str = "tiny") -> RunConfig:
    """The digits VAE preset shrunk to seconds: small nets, few steps, few importance samples."""
    return load_config(
        "digits-vae",
        [
            f"out_dir={out_dir}",
            f"name={name}",
            "model.hidden_dims=[64]",
            "model.latent_dim=4",
            "train.steps=30",
            "train.batch_size=32",
            "train.log_every=5",
            "train.eval_every=30",
            "train.checkpoint_every=10",
            "train.num_threads=1",
            "eval.num_importance_samples=20",
            "eval.num_images=40",
            "eval.num_grid_images=16",
            *overrides,
        ],
    )


def colour_stripes(count: int, size: int, max_frequency: int) -> np.ndarray:
    """A user's colour images: (count, size, size, 3) uint8 stripes (rows * a + cols * b) % 256 per channel, seeded."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:size, 0:size]
    return np.stack([np.stack([(rows * a + cols * b) % 256 for a, b in rng.integers(1, max_frequency, size=(3, 2))],
                              -1) for _ in range(count)]).astype(np.uint8)


@pytest.fixture(autouse=True)
def _fixed_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory) -> Path:
    """One tiny digits VAE trained for 300 steps, shared by read-only tests."""
    import vaekit

    config = tiny_config(tmp_path_factory.mktemp("shared"), "train.steps=300", "train.eval_every=300",
                         "train.checkpoint_every=300", "train.log_every=100", name="trained")
    return vaekit.train(config, quiet=True)
