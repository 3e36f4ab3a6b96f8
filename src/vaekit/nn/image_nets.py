"""MLP and convolutional image encoders/decoders for 8x8, 28x28, 32x32 (any H, W divisible by 2^n).

Encoder: x (B, C, H, W) -> features (B, out_features).
Decoder: z (B, in_features) -> maps (B, out_channels, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from torch import nn

from vaekit.errors import ConfigError

Activation = Literal["relu", "silu", "elu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}


@dataclass(frozen=True)
class ImageNetConfig:
    """Shape and sizes of an image encoder/decoder pair."""

    architecture: Literal["mlp", "conv"]
    image_shape: tuple[int, int, int]  # (C, H, W)
    hidden_dims: tuple[int, ...]  # mlp: hidden widths; conv: widths of the dense layers after the convs
    conv_channels: tuple[int, ...]  # conv: channels of the stride-2 convolutions (each halves H, W)
    activation: Activation = "silu"

    @staticmethod
    def of(model_config: Any) -> ImageNetConfig:
        """The nets of an image model's config (fields architecture, image_shape, hidden_dims,
        conv_channels, activation); image_shape must have been filled from the data."""
        if model_config.image_shape is None:
            raise ConfigError("model.image_shape is not set (vaekit.train fills it from the data)")
        return ImageNetConfig(model_config.architecture, tuple(model_config.image_shape), model_config.hidden_dims,
                              model_config.conv_channels, model_config.activation)


def mlp(widths: Sequence[int], activation: Activation) -> nn.Sequential:
    """Linear layers widths[0] -> ... -> widths[-1] with `activation` between them (none at the end)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _bottom_shape(config: ImageNetConfig) -> tuple[int, int, int]:
    """(channels, H / 2^n, W / 2^n) after the n stride-2 convolutions; H, W must divide by 2^n."""
    _, height, width = config.image_shape
    factor = 2 ** len(config.conv_channels)
    if height % factor or width % factor:
        raise ConfigError(
            f"conv architecture with {len(config.conv_channels)} stride-2 layers needs image height and "
            f"width divisible by {factor}, got {height}x{width}; change model.conv_channels"
        )
    return config.conv_channels[-1], height // factor, width // factor


def build_image_encoder(config: ImageNetConfig, out_features: int) -> nn.Module:
    """x (B, C, H, W) -> (B, out_features)."""
    channels, height, width = config.image_shape
    act = _ACTIVATIONS[config.activation]
    if config.architecture == "mlp":
        return nn.Sequential(
            nn.Flatten(), mlp([channels * height * width, *config.hidden_dims, out_features], config.activation)
        )
    if config.architecture == "conv":
        bottom_c, bottom_h, bottom_w = _bottom_shape(config)
        layers: list[nn.Module] = []
        fan_in = channels
        for fan_out in config.conv_channels:
            layers += [nn.Conv2d(fan_in, fan_out, kernel_size=4, stride=2, padding=1), act()]
            fan_in = fan_out
        layers.append(nn.Flatten())  # (B, C_n * H/2^n * W/2^n)
        layers.append(mlp([bottom_c * bottom_h * bottom_w, *config.hidden_dims, out_features], config.activation))
        return nn.Sequential(*layers)
    raise NotImplementedError(config.architecture)


def build_image_decoder(config: ImageNetConfig, in_features: int, out_channels: int) -> nn.Module:
    """z (B, in_features) -> (B, out_channels, H, W)."""
    _, height, width = config.image_shape
    act = _ACTIVATIONS[config.activation]
    if config.architecture == "mlp":
        widths = [in_features, *reversed(config.hidden_dims), out_channels * height * width]
        return nn.Sequential(mlp(widths, config.activation), nn.Unflatten(1, (out_channels, height, width)))
    if config.architecture == "conv":
        bottom_c, bottom_h, bottom_w = _bottom_shape(config)
        widths = [in_features, *reversed(config.hidden_dims), bottom_c * bottom_h * bottom_w]
        layers: list[nn.Module] = [mlp(widths, config.activation), act()]
        layers.append(nn.Unflatten(1, (bottom_c, bottom_h, bottom_w)))  # (B, C_n, H/2^n, W/2^n)
        up_channels = [*reversed(config.conv_channels), out_channels]
        for fan_in, fan_out in pairwise(up_channels):  # the last one emits the likelihood's maps
            layers += [nn.ConvTranspose2d(fan_in, fan_out, kernel_size=4, stride=2, padding=1), act()]
        return nn.Sequential(*layers[:-1])
    raise NotImplementedError(config.architecture)
