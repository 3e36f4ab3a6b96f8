"""Model registry: a name maps to (Config class, Model class); `build_model(config)` is the only constructor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from vaekit.config import (
    ModelConfig,
    model_config_class,
    register_model_config,
    unregister_model_config,
)
from vaekit.errors import ConfigError
from vaekit.models.base import GenerativeModel

_MODELS: dict[str, type[GenerativeModel]] = {}
M = TypeVar("M", bound=type[GenerativeModel])


def register_model(name: str, config_class: type[ModelConfig]) -> Callable[[M], M]:
    """Class decorator: `@register_model("vae", VAEConfig)`."""

    def decorate(model_class: M) -> M:
        register_model_config(name, config_class)  # refuses a second registration of `name`
        _MODELS[name] = model_class
        return model_class

    return decorate


def unregister_model(name: str) -> None:
    """Remove a registration (models registered for a while, e.g. in tests)."""
    del _MODELS[name]
    unregister_model_config(name)


def model_names() -> list[str]:
    return sorted(_MODELS)


def lookup(name: str) -> tuple[type[ModelConfig], type[GenerativeModel]]:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    return model_config_class(name), _MODELS[name]


def build_model(config: ModelConfig) -> GenerativeModel:
    """The model described by `config` (a registered model's config)."""
    _, model_class = lookup(config.name)
    return model_class(config)
