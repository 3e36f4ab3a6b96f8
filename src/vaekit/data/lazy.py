"""Data read from disk per batch, for data larger than memory.

- `ArrayRows`: the rows of an array, typically a .npy file memory-mapped read-only (`open_npy`): a
  dataset folder's images, a two-stage run's codes. Reading rows copies only those rows.
- `PngFiles`: same-size PNG files, decoded on demand.
- `LazyImages`: a split of 8-bit images kept on disk (either of the above), in split order; indexing
  it with a batch's row numbers gives float32 (B, C, H, W) in [0, 1], converted by the in-memory
  loaders' own function, so a lazy batch holds the very floats of the in-memory split.
- `write_npy`: a .npy written chunk by chunk through a memory map, appearing only when complete.

Resident pages of a memory map are file-backed (the page cache), not anonymous memory: the kernel
drops them under pressure, so a process's anonymous memory does not grow with the data set.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from tokenize import TokenError
from typing import BinaryIO, Protocol

import numpy as np
import torch
from torch import Tensor

from vaekit.data.pixels import channels_first, images_to_tensor, open_png, png_header
from vaekit.errors import DataError
from vaekit.io import TEMP_SUFFIX, UMASK, _fsync_dir

CHUNK_ROWS = 4096  # rows read at once by a pass over a whole split (levels, conversion)
NUM_LEVELS = 256  # values of an 8-bit pixel
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# what reading a damaged zip archive raises: zipfile refuses encrypted members with a RuntimeError, unknown compression
# methods with NotImplementedError
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
              zlib.error)


class ImageReader(Protocol):
    """Rows of uint8 images on disk: (B, H, W), (B, H, W, C) or (B, C, H, W), as the source stores them."""

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class ArrayRows:
    """The rows of an array (N, ...), memory-mapped or in memory, read on demand as they are stored."""

    array: np.ndarray

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (B,) copied into memory: (B, ...)."""
        return self.array[rows]

    def __getitem__(self, indices: Tensor) -> Tensor:
        """Rows `indices` (B,) as a CPU tensor of the stored dtype (a training batch of codes)."""
        return torch.from_numpy(self.read(indices.cpu().numpy()))


@dataclass(frozen=True, eq=False)
class PngFiles:
    """Same-size image files decoded on demand, all in one mode: 'L' (grey) or 'RGB'."""

    files: tuple[Path, ...]
    mode: str
    size: tuple[int, int]  # (width, height), PIL's order

    @staticmethod
    def scan(files: list[Path]) -> PngFiles:
        """Every file's header (not its pixels): one size for all; 'L' if every image is grey, else 'RGB'."""
        headers = [png_header(file) for file in files]
        reader = PngFiles(tuple(files), "L" if all(mode == "L" for mode, _ in headers) else "RGB", headers[0][1])
        for file, (_, size) in zip(files, headers, strict=True):
            reader.require_size(file, size)
        return reader

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images `rows` decoded, in that order: (B, H, W) uint8 in mode 'L', (B, H, W, 3) in 'RGB'."""
        return np.stack([self._decoded(self.files[row]) for row in rows.tolist()])

    def require_size(self, file: Path, size: tuple[int, int]) -> None:
        """DataError unless `file`'s size is the size every image of the folder has."""
        if size != self.size:
            raise DataError(
                f"{file}: size {size[0]}x{size[1]} differs from {self.files[0].name} "
                f"({self.size[0]}x{self.size[1]}); all images must be the same size"
            )

    def _decoded(self, file: Path) -> np.ndarray:
        image = open_png(file)
        self.require_size(file, image.size)  # the file may have changed since the scan
        return np.asarray(image.convert(self.mode))


@dataclass(frozen=True, eq=False)
class LazyImages:
    """A split of 8-bit images kept on disk, read per batch; `images[indices]` is float32 (B, C, H, W) in [0, 1]."""

    reader: ImageReader
    source: str  # named in every error
    image_shape: tuple[int, int, int]  # (C, H, W)
    length: int  # images in the split
    index: np.ndarray | None = None  # the reader's row of each image of the split; None: rows 0, 1, ...

    @staticmethod
    def of(reader: ImageReader, source: str, index: np.ndarray | None = None) -> LazyImages:
        """The split of `reader`'s rows `index` (all rows, in order, when None); checks layout and dtype on one row."""
        length = len(reader) if index is None else len(index)
        if length == 0:
            raise DataError(f"{source}: the data is empty (no images)")
        first = channels_first(reader.read(np.zeros(1, np.int64) if index is None else index[:1]), source)
        if first.dtype != np.uint8:
            raise DataError(f"{source}: data.lazy reads 8-bit images (uint8, 0..255), not {first.dtype}; "
                            "store them as uint8 or leave data.lazy off")
        channels, height, width = first.shape[1:]
        return LazyImages(reader, source, (channels, height, width), length, index)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the split."""
        return (self.length, *self.image_shape)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, indices: Tensor) -> Tensor:
        """Images `indices` (B,) of the split, read from disk: float32 (B, C, H, W) in [0, 1] on the CPU."""
        return images_to_tensor(self._raw(indices.cpu().numpy()), self.source)

    def first(self, count: int | None) -> LazyImages:
        """The first `count` images of the split (all of them when None)."""
        return self if count is None else replace(self, length=min(count, self.length))

    def load(self) -> Tensor:
        """Every image of the split in memory: float32 (N, C, H, W) (a fit on the whole split needs it)."""
        return self[torch.arange(self.length)]

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The split's images in order, `size` at a time: uint8 (B, C, H, W)."""
        for start in range(0, self.length, size):
            yield channels_first(self._raw(np.arange(start, min(start + size, self.length))), self.source)

    def levels(self) -> Tensor:
        """The distinct pixel values the split holds, as float32 k/255 (one pass over the data)."""
        counts = sum(np.bincount(chunk.ravel(), minlength=NUM_LEVELS) for chunk in self.chunks())
        return torch.from_numpy(np.flatnonzero(counts).astype(np.float32) / np.float32(NUM_LEVELS - 1))

    def _raw(self, positions: np.ndarray) -> np.ndarray:
        """uint8 images at `positions` of the split, as the reader stores them."""
        return self.reader.read(positions if self.index is None else self.index[positions])


