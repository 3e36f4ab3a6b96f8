"""Data sets: images (digits, Fashion-MNIST, PNG folders, arrays, dataset folders) and point clouds, as
in-memory tensors, or with the training split left on disk and read per batch (`data.lazy`)."""

from vaekit.config import DataConfig, PointCloudDataConfig
from vaekit.data.images import ImageData, binarize, check_support, load_image_data, read_idx
from vaekit.data.lazy import ArrayRows, LazyImages, open_npy, write_npy
from vaekit.data.pointclouds import PointCloudData, load_point_folder, load_procedural

__all__ = ["ArrayRows", "ImageData", "LazyImages", "PointCloudData", "binarize", "check_support", "load_data",
           "load_image_data", "load_point_folder", "load_procedural", "open_npy", "read_idx", "write_npy"]


def load_data(config: DataConfig | PointCloudDataConfig) -> ImageData | PointCloudData:
    """The data set a run's `data` section names."""
    if isinstance(config, DataConfig):
        return load_image_data(config)
    if config.name == "procedural":
        return load_procedural(
            shapes_per_category=config.shapes_per_category, num_points=config.num_points,
            test_fraction=config.test_fraction, seed=config.split_seed, normalization=config.normalization,
            categories=config.categories, cache_dir=config.cache_dir,
        )
    if config.path is None:
        from vaekit.errors import ConfigError

        raise ConfigError("data.path must name a folder for data.name=point_folder")
    return load_point_folder(config.path, num_points=config.num_points, normalization=config.normalization,
                             test_fraction=config.test_fraction, seed=config.split_seed)
