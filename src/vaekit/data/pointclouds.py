"""Point clouds in memory: a procedural dataset of shapes built from primitives, and users' folders of
point files (.npy/.npz/.xyz/.ply) and meshes (.off/.obj/.ply/.stl, sampled uniformly on the surface).

Every cloud is (num_points, 3) float32; a set is (N, num_points, 3). Normalisation is an explicit,
recorded choice: "unit_sphere" (centre at the mean, farthest point at radius 1), "unit_box"
(centre of the bounding box at 0, longest side 1, so the cloud fits [-0.5, 0.5]^3 as PointFlow's
JSD grid expects), or "none".
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh
from torch import Tensor

from vaekit.data.lazy import open_npy, read_npz
from vaekit.errors import DataError
from vaekit.io import atomic_write_bytes, atomic_write_npz

Normalization = Literal["unit_sphere", "unit_box", "none"]
POINT_SUFFIXES = (".npy", ".npz", ".xyz")
MESH_SUFFIXES = (".off", ".obj", ".ply", ".stl")
MIN_POINTS = 16
PROCEDURAL_VERSION = 3  # bump when the generators change: invalidates caches


@dataclass(frozen=True)
class PointCloudData:
    """Train and test point-cloud sets with category labels."""

    train: Tensor  # (N, P, 3) float32
    test: Tensor  # (M, P, 3) float32
    train_labels: Tensor  # (N,) int64 indices into categories
    test_labels: Tensor  # (M,) int64
    categories: tuple[str, ...]
    normalization: str
    source: str


def normalize(points: np.ndarray, mode: Normalization, source: str = "a cloud") -> np.ndarray:
    """Normalise one cloud (P, 3) as `mode` says (see the module docstring); DataError when its extent is 0
    (every point the same) or overflows, since scaling it would collapse it to one point."""
    if mode == "none":
        return points
    wide = points.astype(np.float64)  # float32 coordinates near 1e38 overflow their own squares
    if mode == "unit_sphere":
        centred = wide - wide.mean(0)
        extent = float(np.linalg.norm(centred, axis=1).max())
    elif mode == "unit_box":
        low, high = wide.min(0), wide.max(0)
        centred, extent = wide - (low + high) / 2, float((high - low).max())
    else:
        raise NotImplementedError(mode)
    if not np.isfinite(extent) or extent <= 1e-12:
        raise DataError(f"{source}: its points span {extent:g}; a {mode} normalisation needs a finite, nonzero extent")
    return (centred / extent).astype(points.dtype)


def sample_surface(mesh: trimesh.Trimesh, num_points: int, seed: int, source: str) -> np.ndarray:
    """num_points drawn uniformly by area on the mesh's surface: (P, 3) float32."""
    outside = ~(np.abs(mesh.vertices) <= np.finfo(np.float32).max)  # NaN too; keeps the area's squares finite
    if outside.any():
        raise DataError(f"{source}: contains {int(outside.sum())} NaN, infinite or beyond float32's range vertex "
                        "coordinates")
    if mesh.is_empty or mesh.area <= 0:
        raise DataError(f"{source}: empty mesh (no faces with area)")
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(points, dtype=np.float32)


# --- the procedural dataset -------------------------------------------------------------------

def _at(mesh: trimesh.Trimesh, x: float, y: float, z: float) -> trimesh.Trimesh:
    mesh.apply_translation((x, y, z))
    return mesh


def _cylinder(radius: float, height: float, x: float, y: float, z: float) -> trimesh.Trimesh:
    """A vertical cylinder whose base sits at height z."""
    return _at(trimesh.creation.cylinder(radius=radius, height=height, sections=24), x, y, z + height / 2)


def _legs(width: float, depth: float, height: float, radius: float) -> list[trimesh.Trimesh]:
    inset_x, inset_y = width / 2 - 1.5 * radius, depth / 2 - 1.5 * radius
    return [_cylinder(radius, height, sx * inset_x, sy * inset_y, 0.0) for sx in (-1, 1) for sy in (-1, 1)]


