"""Build and load a run's model: from its checkpoint's config, with its parent run's frozen model attached.

A child run (a latent GMM or GAN, a prior over codes) names a `parent` run directory. At training
time `resolve_parent_run` writes into the child's config what it takes from the parent (its data
when the child has none, the spec of its codes, the SHA-256 of its checkpoint), so `build_model`
rebuilds the child from its config alone and a changed parent is refused with one message.

A stored config is as untrusted as the weights beside it: the chain of parents is walked without
recursion (a cycle is refused), and the tensors each stored config implies are sized on the meta
device and compared with its tensor file's header and the parameter limit before any model is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaekit.config import ModelConfig, RunConfig, TwoStageConfig, validate_config
from vaekit.engine.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    STATE_FILE,
    TensorSpec,
    check_byte_limit,
    check_tensor_specs,
    list_checkpoints,
    load_model_weights,
    load_tensor_file,
    parameter_byte_limit,
    read_state,
    read_tensor_header,
    tensor_specs,
)
from vaekit.errors import CheckpointError, ConfigError, RunDirError
from vaekit.models import GenerativeModel, build_model
from vaekit.models.base import freeze

MAX_PARENT_DEPTH = 16  # runs stacked on runs (vaekit's deepest chain is 2); bounds the recursion of _built


@dataclass(frozen=True)
class StoredRun:
    """A checkpoint with its validated state.json and config."""

    checkpoint: Path
    state: dict[str, Any]
    config: RunConfig


def find_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a checkpoint folder, else the newest checkpoint of the run directory."""
    path = Path(path)
    try:
        if not path.exists():
            raise RunDirError(f"{path} does not exist")
        if (path / STATE_FILE).is_file():
            return path
        checkpoints = list_checkpoints(path / "checkpoints")
    except OSError as error:  # a name too long, a folder that cannot be read: a stored `parent` may be any string
        raise RunDirError(f"{str(path)[:200]}: cannot be read as a run directory ({error.strerror or error})") from None
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


def stored_run(checkpoint: Path) -> StoredRun:
    """A checkpoint's validated state and config."""
    state = read_state(checkpoint)
    return StoredRun(checkpoint, state, checkpoint_config(checkpoint, state))


def load(
    path: str | Path,
    *,
    ema: bool = True,
    device: str | torch.device = "cpu",
    max_parameter_bytes: int | None = None,
) -> GenerativeModel:
    """The model of a run directory (newest checkpoint) or of a checkpoint folder, in eval mode.

    The model is rebuilt from the config saved in the checkpoint; with `ema`, the averaged weights
    are used where the run kept them. Before any model of the run or its parents is built, the
    tensors each stored config implies must match its weight file's header and take at most
    `max_parameter_bytes` (default: $VAEKIT_MAX_PARAMETER_BYTES, else 4 GiB).
    """
    run = stored_run(find_checkpoint(path))
    ancestors = parent_chain(run.config, child=run.checkpoint)
    limit = parameter_byte_limit(max_parameter_bytes)
    for stored in (run, *ancestors):
        check_stored_sizes(stored, limit)
    return _restore(run, ancestors, ema=ema, device=device)


def build_run_model(
    config: RunConfig, *, device: str | torch.device = "cpu", max_parameter_bytes: int | None = None
) -> GenerativeModel:
    """The model of a run, with its parent run's frozen model attached when the config names one."""
    ancestors = parent_chain(config)
    limit = parameter_byte_limit(max_parameter_bytes)
    for stored in ancestors:
        check_stored_sizes(stored, limit)
    return _built(config, ancestors, device)


def parent_chain(config: RunConfig, *, child: Path | None = None) -> list[StoredRun]:
    """The stored runs `config` builds on, its parent first, walked without recursion.

    A chain that comes back to a checkpoint already in it (or to `child`, the checkpoint `config`
    comes from) is refused, and so is a parent whose state.json is not the one a child pinned.
    """
    chain: list[StoredRun] = []
    seen = [child.resolve()] if child is not None else []
    current = config
    while current.parent is not None:
        checkpoint = find_checkpoint(current.parent)
        if checkpoint.resolve() in seen:
            cycle = " -> ".join(str(p) for p in [*seen, checkpoint.resolve()])
            raise CheckpointError(f"the parent runs form a cycle: {cycle}")
        if len(chain) == MAX_PARENT_DEPTH:
            raise CheckpointError(f"{checkpoint}: more than {MAX_PARENT_DEPTH} runs stacked on parent runs")
        parent = stored_run(checkpoint)
        _check_pinned_parent(current, checkpoint)
        seen.append(checkpoint.resolve())
        chain.append(parent)
        current = parent.config
    return chain


