"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically, verified on load.

Layout: checkpoints/step-N/{model.safetensors, optimizer.safetensors, ema.safetensors?, state.json}.
A checkpoint folder is assembled under a temporary name and renamed into place, so a crash at any
moment leaves the previous checkpoint loadable. state.json records the SHA-256 of each tensor
file, so a corrupt or truncated file is detected before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from vaekit.errors import CheckpointError
from vaekit.io import UMASK, atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 1
STATE_FILE = "state.json"


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    model: nn.Module,
    model_name: str,
    config: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    ema: dict[str, Tensor] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write checkpoints/step-N atomically and keep only the newest `keep` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step}"
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".step-{step}.", suffix=".tmp"))
    os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp creates 0700
    try:
        files = {"model.safetensors": _tensors(model.state_dict())}
        optimizer_meta: dict[str, Any] = {}
        if optimizers:
            optimizer_tensors: dict[str, Tensor] = {}
            for group, optimizer in optimizers.items():
                tensors, meta = _flatten_optimizer(group, optimizer.state_dict())
                optimizer_tensors.update(tensors)
                optimizer_meta[group] = meta
            files["optimizer.safetensors"] = optimizer_tensors
        if ema is not None:
            files["ema.safetensors"] = _tensors(ema)
        digests = {}
        for filename, tensors in files.items():
            data = save(tensors)
            atomic_write_bytes(staging / filename, data)
            digests[filename] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        atomic_write_json(
            staging / STATE_FILE,
            {
                "format_version": FORMAT_VERSION,
                "model_name": model_name,
                "step": step,
                "config": config,
                "files": digests,
                "optimizers": optimizer_meta,
                "extra": extra or {},
            },
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (with state.json) under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def read_state(checkpoint: Path) -> dict[str, Any]:
    """state.json of a checkpoint, checked for format version and completeness."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: not a checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt or truncated ({error})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{path}: format version {found!r}, this vaekit reads {FORMAT_VERSION}")
    for key in ("model_name", "step", "config", "files"):
        if key not in state:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return state


def load_tensor_file(checkpoint: Path, filename: str, state: dict[str, Any]) -> dict[str, Tensor]:
    """Tensors of one checkpoint file, after checking its size and SHA-256 against state.json."""
    path = checkpoint / filename
    expected = state["files"].get(filename)
    if expected is None:
        raise CheckpointError(f"{checkpoint}: state.json lists no {filename}")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    data = path.read_bytes()
    if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise CheckpointError(
            f"{path}: corrupt or truncated ({len(data)} bytes, expected {expected['bytes']}; checksum differs)"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None


def load_model_weights(model: nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    """Copy `tensors` into `model`, failing with the names and shapes that differ."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k} {expected[k]}" for k in expected.keys() - found.keys()]
    problems += [f"unexpected {k} {found[k]}" for k in found.keys() - expected.keys()]
    problems += [
        f"{k}: checkpoint {found[k]} vs model {expected[k]}"
        for k in expected.keys() & found.keys()
        if expected[k] != found[k]
    ]
    if problems:
        shown = "; ".join(sorted(problems)[:8]) + (" ..." if len(problems) > 8 else "")
        raise CheckpointError(f"{source}: weights do not match the model: {shown}")
    model.load_state_dict(tensors)


def load_optimizers(
    checkpoint: Path, state: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]
) -> None:
    """Restore every optimiser's state (moments, step counts, param groups)."""
    if not optimizers and not state["optimizers"]:
        return
    if set(state["optimizers"]) != set(optimizers):
        raise CheckpointError(
            f"{checkpoint}: optimiser groups {sorted(state['optimizers'])} do not match the model's {sorted(optimizers)}"
        )
    tensors = load_tensor_file(checkpoint, "optimizer.safetensors", state)
    for group, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(_unflatten_optimizer(group, tensors, state["optimizers"][group]))
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{checkpoint}: optimiser {group!r} does not match ({error})") from None


def _tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def _flatten_optimizer(group: str, state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimiser state_dict into tensors (for safetensors) and the rest (for JSON)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"{group}/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(group: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{group}/"
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split("/", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
