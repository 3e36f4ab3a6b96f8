"""vaekit: auto-encoder generative models, trained, evaluated, sampled and saved through one interface."""

from vaekit.api import compress, convert, decompress, find_checkpoint, info, load, train
from vaekit.config import RunConfig, load_config
from vaekit.engine.rundir import package_version
from vaekit.models import build_model, model_names

__version__ = package_version()

__all__ = ["RunConfig", "build_model", "compress", "convert", "decompress", "find_checkpoint", "info", "load", "load_config", "model_names", "train"]
