"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically, verified on load.

Layout: checkpoints/step-N/{model.safetensors, optimizer.safetensors, ema.safetensors?, state.json}.
A checkpoint folder is assembled under a temporary name and renamed into place, so a crash at any
moment leaves the previous checkpoint loadable. state.json records the SHA-256 of each tensor
file, so a corrupt or truncated file is detected before anything is loaded.

Every checkpoint is untrusted input. state.json is validated against a schema (its size and nesting
bounded first) before anything acts on it; a tensor file's header is checked against the file's
real length and against the tensors the model expects (names, dtypes, shapes) before its data is
read; weights holding a NaN or +inf are neither written nor loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from vaekit.errors import CheckpointError, ConfigError
from vaekit.io import TEMP_SUFFIX, UMASK, atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 1
STATE_FILE = "state.json"
MODEL_FILE, OPTIMIZER_FILE, EMA_FILE = "model.safetensors", "optimizer.safetensors", "ema.safetensors"
MAX_STATE_BYTES = 16 * 2**20  # a state.json holds a config and optimiser settings: kilobytes
MAX_HEADER_BYTES = 16 * 2**20  # a safetensors header lists names, dtypes and shapes: kilobytes
MAX_JSON_DEPTH = 64  # nesting of lists and objects in state.json or a tensor header (vaekit writes < 10)
MAX_TENSOR_DIMS = 16
PARAMETER_LIMIT_ENV = "VAEKIT_MAX_PARAMETER_BYTES"
DEFAULT_PARAMETER_LIMIT = 4 * 2**30  # bytes of tensors a loaded model may hold unless the user allows more
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # per-parameter state of Adam/AdamW (AMSGrad: the max)
DTYPE_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
               torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
               torch.float64: "F64"}  # torch dtype -> safetensors dtype name
DTYPE_BYTES = {name: dtype.itemsize for dtype, name in DTYPE_NAMES.items()}
_CHECKPOINT_NAME = re.compile(r"^step-\d{1,18}$")

TensorSpec = tuple[str, tuple[int, ...]]  # (safetensors dtype name, shape) of one tensor


class _Record(BaseModel):
    """A part of a checkpoint's JSON: frozen, unknown keys refused, no type coercion, finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class FileRecord(_Record):
    """A tensor file as state.json records it."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=8, lt=2**63)


class OptimizerRecord(_Record):
    """What an optimiser's state holds besides tensors: its parameter groups and non-tensor state."""

    param_groups: list[dict[str, Any]]
    scalars: dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], dict[str, float | int | bool | None]]


class GradScalerRecord(_Record):
    """torch.amp.GradScaler.state_dict() (fp16 training)."""

    scale: float = Field(gt=0)
    growth_factor: float = Field(gt=1)
    backoff_factor: float = Field(gt=0, lt=1)
    growth_interval: int = Field(ge=1)
    growth_tracker: int = Field(ge=0, alias="_growth_tracker")


class TrainingRecord(_Record):
    """What the engine keeps besides tensors to resume a run."""

    world_size: int = Field(1, ge=1)
    train_seconds: float = Field(0.0, ge=0)
    skipped_steps: int = Field(0, ge=0)
    grad_scaler: GradScalerRecord | None = None


class StoredModel(BaseModel):
    """The model section of a stored config: a name here; the whole config is validated when it is used."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str


class StoredConfig(BaseModel):
    """A stored run config: a model section here; the whole config is validated when it is used."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: StoredModel


class CheckpointState(_Record):
    """The schema of state.json."""

    format_version: Literal[1]
    model_name: str
    step: int = Field(ge=0, lt=2**63)
    config: StoredConfig
    files: dict[Literal["model.safetensors", "optimizer.safetensors", "ema.safetensors"], FileRecord]
    optimizers: dict[str, OptimizerRecord]
    extra: TrainingRecord

    @model_validator(mode="after")
    def _consistent(self) -> CheckpointState:
        """The model file is listed, and the model name is the config's."""
        if MODEL_FILE not in self.files:
            raise ValueError(f"files lists no {MODEL_FILE}")
        if self.config.model.name != self.model_name:
            raise ValueError(f"model_name {self.model_name!r} is not the config's model {self.config.model.name!r}")
        return self


class _TensorEntry(_Record):
    """One tensor of a safetensors header."""

    dtype: str
    shape: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(max_length=MAX_TENSOR_DIMS)
    data_offsets: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(min_length=2, max_length=2)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        """A dtype vaekit reads."""
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPE_BYTES)}")
        return dtype


