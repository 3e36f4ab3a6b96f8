"""`vaekit convert SOURCE OUT`: a folder of PNG files or of (Fashion-)MNIST IDX files as a dataset folder
(`folder.py`), which `data.name=images data.path=OUT data.lazy=true` memory-maps.

- IDX files keep their official train/test split and their labels.
- A PNG folder is split as `data.name=images` splits it in memory (the same seeded permutation for the
  same test_fraction and split_seed), so the converted splits hold the in-memory splits' images in order.
Images are read and written a chunk at a time: the source never sits in memory whole (IDX files,
which are read whole, are MNIST-sized).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaekit.data.folder import write_dataset_folder
from vaekit.data.images import FASHION_MNIST_FILES, read_idx_folder, split_by_seed
from vaekit.data.lazy import ArrayRows, LazyImages, PngFiles
from vaekit.data.pixels import png_files
from vaekit.errors import DataError


def convert(source: str | Path, out: str | Path, *, test_fraction: float = 0.2, split_seed: int = 0,
            progress: bool = True) -> Path:
    """Write the images of `source` (a PNG folder, or a folder of the four IDX files, each optionally .gz) as the
    dataset folder `out` (which must not exist), atomically, with a progress bar; returns `out`."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; convert reads a folder of PNG files or of IDX files")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction} must lie strictly between 0 and 1")
    if _holds_idx_files(source):
        splits, labels = _idx_splits(source)
    else:
        splits, labels = _png_splits(source, test_fraction, split_seed), None
    return write_dataset_folder(out, splits, labels, source=str(source), progress=progress)


def _holds_idx_files(folder: Path) -> bool:
    """Whether `folder` holds the training images of an IDX data set (gzipped or not)."""
    stem = FASHION_MNIST_FILES["train_images"][0]
    return (folder / stem).is_file() or (folder / f"{stem}.gz").is_file()


def _idx_splits(folder: Path) -> tuple[dict[str, LazyImages], dict[str, np.ndarray]]:
    """The official splits of an IDX folder and their labels."""
    arrays = read_idx_folder(folder)
    splits = {split: LazyImages.of(ArrayRows(arrays[f"{split}_images"]), str(folder)) for split in ("train", "test")}
    return splits, {split: arrays[f"{split}_labels"] for split in ("train", "test")}


def _png_splits(folder: Path, test_fraction: float, split_seed: int) -> dict[str, LazyImages]:
    """A PNG folder's seeded split, images decoded only when written."""
    reader = PngFiles.scan(png_files(folder))
    train_index, test_index = split_by_seed(len(reader), test_fraction, split_seed, str(folder))
    return {"train": LazyImages.of(reader, str(folder), index=train_index.numpy()),
            "test": LazyImages.of(reader, str(folder), index=test_index.numpy())}
