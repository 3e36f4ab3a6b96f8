"""Image data: digits, Fashion-MNIST IDX, PNG folders, .npy/.npz, binarisation, support checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from sklearn.datasets import load_digits

from vaekit.config import DataConfig
from vaekit.data import binarize, check_support, load_image_data, read_idx
from vaekit.data.images import FASHION_MNIST_DIR, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from vaekit.errors import DataError


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """A hand-made IDX file: big-endian magic, big-endian uint32 sizes, uint8 values."""
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_folder(
    folder: Path, *, num_train: int = 6, num_test: int = 4, gz: bool = True
) -> None:
    """Four tiny IDX files (3x2 images whose first pixel is the image index) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, size=(count, 3, 2), dtype=np.uint8)
        images[:, 0, 0] = np.arange(count)
        labels = np.arange(count, dtype=np.uint8) % 10
        for kind, array, magic in (
            ("images-idx3", images, IDX_IMAGES_MAGIC),
            ("labels-idx1", labels, IDX_LABELS_MAGIC),
        ):
            raw = idx_bytes(array, magic)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)


def marked_images(
    num_images: int = 10, channels: int = 3, height: int = 4, width: int = 5
) -> np.ndarray:
    """(N, C, H, W) uint8 images whose pixel [0, 0, 0] is the image index (to recover the order)."""
    images = np.random.default_rng(1).integers(
        0, 256, size=(num_images, channels, height, width), dtype=np.uint8
    )
    images[:, 0, 0, 0] = np.arange(num_images)
    return images


def image_index(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x[:, 0, 0, 0] * 255).long()


# digits


def test_digits_shapes_range_levels_and_labels():
    data = load_image_data(DataConfig(name="digits"))
    assert data.train.shape == (1437, 1, 8, 8) and data.test.shape == (360, 1, 8, 8)
    assert data.train.dtype == torch.float32 and data.image_shape == (1, 8, 8)
    assert data.train.min() == 0 and data.train.max() == 1
    assert torch.equal(data.train * 16, torch.round(data.train * 16))
    assert data.num_levels == 17 and data.name == "digits"
    assert data.source == "sklearn.datasets.load_digits"
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (1437,)
    assert set(data.test_labels.tolist()) == set(range(10))


