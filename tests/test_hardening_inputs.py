"""Hardening of the loaders against the inputs that fuzzing (tests/test_fuzz.py) found to escape them.

Each test reproduces one finding: before its fix the input gave a traceback of another type
(UnicodeDecodeError, RecursionError, TypeError, MemoryError, tokenize's TokenError, AttributeError,
OSError, Pillow's ValueError), read a gzip stream whole, or was accepted although its documentation
rules it out.
"""

from __future__ import annotations

import gzip
import io
import json
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from conftest import tiny_config

import vaekit
from vaekit.config import load_config
from vaekit.data import load_image_data, load_point_folder, open_npy, read_idx
from vaekit.data.images import IDX_IMAGES_MAGIC
from vaekit.data.pointclouds import read_cloud
from vaekit.errors import CheckpointError, ConfigError, DataError, RunDirError


def _npy(header: str, data: bytes = b"") -> bytes:
    """A .npy file (format 1.0) whose header dictionary is `header`, as written."""
    text = header.encode("latin1")
    padding = -(10 + len(text) + 1) % 64
    return b"\x93NUMPY\x01\x00" + (len(text) + padding + 1).to_bytes(2, "little") + text + b" " * padding + b"\n" + data


# configs

def test_a_config_file_that_is_not_utf8_text_is_one_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"<\xa7Ae:")
    with pytest.raises(ConfigError, match="config.yaml: cannot read it as a UTF-8 text file"):
        load_config(path)


def test_yaml_nested_deeper_than_the_parser_recurses_is_one_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deep"):
        load_config(path)
    with pytest.raises(ConfigError, match="train.steps"):  # an override value that is no YAML is a plain string
        load_config(None, ["train.steps=" + "[" * 5000 + "]" * 5000])


@pytest.mark.parametrize("preset,override,key", [
    ("digits-vae", "data.split_seed=-1", "data.split_seed"),
    ("digits-vae", "data.test_binarize_seed=18446744073709551616", "data.test_binarize_seed"),
    ("pointcloud-ae", "data.split_seed=-5", "data.split_seed"),
    ("pointcloud-ae", "data.categories=[]", "data.categories"),
    ("digits-vae", "model.image_shape=[1, 8, -8]", "image_shape"),
    ("digits-vqvae", "model.image_shape=[0, 8, 8]", "image_shape"),
    ("digits-vae", "model.gaussian_std=0", "gaussian_std"),
    ("digits-vqvae", "model.gaussian_std=-0.1", "gaussian_std"),
    ("digits-wae-mmd", "model.rbf_bandwidth=-1", "rbf_bandwidth"),
    ("pointcloud-ae", "model.num_points=-3", "num_points"),
    ("digits-latent-gmm", "model.seed=4294967296", "seed"),
])
def test_a_value_outside_its_documented_range_is_refused_at_load(preset, override, key):
    """Each was accepted, then failed deep in torch, numpy or scikit-learn (or silently did nothing useful)."""
    with pytest.raises(ConfigError, match=key):
        load_config(preset, [override])


def test_the_ranges_keep_every_preset_and_null_values_loading():
    from vaekit.config import preset_names

    for name in preset_names():
        load_config(name)
    assert load_config("digits-vae", ["model.gaussian_std=null"]).model.gaussian_std is None


# IDX files

