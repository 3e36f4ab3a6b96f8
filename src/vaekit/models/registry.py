"""Model registry: a name maps to (Config class, Model class); `build_model(config)` is the only constructor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.models.base import GenerativeModel

_MODELS: dict[str, tuple[type[ModelConfig], type[GenerativeModel]]] = {}
M = TypeVar("M", bound=type[GenerativeModel])


def register_model(name: str, config_class: type[ModelConfig]) -> Callable[[M], M]:
    """Class decorator: `@register_model("vae", VAEConfig)`."""

    def decorate(model_class: M) -> M:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = (config_class, model_class)
        return model_class

    return decorate


def model_names() -> list[str]:
    return sorted(_MODELS)


def lookup(name: str) -> tuple[type[ModelConfig], type[GenerativeModel]]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    return _MODELS[name]


def build_model(config: ModelConfig) -> GenerativeModel:
    """The model described by `config` (a registered model's config)."""
    _, model_class = lookup(config.name)
    return model_class(config)
