"""Image data: sklearn digits, Fashion-MNIST IDX files, PNG folders, .npy/.npz arrays, dataset folders.

Every split is a float32 tensor `(N, C, H, W)` with values in [0, 1], except a training split read
lazily (`data.lazy`), which stays on disk as uint8 and gives such tensors per batch (`LazyImages`).
Sources:
- `digits`: scikit-learn's 8x8 digits (embedded, no download), levels 0..16 scaled by 1/16.
- `fashion_mnist`: the four IDX files (gzipped or not) of the official 60000/10000 split.
- `images`: a folder of same-size PNG files, a `.npy`/`.npz` array of uint8 (scaled by 1/255)
  or floats already in [0, 1] (assumed to have 256 levels), or a dataset folder written by
  `vaekit convert` (`folder.py`: train and test splits of uint8, labels if any).

Binarisation (`data.binarize`, for a Bernoulli likelihood) draws Bernoulli(x) per pixel:
- the test split is binarised once with seed `test_binarize_seed`, so every evaluation scores the
  same binary images;
- `static`: the training split is also binarised once, with seed `split_seed + 12345`;
- `dynamic`: the training split stays grey-level and the training loop draws a fresh binarisation
  per batch.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from vaekit.config import DataConfig
from vaekit.data.folder import is_dataset_folder, read_dataset_folder
from vaekit.data.lazy import (
    NUM_LEVELS,
    ArrayRows,
    ImageReader,
    LazyImages,
    PngFiles,
    open_npy,
    read_npz,
)
from vaekit.data.pixels import images_to_tensor, open_png, png_files
from vaekit.errors import DataError

DIGITS_SOURCE = "sklearn.datasets.load_digits"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)
FASHION_MNIST_FILES = {  # array name -> (file name without .gz, IDX magic)
    "train_images": ("train-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    "train_labels": ("train-labels-idx1-ubyte", IDX_LABELS_MAGIC),
    "test_images": ("t10k-images-idx3-ubyte", IDX_IMAGES_MAGIC),
    "test_labels": ("t10k-labels-idx1-ubyte", IDX_LABELS_MAGIC),
}
STATIC_TRAIN_SEED_OFFSET = 12345  # static binarisation of the training split uses split_seed + this
LIKELIHOODS_ON_GRID = ("logistic", "logistic_mixture")
GRID_TOLERANCE = 1e-4
READ_BLOCK = 1 << 24  # bytes of an IDX file read at once
CHECK_CHUNK = 1 << 24  # values checked at once (a split's temporaries stay small beside the split)
EIGHT_BIT_LEVELS = torch.arange(NUM_LEVELS, dtype=torch.float32) / (NUM_LEVELS - 1)  # every value k/255 of uint8 pixels


@dataclass(frozen=True)
class ImageData:
    """The train and test splits of one image data set: in memory, or the training split on disk (data.lazy)."""

    train: Tensor | LazyImages  # (N, C, H, W) float32 in [0, 1], or read per batch as such
    test: Tensor  # (M, C, H, W) float32 in [0, 1]; binarised once already unless binarize=none
    train_labels: Tensor | None  # (N,) int64, or None when the source has no labels
    test_labels: Tensor | None  # (M,) int64, or None
    num_levels: int  # intensity levels: 17 for digits, 256 for 8-bit images, 2 once binarised
    name: str  # "digits", "fashion_mnist" or "images"
    source: str  # where the images came from: DIGITS_SOURCE or a file/folder path
    test_grey: Tensor | None = None  # (M, C, H, W) the test split before binarisation; None if not binarised

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        channels, height, width = self.train.shape[1:]
        return channels, height, width


def load_image_data(config: DataConfig) -> ImageData:
    """The splits `config` names, the validation images split off, binarised as asked, then cut to the first
    max_train/max_test."""
    loaders = {"digits": _load_digits, "fashion_mnist": _load_fashion_mnist, "images": _load_images}
    data = _split_validation(loaders[config.name](config), config.validation)
    return _keep_first(_binarize_splits(data, config), config)


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Bernoulli(x) draw per pixel: u < x with u ~ U[0, 1); same shape, dtype and device as x.

    `generator`, when given, must live on x's device.
    """
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < x).to(x.dtype)