_TENSOR_HEADER = TypeAdapter(dict[str, _TensorEntry])


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
    """Write checkpoints/step-N atomically and keep only the newest `keep` checkpoints.

    Refuses, before writing anything, tensors holding a NaN or +inf.
    """
    final = directory / f"step-{step}"
    files = {MODEL_FILE: _tensors(model.state_dict())}
    optimizer_meta: dict[str, Any] = {}
    if optimizers:
        optimizer_tensors: dict[str, Tensor] = {}
        for group, optimizer in optimizers.items():
            tensors, meta = _flatten_optimizer(group, optimizer.state_dict())
            optimizer_tensors.update(tensors)
            optimizer_meta[group] = meta
        files[OPTIMIZER_FILE] = optimizer_tensors
    if ema is not None:
        files[EMA_FILE] = _tensors(ema)
    for filename, tensors in files.items():
        bad = nan_or_inf_tensors(tensors)
        if bad:
            raise CheckpointError(f"{final}: refusing to write non-finite values (NaN or +infinity) in {filename}: "
                                  f"{listed(bad)}")
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".step-{step}.", suffix=TEMP_SUFFIX))
    os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp creates 0700
    try:
        digests = {}
        for filename, tensors in files.items():
            data = save(tensors)
            atomic_write_bytes(staging / filename, data)
            digests[filename] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        state = {
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "step": step,
            "config": config,
            "files": digests,
            "optimizers": optimizer_meta,
            "extra": extra or {},
        }
        _validated_state(state, final / STATE_FILE)  # what is written can be read back
        atomic_write_json(staging / STATE_FILE, state)
        if final.exists():
            _discard_checkpoint(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            _discard_checkpoint(old)
    return final


def _discard_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renamed to a temporary name first: a kill while its files are deleted leaves a
    left-over the next start of the run removes, never a `step-N` folder missing files that nothing would remove."""
    doomed = tempfile.mkdtemp(dir=checkpoint.parent, prefix=f".{checkpoint.name}.", suffix=TEMP_SUFFIX)
    os.replace(checkpoint, doomed)  # onto the empty folder mkdtemp made: one atomic rename
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints (folders step-N with state.json) under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if _CHECKPOINT_NAME.match(p.name) and p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def last_finite_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint under `directory` whose weight files (model, EMA) load, with no NaN or +inf."""
    for checkpoint in reversed(list_checkpoints(directory)):
        try:
            state = read_state(checkpoint)
            for filename in (MODEL_FILE, EMA_FILE):
                if filename in state["files"]:
                    load_tensor_file(checkpoint, filename, state)
        except CheckpointError:
            continue
        return checkpoint
    return None


def read_state(checkpoint: Path) -> dict[str, Any]:
    """state.json of a checkpoint, validated against `CheckpointState` (size and nesting bounded first)."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: not a checkpoint (no {STATE_FILE})")
    size = path.stat().st_size
    if size > MAX_STATE_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, more than a state file holds ({MAX_STATE_BYTES})")
    state = _parse_json(path.read_bytes(), path)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{path}: format version {found!r}, this vaekit reads {FORMAT_VERSION}")
    return _validated_state(state, path).model_dump(by_alias=True)


def read_tensor_header(checkpoint: Path, filename: str, state: dict[str, Any]) -> dict[str, TensorSpec]:
    """The tensors a checkpoint file declares, checked against its real length before any tensor data is read."""
    path = checkpoint / filename
    record = state["files"].get(filename)
    if record is None:
        raise CheckpointError(f"{checkpoint}: state.json lists no {filename}")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"{path}: corrupt or truncated ({size} bytes, expected {record['bytes']})")
    with path.open("rb") as file:
        header_bytes = int.from_bytes(file.read(8), "little")
        if not 2 <= header_bytes <= min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path}: corrupt header (it declares {header_bytes} header bytes in a "
                                  f"{size}-byte file)")
        header = _parse_json(file.read(header_bytes), path)
    if isinstance(header, dict):
        header.pop("__metadata__", None)
    try:
        entries = _TENSOR_HEADER.validate_python(header)
    except ValidationError as error:
        raise CheckpointError(f"{path}: corrupt header ({_explain(error)})") from None
    return _laid_out(entries, size - 8 - header_bytes, path)


def load_tensor_file(
    checkpoint: Path,
    filename: str,
    state: dict[str, Any],
    *,
    expected: Mapping[str, TensorSpec] | None = None,
    partial: bool = False,
    max_parameter_bytes: int | None = None,
) -> dict[str, Tensor]:
    """Tensors of one checkpoint file; its data is read only once its header is checked.

    The header must agree with the file's length and with `expected` (every name, dtype and shape;
    a subset of them if `partial`), or, when nothing is expected, declare at most the parameter
    limit. Then the SHA-256 is compared with state.json, and no value may be NaN or +inf.
    """
    path = checkpoint / filename
    specs = read_tensor_header(checkpoint, filename, state)
    if expected is not None:
        check_tensor_specs(specs, expected, path, what="tensors", partial=partial)
    else:
        check_byte_limit(specs, parameter_byte_limit(max_parameter_bytes), path)
    if _sha256(path) != state["files"][filename]["sha256"]:
        raise CheckpointError(f"{path}: corrupt (its checksum differs from the one in {STATE_FILE})")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from None
    bad = nan_or_inf_tensors(tensors)
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or +infinity) in {listed(bad)}")
    return tensors


def load_model_weights(model: nn.Module, tensors: dict[str, Tensor], source: Path) -> None:
    """Copy `tensors` into `model`, failing with the names, dtypes and shapes that differ."""
    check_tensor_specs(tensor_specs(tensors), tensor_specs(model.state_dict()), source)
    model.load_state_dict(tensors)


def load_optimizers(
    checkpoint: Path, state: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer]
) -> None:
    """Restore every optimiser's state (moments, step counts, param groups), checked against the live ones first."""
    if not optimizers and not state["optimizers"]:
        return
    if set(state["optimizers"]) != set(optimizers):
        raise CheckpointError(
            f"{checkpoint}: optimiser groups {sorted(state['optimizers'])} do not match the model's {sorted(optimizers)}"
        )
    for group, optimizer in optimizers.items():
        _check_optimizer_record(state["optimizers"][group], optimizer.state_dict()["param_groups"],
                                f"{checkpoint}: optimiser {group!r}")
    tensors = load_tensor_file(checkpoint, OPTIMIZER_FILE, state, expected=optimizer_specs(optimizers), partial=True)
    for group, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(_unflatten_optimizer(group, tensors, state["optimizers"][group]))
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{checkpoint}: optimiser {group!r} does not match ({error})") from None


