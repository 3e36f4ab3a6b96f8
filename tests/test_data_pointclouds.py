"""Point-cloud data: the procedural dataset (deterministic, cached, split per category) and users' files."""

import warnings

import numpy as np
import pytest
import torch
import trimesh

from vaekit.data.pointclouds import (
    GENERATORS,
    load_point_folder,
    load_procedural,
    normalize,
    read_cloud,
)
from vaekit.errors import DataError


def test_procedural_dataset_shapes_split_and_determinism(tmp_path):
    data = load_procedural(shapes_per_category=10, num_points=256, cache_dir=tmp_path)
    assert data.categories == tuple(GENERATORS)
    assert data.train.shape == (40, 256, 3) and data.test.shape == (10, 256, 3)
    assert torch.bincount(data.test_labels).tolist() == [2] * 5  # every category in the test split
    again = load_procedural(shapes_per_category=10, num_points=256, cache_dir=tmp_path / "other")
    assert torch.equal(data.train, again.train) and torch.equal(data.test_labels, again.test_labels)
    norms = data.train.norm(dim=-1)
    torch.testing.assert_close(norms.max(1).values, torch.ones(40))  # unit sphere
    torch.testing.assert_close(data.train.mean(1), torch.zeros(40, 3), atol=1e-5, rtol=0)


def test_a_category_has_the_same_shapes_and_split_alone_or_with_others(tmp_path):
    every = load_procedural(shapes_per_category=6, num_points=64, cache_dir=tmp_path)
    chairs = load_procedural(shapes_per_category=6, num_points=64, cache_dir=tmp_path, categories=("chair",))
    chair = every.categories.index("chair")
    torch.testing.assert_close(chairs.train, every.train[every.train_labels == chair], rtol=0, atol=0)
    torch.testing.assert_close(chairs.test, every.test[every.test_labels == chair], rtol=0, atol=0)


def test_procedural_dataset_is_cached(tmp_path):
    load_procedural(shapes_per_category=4, num_points=64, cache_dir=tmp_path)
    files = list((tmp_path / "pointclouds").glob("*.npz"))
    assert len(files) == 1
    cached = load_procedural(shapes_per_category=4, num_points=64, cache_dir=tmp_path)
    assert str(files[0]) in cached.source


def test_categories_differ_in_shape(tmp_path):
    data = load_procedural(shapes_per_category=8, num_points=512, cache_dir=tmp_path, normalization="unit_box")
    extents = (data.train.max(1).values - data.train.min(1).values)  # (N, 3)
    per_category = torch.stack([extents[data.train_labels == c].mean(0) for c in range(5)])
    airplane, lamp = per_category[0], per_category[2]
    assert airplane[2] < 0.5 < lamp[2]  # flat airplanes, tall lamps
    assert torch.all(data.train.abs() <= 0.5 + 1e-6)  # unit box fits [-0.5, 0.5]^3


def test_normalize_modes():
    points = np.array([[0, 0, 0], [2, 0, 0], [0, 4, 0]], dtype=np.float32)
    box = normalize(points, "unit_box")
    assert box.max(0)[1] - box.min(0)[1] == pytest.approx(1.0)
    assert np.linalg.norm(normalize(points, "unit_sphere"), axis=1).max() == pytest.approx(1.0)


def test_folder_of_points_and_meshes(tmp_path):
    (tmp_path / "box").mkdir()
    (tmp_path / "ball").mkdir()
    trimesh.creation.box((1, 2, 3)).export(tmp_path / "box" / "a.off")
    trimesh.creation.box((2, 1, 1)).export(tmp_path / "box" / "b.stl")
    np.save(tmp_path / "ball" / "c.npy", np.random.default_rng(0).normal(size=(100, 3)))
    np.savetxt(tmp_path / "ball" / "d.xyz", np.random.default_rng(1).normal(size=(50, 3)))
    trimesh.creation.icosphere().export(tmp_path / "ball" / "e.obj")
    data = load_point_folder(tmp_path, num_points=128, test_fraction=0.34)
    assert data.categories == ("ball", "box")
    assert len(data.train) + len(data.test) == 5 and data.train.shape[1:] == (128, 3)