def check_support(x: Tensor | LazyImages, *, likelihood: str, num_bins: int, source: str) -> None:
    """Raise DataError unless every value of x lies in the support of p(x|z) for `likelihood`.

    bernoulli: {0, 1}; gaussian: any finite value; logistic(_mixture): the grid k / (num_bins - 1).
    Images on disk are checked by the pixel values they hold, read only when not every 8-bit value is allowed.
    """
    if isinstance(x, LazyImages):
        x = _levels_to_check(x, likelihood=likelihood, num_bins=num_bins, source=source)
    if likelihood == "gaussian":
        _require_finite(x, source)
    elif likelihood == "bernoulli":
        _require_finite(x, source)
        _require_binary(x, source)
    elif likelihood in LIKELIHOODS_ON_GRID:
        _require_finite(x, source)
        _require_on_grid(x, likelihood=likelihood, num_bins=num_bins, source=source)
    else:
        raise NotImplementedError(likelihood)


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """The read-only uint8 array of an IDX file (gzipped if named *.gz), checking magic and size.

    IDX layout: a big-endian int32 magic (0, 0, dtype code, ndim), ndim big-endian uint32 sizes,
    then the values in C order. The header is read first, then at most the bytes it declares and one
    more: a file or gzip stream longer than its header says is refused without being read whole.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as file:
            found = file.read(4)
            if len(found) < 4:
                raise DataError(f"{path}: truncated IDX file: {len(found)} bytes, less than the magic number")
            if int.from_bytes(found, "big") != magic:
                raise DataError(f"{path}: wrong IDX magic number {int.from_bytes(found, 'big')}, expected {magic}")
            header_size = 4 + 4 * found[3]
            sizes = file.read(header_size - 4)
            if len(sizes) < header_size - 4:
                raise DataError(
                    f"{path}: truncated IDX file: {4 + len(sizes)} bytes, the header alone needs {header_size}"
                )
            shape = tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4"))
            size = math.prod(shape)
            if size == 0:  # no values (numpy cannot even shape an empty array as (4e9, 2e9, 0))
                raise DataError(f"{path}: the IDX header declares shape {shape}: no values")
            if path.suffix == ".gz":  # a stream shows its length only as it is read
                values = _read_at_most(file, size + 1)
                available = len(values)
            else:
                available = path.stat().st_size - header_size
                values = file.read(size) if available == size else b""
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None
    if available != size:
        follow = f"more than {size}" if available > size and path.suffix == ".gz" else available
        raise DataError(
            f"{path}: truncated or corrupt IDX file: the header declares shape {shape} "
            f"({size} bytes of values) but {follow} bytes follow it"
        )
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def _read_at_most(file: BinaryIO, count: int) -> bytes:
    """At most `count` bytes of `file`, in blocks (a count from a header may be more than one read accepts)."""
    blocks = []
    while count > 0 and (block := file.read(min(count, READ_BLOCK))):
        blocks.append(block)
        count -= len(block)
    return b"".join(blocks)


def _levels_to_check(images: LazyImages, *, likelihood: str, num_bins: int, source: str) -> Tensor:
    """Every 8-bit value k/255 when all lie in the support (nothing to read), else the values the images hold."""
    try:
        check_support(EIGHT_BIT_LEVELS, likelihood=likelihood, num_bins=num_bins, source=source)
    except DataError:
        return images.levels()
    return EIGHT_BIT_LEVELS


def _load_digits(config: DataConfig) -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8): k/16
    labels = torch.from_numpy(digits.target).long()
    train_index, test_index = split_by_seed(len(images), config.test_fraction, config.split_seed, DIGITS_SOURCE)
    return ImageData(
        train=images[train_index], test=images[test_index],
        train_labels=labels[train_index], test_labels=labels[test_index],
        num_levels=17, name="digits", source=DIGITS_SOURCE,
    )


def _load_fashion_mnist(config: DataConfig) -> ImageData:
    """The official split; data.test_fraction and data.split_seed do not apply."""
    folder = Path(config.path) if config.path is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {folder} does not exist; install it with "
            f"`apt-get install -y dataset-fashion-mnist` or set data.path to a folder holding "
            f"{', '.join(stem for stem, _ in FASHION_MNIST_FILES.values())} (each optionally .gz)"
        )
    arrays = read_idx_folder(folder)
    return ImageData(
        train=images_to_tensor(arrays["train_images"], str(folder)),
        test=images_to_tensor(arrays["test_images"], str(folder)),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        num_levels=256, name="fashion_mnist", source=str(folder),
    )


def read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    """The four IDX arrays of a (Fashion-)MNIST folder (FASHION_MNIST_FILES' keys), image and label counts checked."""
    arrays = {
        key: read_idx(_find_idx_file(folder, stem), magic=magic)
        for key, (stem, magic) in FASHION_MNIST_FILES.items()
    }
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(
                f"{folder}: the {split} split has {len(arrays[f'{split}_images'])} images "
                f"but {len(arrays[f'{split}_labels'])} labels"
            )
    return arrays


def _load_images(config: DataConfig) -> ImageData:
    if config.path is None:
        raise DataError("data.name=images needs data.path: a PNG folder, a .npy/.npz file or a dataset folder")
    path = Path(config.path)
    if is_dataset_folder(path):
        return _load_dataset_folder(path, lazy=config.lazy)
    if config.lazy:
        return _split_lazily(_lazy_reader(path), config, str(path))
    if path.is_dir():
        train, test = _read_png_folder(path), None
    elif path.suffix in (".npy", ".npz") and path.is_file():
        train, test = _read_array_file(path)
    else:
        raise DataError(f"{path}: not a folder of PNG files nor an existing .npy/.npz file")
    if test is None:
        images = images_to_tensor(train, str(path))
        train_index, test_index = split_by_seed(len(images), config.test_fraction, config.split_seed, str(path))
        train_images, test_images = images[train_index], images[test_index]
    else:
        train_images = images_to_tensor(train, f"{path} (key 'train')")
        test_images = images_to_tensor(test, f"{path} (key 'test')")
        if test_images.shape[1:] != train_images.shape[1:]:
            raise DataError(
                f"{path}: 'train' images have shape {tuple(train_images.shape[1:])} (C, H, W) but "
                f"'test' images have shape {tuple(test_images.shape[1:])}"
            )
    return ImageData(
        train=train_images, test=test_images, train_labels=None, test_labels=None,
        num_levels=256, name="images", source=str(path),
    )


def _load_dataset_folder(path: Path, *, lazy: bool) -> ImageData:
    """A folder `vaekit convert` wrote: its own train/test split; the training split memory-mapped if `lazy`."""
    folder = read_dataset_folder(path)
    train_source = str(path / "train.npy")
    labels = folder.labels
    return ImageData(
        train=LazyImages.of(ArrayRows(folder.images["train"]), train_source) if lazy
        else images_to_tensor(folder.images["train"], train_source),
        test=images_to_tensor(folder.images["test"], str(path / "test.npy")),
        train_labels=None if labels is None else torch.from_numpy(np.array(labels["train"])),
        test_labels=None if labels is None else torch.from_numpy(np.array(labels["test"])),
        num_levels=256, name="images", source=str(path),
    )


def _lazy_reader(path: Path) -> ImageReader:
    """The images of `path` on disk: a PNG folder decoded on demand, or a .npy file memory-mapped."""
    if path.is_dir():
        return PngFiles.scan(png_files(path))
    if path.suffix == ".npy" and path.is_file():
        return ArrayRows(open_npy(path))
    raise DataError(f"{path}: not a folder of PNG files nor an existing .npy file (data.lazy memory-maps .npy "
                    "files; a .npz cannot be: save its arrays as .npy)")


def _split_lazily(reader: ImageReader, config: DataConfig, source: str) -> ImageData:
    """The seeded split of a reader's images: training images left on disk, test images read into memory."""
    train_index, test_index = split_by_seed(len(reader), config.test_fraction, config.split_seed, source)
    return ImageData(
        train=LazyImages.of(reader, source, index=train_index.numpy()),
        test=images_to_tensor(reader.read(test_index.numpy()), source),
        train_labels=None, test_labels=None, num_levels=256, name="images", source=source,
    )


def split_by_seed(num_images: int, test_fraction: float, seed: int, source: str) -> tuple[Tensor, Tensor]:
    """(train, test) indices of a seeded permutation; the first ceil(N * test_fraction) are test."""
    num_test = math.ceil(round(num_images * test_fraction, 9))  # sklearn's rule, float-safe
    if not 0 < num_test < num_images:
        raise DataError(
            f"{source}: data.test_fraction={test_fraction} of {num_images} images leaves "
            f"{num_test} test and {num_images - num_test} training images; each split needs one"
        )
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    return order[num_test:], order[:num_test]


def _split_validation(data: ImageData, count: int) -> ImageData:
    """The last `count` training images become the evaluation split; the test split is left out entirely."""
    if not count:
        return data
    if count >= len(data.train):
        raise DataError(f"data.validation={count} leaves no training images: the training split of {data.source} "
                        f"holds {len(data.train)}")
    labels = data.train_labels
    return replace(data, train=data.train[:-count], test=data.train[-count:],
                   train_labels=None if labels is None else labels[:-count],
                   test_labels=None if labels is None else labels[-count:])


def _binarize_splits(data: ImageData, config: DataConfig) -> ImageData:
    if config.binarize == "none":
        return data
    test = binarize(data.test, torch.Generator().manual_seed(config.test_binarize_seed))
    train = data.train
    if config.binarize == "static":
        seed = config.split_seed + STATIC_TRAIN_SEED_OFFSET
        train = binarize(train, torch.Generator().manual_seed(seed))
    return replace(data, train=train, test=test, test_grey=data.test, num_levels=2)


def _keep_first(data: ImageData, config: DataConfig) -> ImageData:
    return replace(
        data,
        train=data.train.first(config.max_train) if isinstance(data.train, LazyImages) else data.train[: config.max_train],
        test=data.test[: config.max_test],
        test_grey=None if data.test_grey is None else data.test_grey[: config.max_test],
        train_labels=None if data.train_labels is None else data.train_labels[: config.max_train],
        test_labels=None if data.test_labels is None else data.test_labels[: config.max_test],
    )


def _find_idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing the Fashion-MNIST file {stem} (or {stem}.gz)")


def _read_png_folder(folder: Path) -> np.ndarray:
    """(N, H, W) uint8 when every PNG is grayscale ('L'), else (N, H, W, 3) RGB; in sorted order."""
    reader = PngFiles.scan(png_files(folder))
    return reader.read(np.arange(len(reader)))


def _read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(images, None) from a .npy or one-array .npz; (train, test) from a .npz with those keys."""
    if path.suffix == ".npy":  # its header checked against the file's length before anything is allocated
        return np.array(open_npy(path)), None
    arrays = read_npz(path)
    if "train" in arrays and "test" in arrays:
        return arrays["train"], arrays["test"]
    if len(arrays) == 1:
        return next(iter(arrays.values())), None
    raise DataError(f"{path}: expected keys 'train' and 'test', or one array; found keys {list(arrays)}")


def _require_finite(x: Tensor, source: str) -> None:
    num_bad = sum(int((~torch.isfinite(part)).sum()) for part in x.reshape(-1).split(CHECK_CHUNK))
    if num_bad:
        raise DataError(f"{source}: contains {num_bad} NaN or infinite values")


def _require_binary(x: Tensor, source: str) -> None:
    outside = (x != 0) & (x != 1)
    if bool(outside.any()):
        example = float(x[outside][0])
        raise DataError(
            f"{source}: the bernoulli likelihood needs values in {{0, 1}}, but "
            f"{int(outside.sum())} values are not (e.g. {example:.6g}); binarise the data with "
            f"data.binarize=dynamic (or static), or choose another likelihood"
        )


def _require_on_grid(x: Tensor, *, likelihood: str, num_bins: int, source: str) -> None:
    scale = num_bins - 1
    level = torch.round(x * scale)
    off = ((x - level / scale).abs() > GRID_TOLERANCE) | (level < 0) | (level > scale)
    if bool(off.any()):
        example = float(x[off][0])
        raise DataError(
            f"{source}: the {likelihood} likelihood with num_bins={num_bins} needs values on the "
            f"grid k/{scale} (k = 0..{scale}), but {int(off.sum())} values are not "
            f"(e.g. {example:.6g}); set model.num_bins to the data's number of intensity levels"
        )


def read_images(paths: list[Path], *, channels: int) -> Tensor:
    """Images to compress, (N, C, H, W) float32 in [0, 1], from PNG files, folders of PNGs and .npy/.npz
    arrays, in the order given; grey or RGB as `channels` asks; all of one size."""
    parts: list[Tensor] = []
    for path in paths:
        if path.is_dir():
            array = _read_png_folder(path)
        elif path.suffix.lower() in (".npy", ".npz") and path.is_file():
            train, test = _read_array_file(path)
            array = train if test is None else np.concatenate([train, test])
        elif path.is_file():
            array = np.asarray(open_png(path).convert("L" if channels == 1 else "RGB"))[None]
        else:
            raise DataError(f"{path}: no such file or folder")
        images = images_to_tensor(array, str(path))
        if images.shape[1] != channels:
            raise DataError(f"{path}: images with {images.shape[1]} channel(s); this model codes {channels}")
        if parts and images.shape[2:] != parts[0].shape[2:]:
            raise DataError(f"{path}: images of {images.shape[2]}x{images.shape[3]} pixels beside "
                            f"{parts[0].shape[2]}x{parts[0].shape[3]}; one file holds images of one size")
        parts.append(images)
    if not parts:
        raise DataError("no images given")
    return torch.cat(parts)
