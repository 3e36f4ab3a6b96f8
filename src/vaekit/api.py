"""The Python API: `vaekit.train(config)`, `vaekit.load(run_dir)`, `vaekit.info(path)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaekit.config import RunConfig, load_config, validate_config
from vaekit.engine.checkpoint import (
    list_checkpoints,
    load_model_weights,
    load_tensor_file,
    read_state,
)
from vaekit.errors import CheckpointError, ConfigError, RunDirError
from vaekit.models import GenerativeModel, build_model
from vaekit.models.base import freeze


def train(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Train a run and return its directory. `config`: a RunConfig, a mapping, a YAML path or a preset name."""
    from vaekit.engine.train import train as run_training

    if isinstance(config, dict):
        config = validate_config(config)
    elif not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    return run_training(config, resume=resume, force=force, quiet=quiet)


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a checkpoint folder, else the newest checkpoint of the run directory."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path} does not exist")
    if (path / "state.json").is_file():
        return path
    checkpoints = list_checkpoints(path / "checkpoints")
    if not checkpoints:
        raise RunDirError(f"{path} holds no checkpoint (expected {path}/checkpoints/step-N/state.json)")
    return checkpoints[-1]


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
    if config.parent is not None:
        model.attach_parent(freeze(load(config.parent, device=device)))
    elif model.requires_parent:
        raise ConfigError(f"model {config.model.name!r} builds on a trained run: set parent=RUN_DIR")
    return model


def with_parent_data(config: RunConfig) -> RunConfig:
    """A child run without its own `data` section uses its parent run's data."""
    if config.parent is None or "data" in config.model_fields_set:
        return config
    parent_config = checkpoint_config(find_checkpoint(config.parent))
    return config.model_copy(update={"data": parent_config.data})


def checkpoint_config(checkpoint: Path, state: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig stored in a checkpoint's state.json."""
    state = state or read_state(checkpoint)
    try:
        return validate_config(state["config"], source=str(checkpoint / "state.json"))
    except ConfigError as error:
        raise CheckpointError(f"{checkpoint}: stored config is not valid: {error}") from None


def info(path: str | Path) -> dict[str, Any]:
    """What a run directory or checkpoint holds: model, step, parameter count, files, versions."""
    checkpoint = find_checkpoint(path)
    state = read_state(checkpoint)
    tensors = load_tensor_file(checkpoint, "model.safetensors", state)
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": state["model_name"],
        "step": state["step"],
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "files": state["files"],
        "config": state["config"],
    }
    run_dir = checkpoint.parent.parent
    versions = run_dir / "versions.json"
    if versions.is_file():
        import json

        summary["versions"] = json.loads(versions.read_text())
    return summary