def test_digits_split_is_a_seeded_partition_of_all_digits():
    first = load_image_data(DataConfig(name="digits", split_seed=3))
    again = load_image_data(DataConfig(name="digits", split_seed=3))
    other = load_image_data(DataConfig(name="digits", split_seed=4))
    assert torch.equal(first.train, again.train) and torch.equal(
        first.test_labels, again.test_labels
    )
    assert not torch.equal(first.test, other.test)

    def rows(x: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
        return sorted(
            image.numpy().tobytes() + bytes([label]) for image, label in zip(x, labels.tolist())
        )

    digits = load_digits()
    everything = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    split = torch.cat([first.train, first.test]), torch.cat([first.train_labels, first.test_labels])
    assert rows(*split) == rows(everything, torch.from_numpy(digits.target))


def test_digits_labels_stay_with_their_images():
    data = load_image_data(DataConfig(name="digits", split_seed=5))
    digits = load_digits()
    lookup = {
        (image / 16.0).astype(np.float32).tobytes(): label
        for image, label in zip(digits.images, digits.target)
    }
    assert all(
        lookup[image[0].numpy().tobytes()] == label
        for image, label in zip(data.test, data.test_labels.tolist())
    )


def test_test_fraction_sets_the_test_size_and_an_empty_split_is_refused():
    assert len(load_image_data(DataConfig(name="digits", test_fraction=0.5)).test) == 899
    with pytest.raises(ValidationError, match="test_fraction"):
        DataConfig(name="digits", test_fraction=0.0)
    with pytest.raises(DataError, match="test_fraction=0.99999 of 1797 images"):
        load_image_data(DataConfig(name="digits", test_fraction=0.99999))


def test_max_train_and_max_test_keep_the_first_images():
    full = load_image_data(DataConfig(name="digits"))
    cut = load_image_data(DataConfig(name="digits", max_train=50, max_test=7))
    assert torch.equal(cut.train, full.train[:50]) and torch.equal(cut.test, full.test[:7])
    assert torch.equal(cut.train_labels, full.train_labels[:50]) and cut.test_labels.shape == (7,)
    with pytest.raises(ValidationError, match="max_train"):
        DataConfig(name="digits", max_train=0)



def test_validation_images_come_from_the_end_of_the_training_split_and_no_test_image_is_read():
    full = load_image_data(DataConfig(name="digits"))
    held = load_image_data(DataConfig(name="digits", validation=100, binarize="dynamic"))
    assert torch.equal(held.train, full.train[:-100]) and torch.equal(held.train_labels, full.train_labels[:-100])
    assert torch.equal(held.test_grey, full.train[-100:]) and torch.equal(held.test_labels, full.train_labels[-100:])
    assert set(held.test.unique().tolist()) == {0.0, 1.0}  # binarised once, as the test split would be
    with pytest.raises(DataError, match="data.validation=1437 leaves no training images"):
        load_image_data(DataConfig(name="digits", validation=len(full.train)))
    with pytest.raises(ValidationError, match="data.validation splits the training split in memory"):
        DataConfig(name="images", path="x", lazy=True, validation=10)


# Fashion-MNIST and IDX files


def test_fashion_mnist_official_split():
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)")
    data = load_image_data(DataConfig(name="fashion_mnist"))
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert torch.equal(torch.bincount(data.test_labels), torch.full((10,), 1000))
    assert data.num_levels == 256 and data.source == str(FASHION_MNIST_DIR)
    assert data.train.min() == 0 and data.train.max() == 1
    assert torch.equal(data.test[:100] * 255, torch.round(data.test[:100] * 255))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_returns_the_hand_made_array(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(array, IDX_IMAGES_MAGIC)
    path = tmp_path / ("a.gz" if gz else "a")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    loaded = read_idx(path, magic=IDX_IMAGES_MAGIC)
    assert loaded.dtype == np.uint8 and loaded.shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded, array)


def test_read_idx_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "labels-as-images"
    path.write_bytes(idx_bytes(np.arange(5), IDX_LABELS_MAGIC))
    with pytest.raises(DataError, match=r"labels-as-images.*magic number 2049, expected 2051"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_a_header_without_values_is_a_data_error(tmp_path, gz):
    """A zero in the sizes, even beside sizes too large for numpy (a case the fuzzer found)."""
    raw = b"\x00\x00\x08\x03" + struct.pack(">3I", 4076863488, 2264924160, 0)
    path = tmp_path / ("empty.gz" if gz else "empty")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"empty.*\(4076863488, 2264924160, 0\): no values"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


def test_read_idx_truncated_file_names_the_file_and_sizes(tmp_path):
    path = tmp_path / "short-images"
    path.write_bytes(idx_bytes(np.zeros((4, 3, 3)), IDX_IMAGES_MAGIC)[:-5])
    with pytest.raises(
        DataError, match=r"short-images: truncated.*\(4, 3, 3\) \(36 bytes.*31 bytes"
    ):
        read_idx(path, magic=IDX_IMAGES_MAGIC)
    path.write_bytes(IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"\x00\x00")
    with pytest.raises(DataError, match="header alone needs 16"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


def test_read_idx_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "long-images"
    path.write_bytes(idx_bytes(np.zeros((2, 3, 3)), IDX_IMAGES_MAGIC) + b"\x00")
    with pytest.raises(DataError, match=r"long-images: truncated or corrupt.*18 bytes.*19 bytes"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


def test_read_idx_truncated_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 8, 8)), IDX_IMAGES_MAGIC))[:40])
    with pytest.raises(DataError, match="cut.gz: cannot read"):
        read_idx(path, magic=IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_a_hand_made_folder(tmp_path, gz):
    write_fashion_folder(tmp_path / "fm", gz=gz)
    data = load_image_data(DataConfig(name="fashion_mnist", path=str(tmp_path / "fm")))
    assert data.train.shape == (6, 1, 3, 2) and data.test.shape == (4, 1, 3, 2)
    assert torch.equal(image_index(data.train), torch.arange(6))  # official order, no shuffle
    assert torch.equal(data.test_labels, torch.arange(4))


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_image_data(DataConfig(name="fashion_mnist", path=str(tmp_path / "nowhere")))


def test_fashion_mnist_missing_file_is_named(tmp_path):
    write_fashion_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing the Fashion-MNIST file t10k-labels-idx1-ubyte"):
        load_image_data(DataConfig(name="fashion_mnist", path=str(tmp_path)))


def test_fashion_mnist_image_and_label_counts_must_agree(tmp_path):
    write_fashion_folder(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5), IDX_LABELS_MAGIC))
    )
    with pytest.raises(DataError, match="train split has 6 images but 5 labels"):
        load_image_data(DataConfig(name="fashion_mnist", path=str(tmp_path)))


