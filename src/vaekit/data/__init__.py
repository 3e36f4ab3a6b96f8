"""Data sets as in-memory tensors: images (digits, Fashion-MNIST, PNG folders, arrays)."""

from vaekit.data.images import ImageData, binarize, check_support, load_image_data, read_idx

__all__ = ["ImageData", "binarize", "check_support", "load_image_data", "read_idx"]
