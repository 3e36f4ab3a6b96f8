"""vaekit: auto-encoder generative models, trained, evaluated, sampled and saved through one interface."""

__version__ = "0.1.0"

from vaekit.api import find_checkpoint, info, load, train
from vaekit.config import RunConfig, load_config
from vaekit.models import build_model, model_names

__all__ = ["RunConfig", "build_model", "find_checkpoint", "info", "load", "load_config", "model_names", "train"]