# arrays and PNG folders


@pytest.mark.parametrize(
    ("layout", "channels"),
    [("NHW", 1), ("NHWC", 1), ("NHWC", 3), ("NCHW", 1), ("NCHW", 3)],
)
def test_npy_layouts_load_as_nchw(tmp_path, layout, channels):
    images = marked_images(channels=channels)
    stored = {"NHW": images[:, 0], "NHWC": images.transpose(0, 2, 3, 1), "NCHW": images}[layout]
    np.save(tmp_path / "x.npy", stored)
    data = load_image_data(
        DataConfig(name="images", path=str(tmp_path / "x.npy"), test_fraction=0.3)
    )
    expected = torch.from_numpy(images).float() / 255
    assert data.train.shape == (7, channels, 4, 5) and data.test.shape == (3, channels, 4, 5)
    assert torch.equal(data.train, expected[image_index(data.train)])
    assert torch.equal(data.test, expected[image_index(data.test)])
    all_indices = torch.cat([image_index(data.train), image_index(data.test)])
    assert sorted(all_indices.tolist()) == list(range(10))  # a partition of the 10 images
    assert data.num_levels == 256 and data.train_labels is None
    assert data.source == str(tmp_path / "x.npy")


def test_float_npy_in_unit_range_is_kept_as_is(tmp_path):
    images = np.linspace(0, 1, 10 * 16).reshape(10, 4, 4)
    np.save(tmp_path / "x.npy", images)
    data = load_image_data(
        DataConfig(name="images", path=str(tmp_path / "x.npy"), test_fraction=0.5)
    )
    both = torch.cat([data.train, data.test]).flatten().sort().values
    assert both.dtype == torch.float32
    assert torch.equal(both, torch.from_numpy(images).float().flatten())


def test_npz_train_and_test_keys_give_the_split_in_order(tmp_path):
    images = marked_images(num_images=9)
    np.savez(tmp_path / "x.npz", train=images[:6], test=images[6:])
    data = load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npz")))
    expected = torch.from_numpy(images).float() / 255
    assert torch.equal(data.train, expected[:6]) and torch.equal(data.test, expected[6:])


def test_npz_single_array_is_split_by_seed(tmp_path):
    np.savez(tmp_path / "x.npz", images=marked_images())
    data = load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npz")))
    assert len(data.train) == 8 and len(data.test) == 2


def test_npz_with_unknown_keys_lists_them(tmp_path):
    np.savez(tmp_path / "x.npz", a=marked_images(), b=marked_images())
    with pytest.raises(DataError, match=r"x.npz: expected keys 'train' and 'test'.*\['a', 'b'\]"):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npz")))


def test_npz_train_and_test_shapes_must_agree(tmp_path):
    np.savez(tmp_path / "x.npz", train=marked_images(height=4), test=marked_images(height=6))
    with pytest.raises(
        DataError, match=r"\(3, 4, 5\) \(C, H, W\) but 'test' images have shape \(3, 6, 5\)"
    ):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npz")))


def test_png_folder_grayscale_in_sorted_order(tmp_path):
    images = marked_images(num_images=5, channels=1)[:, 0]
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_data(DataConfig(name="images", path=str(tmp_path), test_fraction=0.4))
    expected = torch.from_numpy(images).float().unsqueeze(1) / 255
    assert data.image_shape == (1, 4, 5) and len(data.train) == 3 and len(data.test) == 2
    assert torch.equal(data.train, expected[image_index(data.train)])


