"""Build and load a run's model: from its checkpoint's config, with its parent run's frozen model attached.

A child run (a latent GMM or GAN, a prior over codes) names a `parent` run directory. At training
time `resolve_parent_run` writes into the child's config what it takes from the parent (its data
when the child has none, the spec of its codes, the SHA-256 of its checkpoint), so `build_model`
rebuilds the child from its config alone and a changed parent is refused with one message.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from vaekit.config import RunConfig, TwoStageConfig, validate_config
from vaekit.engine.checkpoint import (
    STATE_FILE,
    list_checkpoints,
    load_model_weights,
    load_tensor_file,
    read_state,
)
from vaekit.errors import CheckpointError, ConfigError, RunDirError
from vaekit.models import GenerativeModel, build_model
from vaekit.models.base import freeze


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a checkpoint folder, else the newest checkpoint of the run directory."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path} does not exist")
    if (path / STATE_FILE).is_file():
        return path
    checkpoints = list_checkpoints(path / "checkpoints")
    if not checkpoints:
        raise RunDirError(f"{path} holds no checkpoint (expected {path}/checkpoints/step-N/{STATE_FILE})")
    return checkpoints[-1]


def checkpoint_config(checkpoint: Path, state: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig stored in a checkpoint's state.json."""
    state = state or read_state(checkpoint)
    try:
        return validate_config(state["config"], source=str(checkpoint / STATE_FILE))
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint}: stored config is not valid: {error}") from None


def checkpoint_sha256(checkpoint: Path) -> str:
    """SHA-256 of a checkpoint's state.json, which records the SHA-256 of every tensor file it holds."""
    return hashlib.sha256((checkpoint / STATE_FILE).read_bytes()).hexdigest()


def load(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> GenerativeModel:
    """The model of a run directory (newest checkpoint) or of a checkpoint folder, in eval mode.

    The model is rebuilt from the config saved in the checkpoint; with `ema`, the averaged weights
    are used where the run kept them.
    """
    checkpoint = find_checkpoint(path)
    state = read_state(checkpoint)
    config = checkpoint_config(checkpoint, state)
    model = build_run_model(config, device=device)
    load_model_weights(model, load_tensor_file(checkpoint, "model.safetensors", state), checkpoint)
    if ema and "ema.safetensors" in state["files"]:
        model.load_state_dict(load_tensor_file(checkpoint, "ema.safetensors", state), strict=False)
    model.run_config = config
    return model.to(device).eval()


def build_run_model(config: RunConfig, *, device: str | torch.device = "cpu") -> GenerativeModel:
    """The model of a run, with its parent run's frozen model attached when the config names one."""
    model = build_model(config.model).to(device)
    if config.parent is None:
        if model.requires_parent:
            raise ConfigError(f"model {config.model.name!r} builds on a trained run: set parent=RUN_DIR")
        return model
    checkpoint = find_checkpoint(config.parent)
    digest = checkpoint_sha256(checkpoint)
    if config.parent_sha256 is not None and digest != config.parent_sha256:
        raise CheckpointError(
            f"the parent run changed: this run was trained on a checkpoint with SHA-256 "
            f"{config.parent_sha256[:16]}..., but {checkpoint} has {digest[:16]}...; "
            "restore that parent checkpoint or train this run again"
        )
    model.attach_parent(freeze(load(checkpoint, device=device)))
    return model


def resolve_parent_run(config: RunConfig) -> RunConfig:
    """Write into a child run's config what it takes from its parent: data, code spec, checkpoint SHA-256."""
    if config.parent is None:
        return config
    checkpoint = find_checkpoint(config.parent)
    parent_config = checkpoint_config(checkpoint)
    update: dict[str, Any] = {"parent_sha256": checkpoint_sha256(checkpoint)}
    if "data" not in config.model_fields_set:
        update["data"] = parent_config.data
    if isinstance(config.model, TwoStageConfig) and config.model.codes is None:
        spec = build_model(parent_config.model).code_spec()
        update["model"] = config.model.model_copy(update={"codes": spec})
    return config.model_copy(update=update)