def tensor_specs(tensors: Mapping[str, Tensor]) -> dict[str, TensorSpec]:
    """Name -> (safetensors dtype name, shape) of each tensor (meta tensors too: nothing is read)."""
    return {name: (DTYPE_NAMES[t.dtype], tuple(t.shape)) for name, t in tensors.items()}


def optimizer_specs(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, TensorSpec]:
    """The tensors an Adam/AdamW state may hold per parameter: its moments (the parameter's dtype and
    shape) and its step count (a 0-d float tensor, float32 unless torch's default dtype is float64
    and the optimiser is not fused)."""
    specs: dict[str, TensorSpec] = {}
    for group, optimizer in optimizers.items():
        double = torch.get_default_dtype() == torch.float64 and not optimizer.defaults.get("fused")
        params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
        indices = [i for param_group in optimizer.state_dict()["param_groups"] for i in param_group["params"]]
        for index, param in zip(indices, params, strict=True):
            specs[f"{group}/{index}/step"] = ("F64" if double else "F32", ())
            for moment in ADAM_MOMENTS:
                specs[f"{group}/{index}/{moment}"] = (DTYPE_NAMES[param.dtype], tuple(param.shape))
    return specs


def check_tensor_specs(
    found: Mapping[str, TensorSpec],
    expected: Mapping[str, TensorSpec],
    source: Path,
    *,
    what: str = "weights",
    partial: bool = False,
) -> None:
    """Fail with the names, dtypes and shapes that differ (with `partial`, `found` may lack expected names)."""
    problems = [] if partial else [f"missing {k} {expected[k][1]}" for k in expected.keys() - found.keys()]
    problems += [f"unexpected {k} {found[k][1]}" for k in found.keys() - expected.keys()]
    problems += [_difference(k, found[k], expected[k]) for k in found.keys() & expected.keys()
                 if found[k] != expected[k]]
    if problems:
        shown = "; ".join(sorted(problems)[:8]) + (" ..." if len(problems) > 8 else "")
        raise CheckpointError(f"{source}: {what} do not match the model: {shown}")


def spec_bytes(specs: Mapping[str, TensorSpec]) -> int:
    """Bytes the tensors of `specs` take."""
    return sum(math.prod(shape) * DTYPE_BYTES[dtype] for dtype, shape in specs.values())


def parameter_byte_limit(limit: int | None = None) -> int:
    """`limit`, else $VAEKIT_MAX_PARAMETER_BYTES, else 4 GiB: the most bytes of tensors a loaded model may hold."""
    if limit is not None:
        return limit
    value = os.environ.get(PARAMETER_LIMIT_ENV, str(DEFAULT_PARAMETER_LIMIT)).strip()
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{PARAMETER_LIMIT_ENV}={value!r}: expected a positive whole number of bytes")
    return int(value)


