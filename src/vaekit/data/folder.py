"""The dataset folder `vaekit convert` writes and `data.name=images data.path=FOLDER` reads.

    FOLDER/vaekit-dataset.json   format, version, image shape (C, H, W), split sizes, labels?, source
    FOLDER/train.npy             uint8 (N, H, W, C), C order: memory-mapped when data.lazy is on
    FOLDER/test.npy              uint8 (M, H, W, C)
    FOLDER/train-labels.npy      int64 (N,) when the source has labels (IDX files); test-labels.npy alike

The folder is assembled under a temporary name beside FOLDER and renamed into place, so it appears
complete or not at all. Everything is read without pickle: JSON and .npy headers, checked against
each other and against the files' lengths before any pixel is read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError
from tqdm.auto import tqdm

from vaekit.data.lazy import LazyImages, open_npy, write_npy
from vaekit.errors import DataError
from vaekit.io import TEMP_SUFFIX, UMASK, _fsync_dir, atomic_write_json

MANIFEST_FILE = "vaekit-dataset.json"
SPLITS = ("train", "test")
MAX_MANIFEST_BYTES = 1 << 16  # a manifest is a few hundred bytes


class DatasetManifest(BaseModel):
    """vaekit-dataset.json: what a dataset folder holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["vaekit-images"]
    version: Literal[1]
    image_shape: tuple[Literal[1, 3], PositiveInt, PositiveInt]  # (C, H, W)
    train: PositiveInt  # images in train.npy
    test: PositiveInt  # images in test.npy
    labels: bool  # train-labels.npy and test-labels.npy exist
    source: str  # what was converted


@dataclass(frozen=True)
class DatasetFolder:
    """A dataset folder's checked manifest and its arrays, memory-mapped (nothing read yet)."""

    manifest: DatasetManifest
    images: dict[str, np.ndarray]  # split -> uint8 (N, H, W, C)
    labels: dict[str, np.ndarray] | None  # split -> int64 (N,)


def is_dataset_folder(path: Path) -> bool:
    """Whether `path` is a folder holding a dataset manifest."""
    return (path / MANIFEST_FILE).is_file()


def read_dataset_folder(path: Path) -> DatasetFolder:
    """The manifest and memory-mapped arrays of a dataset folder; DataError naming the file that disagrees."""
    manifest = _read_manifest(path / MANIFEST_FILE)
    channels, height, width = manifest.image_shape
    images, labels = {}, {}
    for split in SPLITS:
        count = getattr(manifest, split)
        images[split] = _open_checked(path / f"{split}.npy", (count, height, width, channels), np.uint8)
        if manifest.labels:
            labels[split] = _open_checked(path / f"{split}-labels.npy", (count,), np.int64)
    return DatasetFolder(manifest, images, labels if manifest.labels else None)


def write_dataset_folder(out: Path, splits: dict[str, LazyImages], labels: dict[str, np.ndarray] | None, *,
                         source: str, progress: bool) -> Path:
    """Write the images of `splits` ("train", "test"; labels optional) as the dataset folder `out`, which must not
    exist: assembled under a temporary name beside it, then renamed into place."""
    if out.exists():
        raise DataError(f"{out} already exists; remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=TEMP_SUFFIX))
    os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp creates 0700
    try:
        with tqdm(total=sum(map(len, splits.values())), unit="image", desc=f"convert {source}",
                  disable=not progress, dynamic_ncols=True) as bar:
            for split in SPLITS:
                write_npy(staging / f"{split}.npy", _channels_last(splits[split].chunks(), bar), len(splits[split]))
        for split, values in (labels or {}).items():
            write_npy(staging / f"{split}-labels.npy", [values.astype(np.int64)], len(values))
        manifest = DatasetManifest(format="vaekit-images", version=1, image_shape=splits["train"].image_shape,
                                   train=len(splits["train"]), test=len(splits["test"]), labels=labels is not None,
                                   source=source)
        atomic_write_json(staging / MANIFEST_FILE, manifest.model_dump(mode="json"))
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(out.parent)
    return out


def _channels_last(chunks: Iterable[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
    """uint8 (B, C, H, W) chunks as (B, H, W, C), counted on the progress bar."""
    for chunk in chunks:
        yield chunk.transpose(0, 2, 3, 1)
        bar.update(len(chunk))


def _read_manifest(path: Path) -> DatasetManifest:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_MANIFEST_BYTES + 1)
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a dataset manifest")
    try:
        return DatasetManifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'document'}: {item['msg']}" for item in error.errors())
        raise DataError(f"{path}: not a vaekit dataset manifest ({problems})") from None


def _open_checked(path: Path, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """The memory-mapped .npy at `path`, which must hold `shape` of `dtype` as the manifest declares."""
    array = open_npy(path)
    if array.shape != shape or array.dtype != dtype:
        raise DataError(f"{path}: holds shape {array.shape} of {array.dtype}, but {MANIFEST_FILE} declares "
                        f"{shape} of {np.dtype(dtype)}")
    return array
