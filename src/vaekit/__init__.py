"""vaekit: auto-encoder generative models, trained, evaluated, sampled and saved through one interface."""

__version__ = "0.1.0"

from vaekit.api import find_checkpoint, info, load, train  # noqa: E402
from vaekit.config import RunConfig, load_config  # noqa: E402
from vaekit.models import build_model, model_names  # noqa: E402

__all__ = ["RunConfig", "build_model", "find_checkpoint", "info", "load", "load_config", "model_names", "train"]
