"""The Python API: `vaekit.train(config)`, `vaekit.load(run_dir)`, `vaekit.info(path)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaekit.config import RunConfig, load_config, validate_config
from vaekit.engine.checkpoint import load_tensor_file, read_state
from vaekit.engine.runs import find_checkpoint, load
from vaekit.engine.train import train as run_training

__all__ = ["find_checkpoint", "info", "load", "train"]


def train(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Train a run and return its directory. `config`: a RunConfig, a mapping, a YAML path or a preset name."""
    if isinstance(config, dict):
        config = validate_config(config)
    elif not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    return run_training(config, resume=resume, force=force, quiet=quiet)


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
