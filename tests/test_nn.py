"""Image encoders/decoders fit 8x8, 28x28 and 32x32 images; impossible shapes are refused at build time."""

import pytest
import torch

from vaekit.errors import ConfigError
from vaekit.nn import ImageNetConfig, build_image_decoder, build_image_encoder


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_encoder_and_decoder_shapes(architecture, image_shape):
    config = ImageNetConfig(architecture, image_shape, hidden_dims=(32,), conv_channels=(8, 16))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, *image_shape, generator=g)
    z = torch.randn(3, 5, generator=g)
    assert build_image_encoder(config, out_features=10)(x).shape == (3, 10)
    assert build_image_decoder(config, in_features=5, out_channels=7)(z).shape == (3, 7, *image_shape[1:])


def test_conv_needs_sizes_divisible_by_its_downsampling():
    config = ImageNetConfig("conv", (1, 28, 28), hidden_dims=(32,), conv_channels=(8, 16, 32))
    with pytest.raises(ConfigError, match="divisible by 8, got 28x28"):
        build_image_encoder(config, out_features=4)