def _table(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    width, depth, height = rng.uniform(0.9, 1.6), rng.uniform(0.5, 1.0), rng.uniform(0.55, 0.85)
    top = rng.uniform(0.03, 0.07)
    parts = [_at(trimesh.creation.box((width, depth, top)), 0, 0, height - top / 2)]
    return parts + _legs(width, depth, height - top, rng.uniform(0.025, 0.05))


def _chair(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    width, depth, seat_height = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.5)
    thick, back = rng.uniform(0.03, 0.06), rng.uniform(0.4, 0.7)
    parts = [_at(trimesh.creation.box((width, depth, thick)), 0, 0, seat_height - thick / 2),
             _at(trimesh.creation.box((width, thick, back)), 0, -depth / 2 + thick / 2, seat_height + back / 2)]
    return parts + _legs(width, depth, seat_height - thick, rng.uniform(0.015, 0.03))


def _lamp(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    base_radius, stem = rng.uniform(0.12, 0.25), rng.uniform(0.6, 1.1)
    shade_radius, shade_height = rng.uniform(0.18, 0.35), rng.uniform(0.2, 0.35)
    shade = trimesh.creation.cone(radius=shade_radius, height=shade_height, sections=24)  # wide end down
    return [_cylinder(base_radius, rng.uniform(0.03, 0.06), 0, 0, 0),
            _cylinder(rng.uniform(0.01, 0.025), stem, 0, 0, 0),
            _at(shade, 0, 0, stem - 0.4 * shade_height)]


def _mug(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    radius, height = rng.uniform(0.25, 0.4), rng.uniform(0.5, 0.9)
    wall = rng.uniform(0.02, 0.05)
    body = trimesh.creation.annulus(r_min=radius - wall, r_max=radius, height=height, sections=32)
    handle = trimesh.creation.torus(major_radius=rng.uniform(0.12, 0.2) * height, minor_radius=rng.uniform(0.02, 0.04),
                                    major_sections=24, minor_sections=8)
    handle.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    return [_at(body, 0, 0, height / 2), _cylinder(radius, wall, 0, 0, 0), _at(handle, radius, 0, height / 2)]


def _airplane(rng: np.random.Generator) -> list[trimesh.Trimesh]:
    length, radius = rng.uniform(1.6, 2.4), rng.uniform(0.08, 0.14)
    span, chord = rng.uniform(1.4, 2.2), rng.uniform(0.25, 0.45)
    body = trimesh.creation.capsule(height=length, radius=radius, count=(16, 16))
    body.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (0, 1, 0)))  # along x
    wing_x = rng.uniform(-0.15, 0.15) * length
    tail_x = -length / 2 + 0.1
    return [body,
            _at(trimesh.creation.box((chord, span, 0.03)), wing_x, 0, 0),
            _at(trimesh.creation.box((chord * 0.6, span * 0.35, 0.025)), tail_x, 0, 0),
            _at(trimesh.creation.box((chord * 0.6, 0.025, rng.uniform(0.25, 0.45))), tail_x, 0, 0.2)]


GENERATORS: dict[str, Callable[[np.random.Generator], list[trimesh.Trimesh]]] = {
    "airplane": _airplane, "chair": _chair, "lamp": _lamp, "mug": _mug, "table": _table,
}


def procedural_cloud(category: str, seed: int, num_points: int, normalization: Normalization) -> np.ndarray:
    """One shape of `category` made from randomised primitives, sampled and normalised: (P, 3)."""
    rng = np.random.default_rng(seed)
    mesh = trimesh.util.concatenate(GENERATORS[category](rng))
    return normalize(sample_surface(mesh, num_points, seed, f"procedural {category}"), normalization)


def load_procedural(
    *, shapes_per_category: int = 100, num_points: int = 2048, test_fraction: float = 0.2, seed: int = 0,
    normalization: Normalization = "unit_sphere", categories: tuple[str, ...] = tuple(GENERATORS),
    cache_dir: str | Path | None = None,
) -> PointCloudData:
    """The procedural dataset: `shapes_per_category` shapes of each category, split by seed, cached as .npz."""
    unknown = set(categories) - set(GENERATORS)
    if unknown:
        raise DataError(f"unknown procedural categories {sorted(unknown)}; available: {sorted(GENERATORS)}")
    key = f"v{PROCEDURAL_VERSION}-{shapes_per_category}-{num_points}-{seed}-{normalization}-{'-'.join(categories)}"
    cache = Path(cache_dir or os.environ.get("VAEKIT_CACHE", Path.home() / ".cache" / "vaekit")) / "pointclouds"
    file = cache / f"procedural-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if file.is_file():
        with np.load(file, allow_pickle=False) as stored:
            clouds, labels = stored["clouds"], stored["labels"]
    else:
        clouds = np.stack([
            procedural_cloud(name, seed * 1_000_003 + 7919 * zlib.crc32(name.encode()) + i, num_points, normalization)
            for name in categories for i in range(shapes_per_category)
        ])
        labels = np.repeat(np.arange(len(categories)), shapes_per_category)
        atomic_write_npz(file, clouds=clouds, labels=labels)
    return _split(clouds, labels, categories, test_fraction, seed, normalization, f"procedural ({file})")


def _split(clouds: np.ndarray, labels: np.ndarray, categories: tuple[str, ...], test_fraction: float, seed: int,
           normalization: str, source: str) -> PointCloudData:
    """A seeded split that keeps each category's share in both parts.

    Each category is split by its own generator, seeded by (seed, category name), so a category's
    shapes and split are the same whichever other categories are loaded with it.
    """
    test_mask = np.zeros(len(labels), dtype=bool)
    for c, name in enumerate(categories):
        members = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        test_mask[members[rng.permutation(len(members))[: math.ceil(len(members) * test_fraction)]]] = True
    if test_mask.all() or not test_mask.any():
        raise DataError(f"{source}: test_fraction={test_fraction} of each category's clouds leaves "
                        f"{int((~test_mask).sum())} training and {int(test_mask.sum())} test clouds of {len(labels)}; "
                        "each split needs one (add shapes or change the test fraction)")
    as_tensor = torch.from_numpy
    return PointCloudData(
        train=as_tensor(clouds[~test_mask]).float(), test=as_tensor(clouds[test_mask]).float(),
        train_labels=as_tensor(labels[~test_mask]).long(), test_labels=as_tensor(labels[test_mask]).long(),
        categories=categories, normalization=normalization, source=source,
    )


# --- users' folders ---------------------------------------------------------------------------

def load_point_folder(
    path: str | Path, *, num_points: int = 2048, normalization: Normalization = "unit_sphere",
    test_fraction: float = 0.2, seed: int = 0,
) -> PointCloudData:
    """Clouds from `path/<category>/<file>`: point files are resampled to num_points, meshes sampled on the surface."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected one subfolder of shape files per category)")
    categories = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not categories:
        raise DataError(f"{root}: no category subfolders")
    clouds, labels = [], []
    for c, category in enumerate(categories):
        files = sorted(f for f in (root / category).iterdir() if f.suffix.lower() in POINT_SUFFIXES + MESH_SUFFIXES)
        if not files:
            raise DataError(f"{root / category}: a category folder without point or mesh files "
                            f"({', '.join(POINT_SUFFIXES + MESH_SUFFIXES)})")
        for i, file in enumerate(files):
            clouds.append(normalize(read_cloud(file, num_points, seed * 1_000_003 + i), normalization, str(file)))
            labels.append(c)
    if not clouds:
        raise DataError(f"{root}: no point or mesh files ({', '.join(POINT_SUFFIXES + MESH_SUFFIXES)})")
    return _split(np.stack(clouds), np.array(labels), categories, test_fraction, seed, normalization, str(root))


def read_cloud(file: Path, num_points: int, seed: int) -> np.ndarray:
    """One cloud of exactly num_points from a point file or a mesh: (P, 3) float32."""
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":  # the header checked first: a text file named .npy is "not a .npy file"
            points = np.array(open_npy(file))
        elif suffix == ".npz":  # its first array, every member's header checked before numpy allocates it
            points = next(iter(read_npz(file).values()), np.zeros((0, 3)))
        elif suffix == ".xyz":
            points = _read_xyz(file)
        else:
            geometry = _load_mesh(file, suffix)
            if isinstance(geometry, trimesh.PointCloud):
                points = np.asarray(geometry.vertices)
            else:
                return _check_cloud(sample_surface(geometry, num_points, seed, str(file)), file)
    except DataError:
        raise
    except (OSError, ValueError, IndexError, KeyError, EOFError) as error:
        raise DataError(f"{file}: unreadable ({type(error).__name__}: {error})") from None
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range becomes inf: _check_cloud says so
        points = np.asarray(points, dtype=np.float32)
    points = _check_cloud(points, file)
    index = np.random.default_rng(seed).choice(len(points), num_points, replace=len(points) < num_points)
    return points[index]


def _read_xyz(file: Path) -> np.ndarray:
    """The first three columns of a whitespace-separated text file of points; a file without a number is one DataError
    (numpy would only warn and give an empty array)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
        points = np.loadtxt(file, ndmin=2)
    if points.size == 0:
        raise DataError(f"{file}: holds no points (no numbers in it)")
    return points[:, :3]


def _load_mesh(file: Path, suffix: str) -> trimesh.Trimesh | trimesh.PointCloud:
    """trimesh's reading of a mesh or .ply file; any failure of its parsers is one DataError naming the file, and so is
    anything else it may give (an empty scene)."""
    try:  # numpy's cast warnings inside the parser silenced: the numbers it gives are checked here
        with np.errstate(over="ignore", invalid="ignore"):
            geometry = trimesh.load(file, force="mesh" if suffix != ".ply" else None, process=False)
    except Exception as error:  # noqa: BLE001 - a third-party parser of untrusted files may raise anything
        raise DataError(f"{file}: not a readable mesh ({type(error).__name__}: {error})") from None
    if not isinstance(geometry, (trimesh.Trimesh, trimesh.PointCloud)):
        raise DataError(f"{file}: holds no mesh or points (trimesh reads a {type(geometry).__name__})")
    return geometry


def _check_cloud(points: np.ndarray, file: Path) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 3:
        raise DataError(f"{file}: expected points of shape (P, 3), got {points.shape}")
    if not np.isfinite(points).all():
        raise DataError(f"{file}: contains {int((~np.isfinite(points)).sum())} NaN, infinite or beyond float32's range "
                        "coordinates")
    if len(points) < MIN_POINTS:
        raise DataError(f"{file}: only {len(points)} points; at least {MIN_POINTS} are needed")
    return points


def write_clouds(clouds: Tensor, stem: Path) -> list[Path]:
    """Write clouds (N, P, 3) as STEM.npy (float32) and STEM-i.ply, one per cloud, atomically."""
    array = clouds.detach().float().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    paths = [stem.with_name(stem.name + ".npy")]
    atomic_write_bytes(paths[0], buffer.getvalue())
    for index, cloud in enumerate(array):
        paths.append(stem.with_name(f"{stem.name}-{index}.ply"))
        atomic_write_bytes(paths[-1], trimesh.PointCloud(cloud).export(file_type="ply"))
    return paths
