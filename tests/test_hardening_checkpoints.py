"""Hardening of checkpoints and run directories against hostile or damaged input (issue 19, parts 1, 2, 3, 6).

Each test reproduces one finding: an edited state.json, a tensor file whose header or size lies, non-finite
or wrongly typed weights, and the left-overs of writes interrupted by a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save

import vaekit
import vaekit.io
from vaekit.config import load_config
from vaekit.engine import checkpoint as checkpoint_module
from vaekit.engine.checkpoint import list_checkpoints, load_tensor_file, read_state, save_checkpoint
from vaekit.engine.train import WeightEMA
from vaekit.errors import CheckpointError, ConfigError, TrainingDivergedError
from vaekit.models.vae import VAE

STEP = "checkpoints/step-10"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny digits VAE with weight averaging, one checkpoint (step 10)."""
    config = tiny_config(tmp_path_factory.mktemp("hardening"), "train.steps=10", "train.eval_every=10",
                         "train.ema_decay=0.9", name="run")
    return vaekit.train(config, quiet=True)


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def _state(run: Path) -> dict:
    return json.loads((run / STEP / "state.json").read_text())


def _write_state(run: Path, state: dict) -> None:
    (run / STEP / "state.json").write_text(json.dumps(state))


def _rewrite_tensors(run: Path, filename: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a tensor file and record its true size and SHA-256, as a hostile but careful editor would."""
    data = save(tensors)
    (run / STEP / filename).write_bytes(data)
    state = _state(run)
    state["files"][filename] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_state(run, state)


def _resume(run: Path, *overrides: str) -> Path:
    return vaekit.train(tiny_config(run.parent, "train.ema_decay=0.9", *overrides, name=run.name), resume=True,
                        quiet=True)


# 1. state.json is validated against a schema before anything acts on it

def _drop_extra(state: dict) -> None:
    del state["extra"]


STATE_EDITS = {
    "files is null": lambda s: s.update(files=None),
    "no extra": _drop_extra,
    "step is a string": lambda s: s.update(step="abc"),
    "optimizers is a list": lambda s: s.update(optimizers=[1]),
    "file record without a digest": lambda s: s["files"].update({"model.safetensors": {"bytes": 5}}),
    "config model is a number": lambda s: s["config"].update(model=3),
    "extra counter is a string": lambda s: s["extra"].update(skipped_steps="many"),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_state_json_with_missing_keys_or_wrong_types_fails_with_one_checkpoint_error(trained, tmp_path, edit):
    run = _copy(trained, tmp_path)
    state = _state(run)
    STATE_EDITS[edit](state)
    _write_state(run, state)
    for entry in (lambda: vaekit.load(run), lambda: vaekit.info(run), lambda: _resume(run, "train.steps=20")):
        with pytest.raises(CheckpointError, match=r"state\.json: invalid"):
            entry()


def test_parent_naming_its_own_run_is_refused_without_recursion(trained, tmp_path):
    run = _copy(trained, tmp_path)
    state = _state(run)
    state["config"]["parent"] = str(run)
    _write_state(run, state)
    with pytest.raises(CheckpointError, match="parent runs form a cycle"):
        vaekit.load(run)


def test_a_cycle_of_two_parent_runs_is_refused(trained, tmp_path):
    first, second = _copy(trained, tmp_path, "first"), _copy(trained, tmp_path, "second")
    for run, parent in ((first, second), (second, first)):
        state = _state(run)
        state["config"]["parent"] = str(parent)
        _write_state(run, state)
    with pytest.raises(CheckpointError, match=r"parent runs form a cycle: .*first.* -> .*second.* -> .*first"):
        vaekit.load(first)


@pytest.mark.parametrize("depth", [100, 200_000])
def test_deeply_nested_state_json_is_refused_cleanly(trained, tmp_path, depth):
    run = _copy(trained, tmp_path)
    nested = "[" * depth + "]" * depth
    (run / STEP / "state.json").write_text('{"format_version": 1, "config": ' + nested + "}")
    with pytest.raises(CheckpointError, match="nested deeper than"):
        vaekit.load(run)
    with pytest.raises(CheckpointError, match="nested deeper than"):
        vaekit.info(run)


def test_config_implying_other_parameters_fails_before_the_model_is_built(trained, tmp_path, monkeypatch):
    """A 400 KB checkpoint whose config says hidden_dims [256, 1000000] must not make vaekit allocate 2 GB."""
    from vaekit.engine import runs

    run = _copy(trained, tmp_path)
    state = _state(run)
    state["config"]["model"]["hidden_dims"] = [256, 1_000_000]
    _write_state(run, state)
    devices = []
    build = runs.build_model

    def spy(config):
        devices.append(torch.empty(()).device.type)  # "meta" inside torch.device("meta")
        return build(config)

    monkeypatch.setattr(runs, "build_model", spy)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"do not match the model: .*\(1000000, 256\)"):
        vaekit.load(run)
    assert time.perf_counter() - started < 2.0
    assert devices and set(devices) == {"meta"}  # sized on the meta device only: nothing allocated


def test_parameter_bytes_above_the_limit_are_refused_before_building(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path)
    state = _state(run)
    state["config"]["model"]["hidden_dims"] = [256, 10**9]  # 1 TB of parameters
    _write_state(run, state)
    with pytest.raises(CheckpointError, match=r"state\.json \(config\): \d+ bytes of parameters, above the limit .*VAEKIT_MAX_PARAMETER_BYTES"):
        vaekit.load(run)
    vaekit.load(trained)  # the default limit (4 GiB) admits a real run
    with pytest.raises(CheckpointError, match="above the limit of 1000 bytes"):
        vaekit.load(trained, max_parameter_bytes=1000)
    monkeypatch.setenv("VAEKIT_MAX_PARAMETER_BYTES", "1000")
    with pytest.raises(CheckpointError, match="above the limit of 1000 bytes"):
        vaekit.load(trained)
    monkeypatch.setenv("VAEKIT_MAX_PARAMETER_BYTES", "lots")
    with pytest.raises(ConfigError, match="VAEKIT_MAX_PARAMETER_BYTES"):
        vaekit.load(trained)


def test_folder_named_like_a_checkpoint_with_a_foreign_suffix_is_ignored(trained, tmp_path):
    run = _copy(trained, tmp_path)
    shutil.copytree(run / STEP, run / "checkpoints/step-abc")
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-10"]
    assert vaekit.info(run)["step"] == 10


# 2. a tensor file's sizes are checked against its real length before its data is read

@pytest.fixture
def no_whole_reads_of_large_files(monkeypatch):
    """Fail a test that reads a file above 50 MB whole (the 3 GiB files below are sparse)."""
    original = Path.read_bytes

    def guarded(self):
        assert self.stat().st_size < 50 * 2**20, f"{self} was read whole"
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)


@pytest.mark.parametrize("state_says", ["old size", "new size"])
def test_three_gib_tensor_file_is_refused_at_once(trained, tmp_path, no_whole_reads_of_large_files, state_says):
    run = _copy(trained, tmp_path)
    weights = run / STEP / "model.safetensors"
    os.truncate(weights, 3 * 2**30)  # the original header and tensors, then 3 GiB of holes
    if state_says == "new size":  # state.json lies along with it (its digest is left: hashing 3 GiB is the cost)
        state = _state(run)
        state["files"]["model.safetensors"]["bytes"] = 3 * 2**30
        _write_state(run, state)
    for entry in (lambda: vaekit.load(run), lambda: vaekit.info(run), lambda: _resume(run, "train.steps=20")):
        started = time.perf_counter()
        with pytest.raises(CheckpointError, match="model.safetensors"):
            entry()
        assert time.perf_counter() - started < 2.0


def _header(tensors: dict[str, dict]) -> bytes:
    header = json.dumps(tensors).encode()
    return len(header).to_bytes(8, "little") + header


HOSTILE_FILES = {
    "header longer than the file": (2**62).to_bytes(8, "little") + b"{}",
    "header not JSON": _header({}).replace(b"{}", b"{[") + b"\0" * 8,
    "tensor larger than the data": _header({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}})
    + b"\0" * 16,
    "offsets disagree with the shape": _header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}) + b"\0" * 4,
    "unknown dtype": _header({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}) + b"\0" * 4,
    "deeply nested header": _header({"w": json.loads("[" * 500 + "]" * 500)}),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_tensor_file_whose_header_lies_is_refused(trained, tmp_path, case):
    run = _copy(trained, tmp_path)
    data = HOSTILE_FILES[case]
    (run / STEP / "model.safetensors").write_bytes(data)
    state = _state(run)
    state["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_state(run, state)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vaekit.info(run)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        vaekit.load(run)


# 3. non-finite and wrongly typed weights are refused where weights are written and loaded

@pytest.mark.parametrize("filename", ["model.safetensors", "ema.safetensors"])
def test_checkpoint_with_nan_weights_is_refused_naming_the_tensor(trained, tmp_path, filename):
    run = _copy(trained, tmp_path)
    tensors = load_file(run / STEP / filename)
    tensors["decoder.0.2.weight"][3, 2] = float("nan")
    _rewrite_tensors(run, filename, tensors)
    with pytest.raises(CheckpointError, match=rf"{filename}: non-finite values .*decoder\.0\.2\.weight"):
        vaekit.load(run)
    with pytest.raises(CheckpointError, match=r"non-finite values .*decoder\.0\.2\.weight"):
        _resume(run, "train.steps=20")


def test_weights_of_another_dtype_are_refused(trained, tmp_path):
    run = _copy(trained, tmp_path)
    tensors = {k: v.double() for k, v in load_file(run / STEP / "model.safetensors").items()}
    _rewrite_tensors(run, "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"decoder\.0\.2\.weight: checkpoint F64 vs model F32"):
        vaekit.load(run)
    with pytest.raises(CheckpointError, match=r"checkpoint F64 vs model F32"):
        _resume(run, "train.steps=20")


def test_optimizer_state_of_another_shape_is_refused_on_resume(trained, tmp_path):
    run = _copy(trained, tmp_path)
    tensors = load_file(run / STEP / "optimizer.safetensors")
    name = next(k for k in tensors if k.endswith("/exp_avg"))
    tensors[name] = torch.zeros(3)
    _rewrite_tensors(run, "optimizer.safetensors", tensors)
    with pytest.raises(CheckpointError, match=rf"{name}: checkpoint \(3,\) vs model"):
        _resume(run, "train.steps=20")


def test_nan_weights_are_never_written(tmp_path):
    config = tiny_config(tmp_path)
    model = VAE(config.model.model_copy(update={"image_shape": (1, 8, 8)}))
    with torch.no_grad():
        model.encoder[1][0].bias[1] = float("inf")
    with pytest.raises(CheckpointError, match=r"non-finite values .*encoder\.1\.0\.bias"):
        save_checkpoint(tmp_path / "checkpoints", step=1, model=model, model_name="vae",
                        config={"model": {"name": "vae"}})
    assert list(tmp_path.rglob("*")) == []  # no checkpoint, no staging folder


def test_nan_ema_decay_is_refused_at_config_load():
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config("digits-vae", ["train.ema_decay=.nan"])


def test_divergence_names_the_last_checkpoint_whose_weights_are_finite(tmp_path, monkeypatch):
    """The step-20 checkpoint's weights turn NaN on disk; the NaN loss at step 24 must point at step-10."""
    original = VAE.loss
    run = tmp_path / "tiny"

    def loss(self, batch, *, group="model", step=0):
        losses = original(self, batch, group=group, step=step)
        if step == 23:
            tensors = load_file(run / "checkpoints/step-20/model.safetensors")
            tensors["decoder.0.0.bias"][0] = float("nan")
            data = save(tensors)
            (run / "checkpoints/step-20/model.safetensors").write_bytes(data)
            state = json.loads((run / "checkpoints/step-20/state.json").read_text())
            state["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            (run / "checkpoints/step-20/state.json").write_text(json.dumps(state))
        if step >= 23:
            return type(losses)(total=losses.total * float("nan"), terms=losses.terms)
        return losses

    monkeypatch.setattr(VAE, "loss", loss)
    with pytest.raises(TrainingDivergedError, match=r"step 25\b.*finite weights is .*step-10\b") as caught:
        vaekit.train(tiny_config(tmp_path), quiet=True)
    assert "step-20" not in str(caught.value)


def test_weights_turning_nan_under_a_finite_loss_stop_the_run_before_they_are_saved(tmp_path, monkeypatch):
    original, calls = WeightEMA.update, []

    def update(self, model):
        original(self, model)
        calls.append(1)
        if len(calls) == 13:
            self.shadow["decoder.0.2.weight"][0, 0] = float("nan")

    monkeypatch.setattr(WeightEMA, "update", update)
    with pytest.raises(TrainingDivergedError,
                       match=r"weights became NaN or infinite .*decoder\.0\.2\.weight.*step 20\b.*finite weights is "
                             r".*step-10\b"):
        vaekit.train(tiny_config(tmp_path, "train.ema_decay=0.9"), quiet=True)
    assert [p.name for p in list_checkpoints(tmp_path / "tiny/checkpoints")] == ["step-10"]


# 6. left-overs of interrupted writes are removed on the next start of the run, and nothing else

class _Killed(BaseException):
    """Stands for SIGKILL: raised inside a write, with vaekit's clean-up on the way out disabled."""


def _interrupted_writes(run: Path, monkeypatch) -> None:
    """Leave what a kill during a checkpoint write and during a file write leaves, with vaekit's own names."""
    def killed(*args, **kwargs):
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(vaekit.io.os, "replace", killed)
        patch.setattr(vaekit.io.os, "unlink", lambda path: None)
        patch.setattr(checkpoint_module.shutil, "rmtree", lambda *args, **kwargs: None)
        model = vaekit.load(run)
        with pytest.raises(_Killed):
            save_checkpoint(run / "checkpoints", step=20, model=model, model_name="vae", config={"model": {"name": "vae"}})
        with pytest.raises(_Killed):
            vaekit.io.atomic_write_text(run / "config.yaml", "interrupted")
        with pytest.raises(_Killed):
            vaekit.io.atomic_write_bytes(run / "samples" / "step-20.png", b"interrupted")


def test_interrupted_write_leftovers_are_removed_on_the_next_start_and_nothing_else(trained, tmp_path, monkeypatch):
    run = _copy(trained, tmp_path)
    before = {p.relative_to(run) for p in run.rglob("*")}
    _interrupted_writes(run, monkeypatch)
    leftovers = {p.relative_to(run) for p in run.rglob("*")} - before
    assert any(p.parent.name == "checkpoints" for p in leftovers)  # a staging folder
    assert any(p.parent == Path(".") for p in leftovers) and any(p.parent.name == "samples" for p in leftovers)
    foreign = [run / "notes.tmp", run / ".config.yaml.abcdefgh.tmp", run / "checkpoints/.step-20.backup/x",
               run / "samples/.mine.vaekit", tmp_path / next(iter(leftovers)).name]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not vaekit's")
    _resume(run, "train.steps=10")
    assert {p.relative_to(run) for p in run.rglob("*")} & leftovers == set()
    assert all(path.read_text() == "not vaekit's" for path in foreign)


@pytest.mark.parametrize("key,value", [("betas", "x"), ("lr", float("nan")), ("params", [0, 1])])
def test_optimizer_settings_of_another_kind_are_refused_on_resume(trained, tmp_path, key, value):
    run = _copy(trained, tmp_path)
    state = _state(run)
    state["optimizers"]["model"]["param_groups"][0][key] = value
    _write_state(run, state)
    with pytest.raises(CheckpointError, match=rf"optimiser 'model': parameter group 0 .*{key}"):
        _resume(run, "train.steps=20")


def test_minus_infinity_log_probabilities_are_saved_and_loaded_and_nan_is_not(tmp_path):
    """-inf is the log-weight of an unused mixture component; a NaN or +inf is never a weight."""
    model = torch.nn.Module()
    model.register_buffer("log_weights", torch.tensor([0.0, float("-inf")]))
    path = save_checkpoint(tmp_path, step=1, model=model, model_name="m", config={"model": {"name": "m"}})
    assert torch.equal(load_tensor_file(path, "model.safetensors", read_state(path))["log_weights"], model.log_weights)
    model.log_weights[0] = float("nan")
    with pytest.raises(CheckpointError, match="log_weights"):
        save_checkpoint(tmp_path, step=2, model=model, model_name="m", config={"model": {"name": "m"}})


def test_grad_scaler_state_round_trips_and_a_broken_one_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    scaler = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    path = save_checkpoint(tmp_path, step=1, model=model, model_name="m", config={"model": {"name": "m"}},
                           extra={"grad_scaler": scaler, "train_seconds": 1.5})
    assert read_state(path)["extra"]["grad_scaler"] == scaler
    state = json.loads((path / "state.json").read_text())
    del state["extra"]["grad_scaler"]["_growth_tracker"]
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"state\.json: invalid .*extra\.grad_scaler\._growth_tracker"):
        read_state(path)
