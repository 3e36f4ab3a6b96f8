"""Building blocks only: no losses, no data, no files."""

from vaekit.nn.image_nets import ImageNetConfig, build_image_decoder, build_image_encoder

__all__ = ["ImageNetConfig", "build_image_decoder", "build_image_encoder"]