def check_stored_sizes(stored: StoredRun, limit: int) -> None:
    """Before building: the weights a stored config implies fit the limit and match its weight file's header."""
    header = read_tensor_header(stored.checkpoint, MODEL_FILE, stored.state)
    implied = implied_tensor_specs(stored.config.model)
    if implied is None:
        check_byte_limit(header, limit, stored.checkpoint / MODEL_FILE)
    else:
        check_byte_limit(implied, limit, f"{stored.checkpoint / STATE_FILE} (config)")
        check_tensor_specs(header, implied, stored.checkpoint / MODEL_FILE)


def implied_tensor_specs(config: ModelConfig) -> dict[str, TensorSpec] | None:
    """The state dict's names, dtypes and shapes of the model `config` builds, sized on the meta device
    (nothing allocated); None for a model whose constructor needs real values (a `.item()`), whose
    weight file is then bounded by its declared sizes alone until it is built."""
    try:
        with torch.device("meta"):
            model = build_model(config)
    except (RuntimeError, NotImplementedError):
        return None
    return tensor_specs(model.state_dict())


def resolve_parent_run(config: RunConfig) -> RunConfig:
    """Write into a child run's config what it takes from its parent: data, code spec, checkpoint SHA-256."""
    if config.parent is None:
        return config
    parent = parent_chain(config)[0]
    check_stored_sizes(parent, parameter_byte_limit())
    update: dict[str, Any] = {"parent_sha256": checkpoint_sha256(parent.checkpoint)}
    if "data" not in config.model_fields_set:
        update["data"] = parent.config.data
    if isinstance(config.model, TwoStageConfig) and config.model.codes is None:
        spec = build_model(parent.config.model).code_spec()
        update["model"] = config.model.model_copy(update={"codes": spec})
    return config.model_copy(update=update)


def _check_pinned_parent(child: RunConfig, checkpoint: Path) -> None:
    """A child that pinned its parent's state.json (SHA-256) refuses any other."""
    if child.parent_sha256 is None:
        return
    digest = checkpoint_sha256(checkpoint)
    if digest != child.parent_sha256:
        raise CheckpointError(
            f"the parent run changed: this run was trained on a checkpoint with SHA-256 "
            f"{child.parent_sha256[:16]}..., but {checkpoint} has {digest[:16]}...; "
            "restore that parent checkpoint or train this run again"
        )


def _restore(
    stored: StoredRun, ancestors: list[StoredRun], *, ema: bool, device: str | torch.device
) -> GenerativeModel:
    """A stored run's model with its weights (averaged ones with `ema`), in eval mode; `ancestors` are its parents'."""
    model = _built(stored.config, ancestors, device)
    expected = tensor_specs(model.state_dict())
    load_model_weights(model, load_tensor_file(stored.checkpoint, MODEL_FILE, stored.state, expected=expected),
                       stored.checkpoint)
    if ema and EMA_FILE in stored.state["files"]:
        averaged = load_tensor_file(stored.checkpoint, EMA_FILE, stored.state, expected=expected, partial=True)
        model.load_state_dict(averaged, strict=False)
    model.run_config = stored.config
    return model.to(device).eval()


def _built(config: RunConfig, ancestors: list[StoredRun], device: str | torch.device) -> GenerativeModel:
    """The untrained model of `config` on `device`, with its parent's frozen model (restored from `ancestors`,
    parent first) attached. The model is built before its parent, so its initial draws are those of a lone model;
    the recursion is as deep as the checked chain of parents."""
    model = build_model(config.model).to(device)
    if config.parent is None:
        if model.requires_parent:
            raise ConfigError(f"model {config.model.name!r} builds on a trained run: set parent=RUN_DIR")
        return model
    model.attach_parent(freeze(_restore(ancestors[0], ancestors[1:], ema=True, device=device)))
    return model