@pytest.mark.parametrize("content,message", [
    (np.full((30, 3), np.nan), "NaN"),
    (np.zeros((5, 3)), "only 5 points"),
    (np.zeros((30, 2)), r"shape \(P, 3\)"),
])
def test_bad_point_files(tmp_path, content, message):
    file = tmp_path / "bad.npy"
    np.save(file, content)
    with pytest.raises(DataError, match=message):
        read_cloud(file, 64, seed=0)


def test_unreadable_and_empty_files(tmp_path):
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="broken.npy: not a .npy file"):
        read_cloud(tmp_path / "broken.npy", 64, seed=0)
    (tmp_path / "empty.off").write_text("OFF\n0 0 0\n")
    with pytest.raises(DataError, match="empty.off"):
        read_cloud(tmp_path / "empty.off", 64, seed=0)
    with pytest.raises(DataError, match="no such folder"):
        load_point_folder(tmp_path / "missing")
    (tmp_path / "empty.xyz").write_text("# x y z\n\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error, not numpy's warning first
        with pytest.raises(DataError, match="empty.xyz: holds no points"):
            read_cloud(tmp_path / "empty.xyz", 64, seed=0)


def test_hostile_point_and_mesh_files_are_one_data_error_naming_the_file(tmp_path):
    """Findings of the hardening campaign: each is one DataError that names the file and says what is wrong."""
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")  # a text file named .npy: not "pickled data"
    with pytest.raises(DataError, match="text.npy: not a .npy file"):
        read_cloud(tmp_path / "text.npy", 64, seed=0)
    (tmp_path / "latin.off").write_bytes(b"OFF\n\xff\xfe 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")  # not UTF-8
    with pytest.raises(DataError, match="latin.off: not a readable mesh"):
        read_cloud(tmp_path / "latin.off", 64, seed=0)
    (tmp_path / "nan.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 nan\n0 1 0\n3 0 1 2\n")  # not "empty mesh"
    with pytest.raises(DataError, match="nan.off: contains 1 NaN, infinite or beyond float32.s range vertex"):
        read_cloud(tmp_path / "nan.off", 64, seed=0)


@pytest.mark.parametrize("mode", ["unit_sphere", "unit_box"])
@pytest.mark.parametrize("points", [np.zeros((30, 3)), np.full((30, 3), 7.0)], ids=["zeros", "one-point"])
def test_a_cloud_without_a_nonzero_extent_is_refused_not_normalised_to_one_point(points, mode):
    with pytest.raises(DataError, match="cloud.npy: its points span"):
        normalize(points.astype(np.float32), mode, "cloud.npy")


@pytest.mark.parametrize("mode", ["unit_sphere", "unit_box"])
def test_coordinates_near_the_float32_limit_normalise_without_overflow(mode):
    points = np.array([[3e38, 0, 0], [-3e38, 0, 0], [0, 1e38, 0]] * 10, dtype=np.float32)  # squares overflow float32
    normalised = normalize(points, mode, "cloud.npy")
    assert np.isfinite(normalised).all() and normalised.dtype == np.float32
    assert np.ptp(normalised[:, 0]) > 0.5 and np.ptp(normalised[:, 1]) > 0.1  # not collapsed to one point


def test_an_empty_category_folder_is_refused_not_a_class_without_shapes(tmp_path):
    (tmp_path / "box").mkdir()
    (tmp_path / "empty").mkdir()
    trimesh.creation.box((1, 2, 3)).export(tmp_path / "box" / "a.off")
    with pytest.raises(DataError, match="empty: a category folder without point or mesh files"):
        load_point_folder(tmp_path, num_points=64)


@pytest.mark.parametrize("name, text", [
    ("huge.xyz", "1e39 0 0\n" * 100),
    ("huge.off", "OFF\n4 2 0\n1e300 0 0\n0 1 0\n0 0 1\n1 1 1\n3 0 1 2\n3 1 2 3\n"),  # finite in float64
    ("huge.ply", "ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
                 "end_header\n" + "1e39 0 0\n" * 100),
])
def test_coordinates_beyond_float32_are_one_error_without_numpys_cast_warning(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error, not numpy's "overflow encountered in cast" first
        with pytest.raises(DataError, match=f"{name}: contains {1 if name == 'huge.off' else 100} NaN, infinite or "
                                             "beyond float32.s range"):
            read_cloud(tmp_path / name, 64, seed=0)