def test_png_folder_with_any_colour_image_loads_as_rgb(tmp_path):
    images = marked_images(num_images=4, channels=3).transpose(0, 2, 3, 1)  # (N, H, W, 3)
    for i, image in enumerate(images[:3]):
        Image.fromarray(image, mode="RGB").save(tmp_path / f"{i}.png")
    Image.fromarray(images[3, :, :, 0], mode="L").save(tmp_path / "3.png")
    data = load_image_data(DataConfig(name="images", path=str(tmp_path), test_fraction=0.25))
    assert data.image_shape == (3, 4, 5)
    both = torch.cat([data.train, data.test])
    gray = both[image_index(both) == 3][0]  # (3, H, W): the grayscale PNG repeated over R, G, B
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])


def test_png_folder_sizes_must_agree(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    Image.new("L", (4, 5)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b.png: size 4x5 differs from a.png \(4x4\)"):
        load_image_data(DataConfig(name="images", path=str(tmp_path)))


def test_png_folder_without_pngs_and_unreadable_png(tmp_path):
    with pytest.raises(DataError, match="no .png files"):
        load_image_data(DataConfig(name="images", path=str(tmp_path)))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_image_data(DataConfig(name="images", path=str(tmp_path)))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(5), r"expected shape \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\) .*got \(5,\)"),
        (np.zeros((4, 2, 8, 8)), r"got \(4, 2, 8, 8\)"),
        (np.zeros((0, 8, 8), dtype=np.uint8), "empty"),
        (np.where(np.eye(8) > 0, np.nan, 0.5)[None].repeat(3, 0), "contains 24 NaN values"),
        (np.full((3, 4, 4), np.inf), "contains 48 infinite values"),
        (np.full((3, 4, 4), 2.0), r"values range over \[2, 2\]; float images must be in \[0, 1\]"),
        (np.zeros((3, 4, 4), dtype=np.int64), "dtype int64 is not supported"),
    ],
    ids=["1d", "two-channels", "empty", "nan", "inf", "out-of-range", "int64"],
)
def test_bad_arrays_are_refused_naming_the_file(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match="bad.npy") as error:
        load_image_data(DataConfig(name="images", path=str(tmp_path / "bad.npy")))
    assert error.match(message)


def test_object_array_is_refused(tmp_path):
    np.save(
        tmp_path / "objects.npy",
        np.array([np.zeros((2, 2)), None], dtype=object),
        allow_pickle=True,
    )
    with pytest.raises(DataError, match="objects.npy: holds Python objects"):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "objects.npy")))


def test_images_needs_an_existing_path(tmp_path):
    with pytest.raises(DataError, match="needs data.path"):
        load_image_data(DataConfig(name="images"))
    with pytest.raises(DataError, match="missing.npy: not a folder"):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "missing.npy")))


# binarisation


def test_binarize_draws_bernoulli_with_the_given_probabilities():
    x = torch.tensor([0.0, 1.0, 0.3]).repeat_interleave(100_000)
    b = binarize(x, torch.Generator().manual_seed(0))
    assert b.dtype == x.dtype and set(b.unique().tolist()) == {0.0, 1.0}
    assert b[:100_000].sum() == 0 and b[100_000:200_000].sum() == 100_000
    assert abs(b[200_000:].mean().item() - 0.3) < 0.005  # 5 standard errors of 0.00145


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_binarised_test_split_is_fixed_by_its_seed(mode):
    config = DataConfig(name="digits", binarize=mode, test_binarize_seed=7)
    first, again = load_image_data(config), load_image_data(config)
    other_seed = load_image_data(config.model_copy(update={"test_binarize_seed": 8}))
    grey = load_image_data(DataConfig(name="digits"))
    assert torch.equal(first.test, again.test) and not torch.equal(first.test, other_seed.test)
    assert set(first.test.unique().tolist()) == {0.0, 1.0} and first.num_levels == 2
    assert torch.equal(first.test, binarize(grey.test, torch.Generator().manual_seed(7)))
    if mode == "dynamic":
        assert torch.equal(first.train, grey.train)
    else:
        assert torch.equal(first.train, again.train)
        assert torch.equal(
            first.train, binarize(grey.train, torch.Generator().manual_seed(0 + 12345))
        )