def check_byte_limit(specs: Mapping[str, TensorSpec], limit: int, source: Path | str) -> None:
    """Fail if the tensors of `specs` take more than `limit` bytes."""
    total = spec_bytes(specs)
    if total > limit:
        raise CheckpointError(f"{source}: {total} bytes of parameters, above the limit of {limit} bytes "
                              f"(allow more with load(..., max_parameter_bytes=N) or {PARAMETER_LIMIT_ENV}=N)")


def nan_or_inf_tensors(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or a +inf. A -inf is allowed: it is the log-probability
    of what cannot happen (an unused mixture component, a causal mask)."""
    return [name for name, t in tensors.items()
            if t.is_floating_point() and bool((torch.isnan(t) | torch.isposinf(t)).any())]


def _validated_state(state: dict[str, Any], path: Path) -> CheckpointState:
    try:
        return CheckpointState.model_validate(state)
    except ValidationError as error:
        raise CheckpointError(f"{path}: invalid ({_explain(error)})") from None


def _parse_json(data: bytes, source: Path) -> Any:
    """A JSON document nested at most MAX_JSON_DEPTH deep (the decoder's own recursion limit is caught)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise CheckpointError(f"{source}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer beyond Python's digit limit
        raise CheckpointError(f"{source}: corrupt or truncated ({error})") from None
    if _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise CheckpointError(f"{source}: nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` deep in `value` (walked with a stack, no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _laid_out(entries: dict[str, _TensorEntry], data_bytes: int, path: Path) -> dict[str, TensorSpec]:
    """The specs of a header whose tensors fill the data section back to back, each exactly its size."""
    position = 0
    for name, entry in sorted(entries.items(), key=lambda item: item[1].data_offsets):
        start, end = entry.data_offsets
        size = math.prod(entry.shape) * DTYPE_BYTES[entry.dtype]
        if start != position or end - start != size:
            raise CheckpointError(f"{path}: corrupt header (tensor {name!r} {entry.dtype} {tuple(entry.shape)} "
                                  f"takes {size} bytes at offset {position}; the header says [{start}, {end}))")
        position = end
    if position != data_bytes:
        raise CheckpointError(f"{path}: corrupt header (its tensors take {position} bytes; the file holds "
                              f"{data_bytes} bytes of tensor data)")
    return {name: (entry.dtype, tuple(entry.shape)) for name, entry in entries.items()}


def _sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _difference(name: str, found: TensorSpec, expected: TensorSpec) -> str:
    (found_dtype, found_shape), (dtype, shape) = found, expected
    if found_shape != shape:
        return f"{name}: checkpoint {found_shape} vs model {shape}"
    return f"{name}: checkpoint {found_dtype} vs model {dtype}"


def _explain(error: ValidationError, shown: int = 5) -> str:
    """The first problems of a validation error, one `key: message` each."""
    problems = [f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in error.errors()]
    return "; ".join(problems[:shown]) + (" ..." if len(problems) > shown else "")


def listed(names: list[str], shown: int = 8) -> str:
    """The first `shown` names, comma-separated, and how many more there are."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _check_optimizer_record(record: dict[str, Any], live: list[dict[str, Any]], source: str) -> None:
    """Saved parameter groups have the live ones' keys, parameters and kinds of values; scalars name their parameters."""
    saved = record["param_groups"]
    if len(saved) != len(live):
        raise CheckpointError(f"{source}: {len(saved)} parameter groups, the model's optimiser has {len(live)}")
    for number, (old, new) in enumerate(zip(saved, live)):
        if old.keys() != new.keys():
            raise CheckpointError(f"{source}: parameter group {number} has keys {sorted(old)}, expected {sorted(new)}")
        wrong = sorted(key for key in new if _kind(old[key]) != _kind(new[key]))
        if old["params"] != new["params"] or wrong:
            raise CheckpointError(f"{source}: parameter group {number} holds other parameters or values of another "
                                  f"kind in {wrong or ['params']}")
    indices = {str(i) for group in live for i in group["params"]}
    if record["scalars"].keys() - indices:
        raise CheckpointError(f"{source}: state of unknown parameters {sorted(record['scalars'].keys() - indices)}")


def _kind(value: Any) -> tuple[str, ...]:
    """What a parameter-group value is: a finite number, a flag (bool or None), a list of those, or another type."""
    if isinstance(value, (list, tuple)):
        return ("list", *(_scalar_kind(item) for item in value))
    return (_scalar_kind(value),)


def _scalar_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "flag"
    if isinstance(value, (int, float)):
        return "number" if math.isfinite(value) else "non-finite number"
    return type(value).__name__


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
