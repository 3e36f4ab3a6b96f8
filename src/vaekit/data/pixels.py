"""Pixels from files and arrays: PNG decoding, the (N, C, H, W) layout and float32 values in [0, 1].

Shared by the in-memory loaders (`images.py`) and the lazy ones (`lazy.py`), so a batch read from
disk holds the very floats the in-memory split would.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.errors import DataError


def images_to_tensor(array: np.ndarray, source: str) -> Tensor:
    """(N, C, H, W) float32 in [0, 1] from a uint8 or [0, 1]-float array in any accepted layout."""
    return torch.from_numpy(unit_values(channels_first(array, source), source))


def channels_first(array: np.ndarray, source: str) -> np.ndarray:
    """(N, C, H, W) from (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}.

    An array that fits both 4-d layouts is read as channels-last.
    """
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[3] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataError(
            f"{source}: expected shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {{1, 3}}, "
            f"got {array.shape}"
        )
    if array.size == 0:
        raise DataError(f"{source}: the data is empty (shape {array.shape} as (N, C, H, W))")
    return array


def unit_values(array: np.ndarray, source: str) -> np.ndarray:
    """float32 in [0, 1]: uint8 divided by 255; floats checked to be finite and in [0, 1]."""
    if array.dtype == np.uint8:
        values = np.ascontiguousarray(array, dtype=np.float32)  # a new array: divided in place
        values /= np.float32(255)
        return values
    if array.dtype.kind != "f":
        raise DataError(
            f"{source}: dtype {array.dtype} is not supported; use uint8 (0..255) or floats in [0,1]"
        )
    num_nan = int(np.isnan(array).sum())
    if num_nan:
        raise DataError(f"{source}: contains {num_nan} NaN values")
    num_inf = int(np.isinf(array).sum())
    if num_inf:
        raise DataError(f"{source}: contains {num_inf} infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{source}: values range over [{low:.6g}, {high:.6g}]; float images must be in [0, 1]"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


@contextmanager
def _opened(file: Path) -> Iterator[Image.Image]:
    """Pillow's image of a file, with its decompression-bomb warning (more pixels than Image.MAX_IMAGE_PIXELS, below
    twice that, where Pillow would decode it anyway) raised as an error like its bomb error above it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(file) as image:
            yield image


def open_png(file: Path) -> Image.Image:
    """The decoded image of one file; DataError naming it when it is not a readable image."""
    try:
        with _opened(file) as image:
            image.load()
            return image
    except Exception as error:  # noqa: BLE001 - Pillow's parsers of damaged files raise OSError, ValueError, ...
        raise DataError(f"{file}: not a readable image ({type(error).__name__}: {error})") from None


def png_header(file: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of one image file, read from its header without decoding the pixels."""
    try:
        with _opened(file) as image:
            return image.mode, image.size
    except Exception as error:  # noqa: BLE001 - as in open_png: "Truncated IHDR chunk" is a ValueError
        raise DataError(f"{file}: not a readable image ({type(error).__name__}: {error})") from None


def png_files(folder: Path) -> list[Path]:
    """The .png files of a folder in sorted order; DataError when there is none."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise DataError(f"{folder}: no .png files in the folder")
    return files