def test_binarised_test_images_do_not_depend_on_max_test():
    full = load_image_data(DataConfig(name="digits", binarize="dynamic"))
    cut = load_image_data(DataConfig(name="digits", binarize="dynamic", max_test=10))
    assert torch.equal(cut.test, full.test[:10])


# support checks


def test_check_support_bernoulli_needs_binary_values():
    check_support(torch.tensor([0.0, 1.0, 1.0]), likelihood="bernoulli", num_bins=256, source="s")
    with pytest.raises(
        DataError,
        match=r"grey: the bernoulli .*1 values are not \(e.g. 0.25\).*data.binarize=dynamic",
    ):
        check_support(
            torch.tensor([0.0, 0.25, 1.0]), likelihood="bernoulli", num_bins=256, source="grey"
        )


def test_check_support_gaussian_needs_only_finite_values():
    check_support(torch.tensor([-3.0, 0.5, 7.0]), likelihood="gaussian", num_bins=256, source="s")
    with pytest.raises(DataError, match="nan-data: contains 2 NaN or infinite values"):
        check_support(
            torch.tensor([0.0, float("nan"), float("inf")]),
            likelihood="gaussian",
            num_bins=256,
            source="nan-data",
        )


@pytest.mark.parametrize("likelihood", ["logistic", "logistic_mixture"])
def test_check_support_logistic_needs_the_num_bins_grid(likelihood):
    on_grid = torch.arange(256, dtype=torch.float32) / 255
    check_support(on_grid, likelihood=likelihood, num_bins=256, source="s")
    check_support(on_grid + 5e-5, likelihood=likelihood, num_bins=256, source="s")  # within 1e-4
    with pytest.raises(
        DataError, match=rf"half: the {likelihood} likelihood with num_bins=256 .*\(e.g. 0.5\)"
    ):
        check_support(torch.tensor([0.0, 0.5]), likelihood=likelihood, num_bins=256, source="half")
    with pytest.raises(DataError, match=r"above: .*k/255 .*\(e.g. 1.00392\)"):
        check_support(
            torch.tensor([256 / 255]), likelihood=likelihood, num_bins=256, source="above"
        )


def test_check_support_logistic_on_digits_needs_17_bins():
    digits = load_image_data(DataConfig(name="digits")).test
    check_support(digits, likelihood="logistic", num_bins=17, source="digits")
    with pytest.raises(DataError, match="num_bins=256"):
        check_support(digits, likelihood="logistic", num_bins=256, source="digits")


def test_check_support_unknown_likelihood():
    with pytest.raises(NotImplementedError, match="poisson"):
        check_support(torch.zeros(3), likelihood="poisson", num_bins=256, source="s")


def test_array_headers_declaring_huge_arrays_are_refused_before_any_allocation(tmp_path):
    """A .npy (or a .npz member) whose header declares 10^14 elements is one DataError, never a MemoryError."""
    import io
    import zipfile

    import numpy as np

    from vaekit.config import DataConfig
    from vaekit.data import load_image_data
    from vaekit.errors import DataError

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 10**7)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue() + b"\x00" * 64)  # magic, header, 64 bytes of data
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("train.npy", header.getvalue() + b"\x00" * 64)
    for name in ("huge.npy", "huge.npz"):
        with pytest.raises(DataError, match="declares shape"):
            load_image_data(DataConfig(name="images", path=str(tmp_path / name)))


def test_a_decompression_bomb_png_is_one_data_error(tmp_path, monkeypatch):
    from PIL import Image

    from vaekit.config import DataConfig
    from vaekit.data import load_image_data
    from vaekit.errors import DataError

    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.new("L", (64, 64)).save(folder / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: Pillow's bomb error, as for 20000^2
    with pytest.raises(DataError, match="not a readable image"):
        load_image_data(DataConfig(name="images", path=str(folder)))
    # between the limit and twice it Pillow only warns and decodes (as for 10000 x 10000); vaekit refuses it too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    for lazy in (False, True):
        with pytest.raises(DataError, match="DecompressionBombWarning"):
            load_image_data(DataConfig(name="images", path=str(folder), lazy=lazy))