def read_npy_header(file: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of the .npy stream `file`, without reading its data;
    ValueError (numpy's words) when it is not a .npy header of format 1.0 or 2.0 declaring a shape numpy can hold."""
    version = np.lib.format.read_magic(file)
    if version not in NPY_HEADER_READERS:
        raise ValueError(f"format version {version[0]}.{version[1]} is not supported, only 1.0 and 2.0")
    try:
        shape, fortran_order, dtype = NPY_HEADER_READERS[version](file)
    except (SyntaxError, TokenError, RecursionError) as error:  # from numpy's fallback parser of Python 2 headers
        raise ValueError(f"cannot parse the header ({type(error).__name__}: {error})") from None
    # numpy's header reader lets these through: (True, 8, 8), which np.load refuses; (-2, -3), past a size check
    if any(isinstance(size, bool) for size in shape):
        raise ValueError(f"shape {shape} has a dimension that is not an integer")
    if any(size < 0 for size in shape):
        raise ValueError(f"shape {shape} has a negative dimension")
    try:  # numpy's own limits on a shape (rank, dimension, bytes) without allocating: (0, 2**64) holds 0 bytes
        np.broadcast_to(np.empty((), np.dtype((np.void, dtype.itemsize))), shape)  # void: a subarray dtype adds axes
    except ValueError as error:
        raise ValueError(f"shape {shape} is beyond what numpy can hold ({error})") from None
    return shape, fortran_order, dtype, file.tell()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz file by name, each member's header checked against the member's size before numpy
    allocates it. The file is read as a zip archive whatever its first bytes (numpy's guess by them would read a
    .npy named .npz whole, unchecked)."""
    try:
        with path.open("rb") as file, np.lib.npyio.NpzFile(file, allow_pickle=False) as archive:
            for name in archive.files:
                _check_npz_member(archive.zip, f"{name}.npy", path)
            return {name: archive[name] for name in archive.files}
    except DataError:
        raise
    except NPZ_ERRORS as error:
        raise DataError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None


def _check_npz_member(archive: zipfile.ZipFile, member: str, path: Path) -> None:
    """The array header of one .npz member against its uncompressed size, before numpy allocates the array."""
    try:
        with archive.open(member) as file:
            shape, _, dtype, header = read_npy_header(file)
    except NPZ_ERRORS as error:
        raise DataError(f"{path}: member {member} is not a readable array ({error})") from None
    declared = header + math.prod(shape) * dtype.itemsize
    if dtype.hasobject or declared != archive.getinfo(member).file_size:
        raise DataError(f"{path}: member {member} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                        f"{archive.getinfo(member).file_size}")


def open_npy(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only; its header (numeric dtype, C order) checked against the file's length first."""
    try:
        with path.open("rb") as file:
            shape, fortran_order, dtype, offset = read_npy_header(file)
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None
    except ValueError as error:  # numpy's words for a bad magic string or header
        raise DataError(f"{path}: not a .npy file ({error})") from None
    if dtype.hasobject or fortran_order:
        raise DataError(f"{path}: holds {'Python objects' if dtype.hasobject else 'a Fortran-order array'}; "
                        "vaekit memory-maps numeric arrays in C order only")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise DataError(f"{path}: truncated or corrupt .npy file: its header declares shape {shape} of {dtype} "
                        f"({expected} bytes with the header) but the file holds {size} bytes")
    if expected == offset:  # nothing to map: an empty array
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def write_npy(path: Path, chunks: Iterable[np.ndarray], count: int) -> Path:
    """A new .npy at `path` holding the rows of `chunks` (`count` in all, in order; dtype and row shape of the
    first), written through a memory map into a temporary file beside it, fsynced and renamed into place."""
    chunks = iter(chunks)
    first = next(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(count, *first.shape[1:]))
        written = 0
        for chunk in itertools.chain([first], chunks):
            array[written : written + len(chunk)] = chunk
            written += len(chunk)
        if written != count:
            raise ValueError(f"{path}: {written} rows came, {count} were announced")
        array.flush()
        del array  # unmaps the file
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path