def test_a_gzipped_idx_file_longer_than_its_header_says_is_refused_without_being_read_whole(tmp_path):
    """A 70 KB file of 64 MiB of zeros behind a header declaring 4 bytes: at most those bytes and one more are read."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    header = IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (1, 2, 2))
    chunks = [compressor.compress(header)] + [compressor.compress(bytes(1 << 20)) for _ in range(64)]
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(chunks) + compressor.flush())
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"declares shape \(1, 2, 2\) \(4 bytes of values\) but more than 4"):
            read_idx(path, magic=IDX_IMAGES_MAGIC)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20  # not the 64 MiB
    finally:
        tracemalloc.stop()


def test_a_gzipped_idx_file_still_reads_its_values(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"\0\0\0\2\0\0\0\3\0\0\0\4" + array.tobytes()))
    np.testing.assert_array_equal(read_idx(path, magic=IDX_IMAGES_MAGIC), array)


# .npy and .npz files

@pytest.mark.parametrize(("shape", "size", "message"), [
    ("(-2, -3)", 6, "negative dimension"),  # as many values as the file holds; numpy's memory map then refused it
    ("(True, 8, 8)", 64, "a dimension that is not an integer"),  # np.load refuses it; vaekit memory-mapped it
])
def test_a_npy_header_whose_shape_numpys_header_reader_lets_through_is_one_data_error(tmp_path, shape, size, message):
    path = tmp_path / "images.npy"
    path.write_bytes(_npy(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}", bytes(size)))
    with pytest.raises(DataError, match=f"not a .npy file .*{message}"):
        open_npy(path)
    with pytest.raises(DataError, match=message):
        load_image_data(vaekit.config.DataConfig(name="images", path=str(path)))


@pytest.mark.parametrize("shape", ["(0, 18446744073709551616)", "(0, 4611686018427387904, 4611686018427387904)",
                                   pytest.param("(" + "0, " * 70 + ")", id="70-dimensions")])
def test_an_empty_npy_whose_shape_numpy_cannot_hold_is_one_data_error(tmp_path, shape):
    """No values (a zero dimension), so the header's size matches the file; numpy then refused the shape itself."""
    path = tmp_path / "images.npy"
    path.write_bytes(_npy(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}", b""))
    with pytest.raises(DataError, match="not a .npy file .*beyond what numpy can hold"):
        open_npy(path)
    with pytest.raises(DataError, match="beyond what numpy can hold"):
        load_image_data(vaekit.config.DataConfig(name="images", path=str(path)))
    archive_path = tmp_path / "points.npz"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("points.npy", path.read_bytes())
    with pytest.raises(DataError, match="points.npz: member points.npy is not a readable array .*beyond what numpy"):
        read_cloud(archive_path, 32, 0)


def test_a_npy_header_numpys_python2_fallback_cannot_tokenize_is_one_data_error(tmp_path):
    path = tmp_path / "images.npy"
    path.write_bytes(_npy("{'descr': '<i2', 'fortran_order': False, 'shape': (2, 1, ", bytes(4)))
    with pytest.raises(DataError, match="not a .npy file .*cannot parse the header"):
        open_npy(path)


@pytest.fixture
def npy_named_npz(tmp_path):
    """A .npy file named .npz: numpy's np.load guessed by its first bytes and gave an array, not an archive."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 8, 8), np.uint8))
    path = tmp_path / "images.npz"
    path.write_bytes(buffer.getvalue())
    return path


def test_a_npy_file_named_npz_is_one_data_error_for_images_and_points(npy_named_npz):
    for load in (lambda: load_image_data(vaekit.config.DataConfig(name="images", path=str(npy_named_npz))),
                 lambda: read_cloud(npy_named_npz, 32, 0)):
        with pytest.raises(DataError, match=r"images.npz: not a readable .npz file \(BadZipFile"):
            load()


def test_a_point_npz_member_declaring_a_huge_array_is_refused_before_any_allocation(tmp_path):
    """112 GiB declared by a 200-byte member: a MemoryError before its header was checked."""
    path = tmp_path / "points.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("points.npy", _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 3), }"))
    with pytest.raises(DataError, match=r"points.npz: member points.npy declares shape \(10000000000, 3\)"):
        read_cloud(path, 32, 0)


# PNG folders

def test_a_png_whose_header_chunk_is_cut_short_is_one_data_error(tmp_path):
    """Pillow raises "Truncated IHDR chunk" as a ValueError, which only OSError-like errors were caught as."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[8:12] = (12).to_bytes(4, "big")  # IHDR's length: 12 of its 13 bytes
    (tmp_path / "a.png").write_bytes(data)
    Image.new("L", (4, 4)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"a.png: not a readable image \(ValueError: Truncated IHDR chunk"):
        load_image_data(vaekit.config.DataConfig(name="images", path=str(tmp_path)))


# point and mesh files

def test_a_ply_file_trimesh_reads_as_an_empty_scene_is_one_data_error(tmp_path):
    path = tmp_path / "empty.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\n"
                    "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(DataError, match="empty.ply: holds no mesh or points"):
        read_cloud(path, 32, 0)


def test_a_point_folder_whose_split_leaves_no_training_cloud_is_refused(tmp_path):
    (tmp_path / "chairs").mkdir()
    np.save(tmp_path / "chairs" / "one.npy", np.random.default_rng(0).normal(size=(64, 3)))
    with pytest.raises(DataError, match="leaves 0 training and 1 test clouds"):
        load_point_folder(tmp_path, num_points=32)
    np.save(tmp_path / "chairs" / "two.npy", np.random.default_rng(1).normal(size=(64, 3)))
    data = load_point_folder(tmp_path, num_points=32)
    assert (len(data.train), len(data.test)) == (1, 1)


# checkpoints

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits VAE, one checkpoint (step 2)."""
    return vaekit.train(tiny_config(tmp_path_factory.mktemp("inputs"), "train.steps=2", "train.eval_every=2",
                                    "train.checkpoint_every=2", name="run"), quiet=True)


def _edit_stored_config(run, edit) -> None:
    path = run / "checkpoints/step-2/state.json"
    state = json.loads(path.read_text())
    edit(state["config"])
    path.write_text(json.dumps(state))


def test_a_stored_parent_path_too_long_for_the_os_is_one_run_dir_error(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _edit_stored_config(run, lambda config: config.update(parent="a" * 5000))
    with pytest.raises(RunDirError, match="cannot be read as a run directory .*File name too long"):
        vaekit.load(run)


def test_a_stored_config_with_a_negative_image_size_is_one_checkpoint_error(trained, tmp_path):
    """Its model could not be built on the meta device, so it was built for real: a RuntimeError from torch."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    _edit_stored_config(run, lambda config: config["model"].update(image_shape=[1, 8, -8]))
    with pytest.raises(CheckpointError, match="(?s)stored config is not valid.*image_shape"):
        vaekit.load(run)
