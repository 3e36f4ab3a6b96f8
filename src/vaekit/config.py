"""Run configuration: frozen pydantic models (extra="forbid") loaded from YAML, with `key=value` overrides.

The config is the single source of truth for a run: the model is built from it alone, and the
resolved config is saved beside every checkpoint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class DataConfig(Section):
    """Which images to train and evaluate on, and how they are split and binarised."""

    name: Literal["digits", "fashion_mnist", "images"] = "digits"  # digits = sklearn 8x8 (embedded)
    path: str | None = None  # fashion_mnist: IDX folder; images: PNG folder or .npy/.npz file
    test_fraction: float = 0.2  # digits/images: share held out as the test split
    split_seed: int = 0  # fixes the train/test split of digits/images
    binarize: Literal["none", "dynamic", "static"] = "none"  # for a Bernoulli likelihood
    test_binarize_seed: int = 1  # the one fixed binarisation of the test split used for evaluation
    max_train: int | None = None  # keep only the first N training images (quick runs)
    max_test: int | None = None  # keep only the first N test images
