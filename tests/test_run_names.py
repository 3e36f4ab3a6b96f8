"""Run names cannot reach outside out_dir, and --force deletes only folders vaekit marked as run directories."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import tiny_config

import vaekit
from vaekit.cli import main
from vaekit.engine.rundir import RUN_MARKER
from vaekit.errors import ConfigError, RunDirError


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """A working directory holding a runs/ folder with one other run and a user's file beside it."""
    (tmp_path / "notes.txt").write_text("my notes")
    other = tmp_path / "runs" / "other-run"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"precious")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b", "/tmp/absolute", "..\\x"])
def test_a_run_name_that_is_not_one_plain_folder_name_is_refused_and_nothing_is_touched(scratch, name):
    before = _snapshot(scratch)
    quoted = json.dumps(name)  # a YAML string, so '' stays the empty name
    code = main(["train", "--force", "--quiet", f"name={quoted}", "train.steps=1", "model.hidden_dims=[8]"])
    assert code == 2
    assert _snapshot(scratch) == before
    assert not (scratch / "x").exists() and not Path("/tmp/absolute").exists()
    with pytest.raises(ConfigError, match="one plain folder name"):
        tiny_config(scratch / "runs", name=quoted)


def test_force_refuses_a_folder_vaekit_did_not_create(scratch):
    before = _snapshot(scratch)
    with pytest.raises(RunDirError, match="nothing was deleted"):
        vaekit.train(tiny_config(scratch / "runs", "train.steps=1", name="other-run"), force=True, quiet=True)
    assert _snapshot(scratch) == before


def test_force_refuses_a_file_and_a_link_in_place_of_the_run_directory(scratch):
    (scratch / "runs" / "a-file").write_text("not a folder")
    os.symlink(scratch / "runs" / "other-run", scratch / "runs" / "a-link")
    (scratch / "runs" / "other-run" / RUN_MARKER).write_text("{}")  # even a marked folder, reached by a link
    before = _snapshot(scratch)
    for name in ["a-file", "a-link"]:
        with pytest.raises(RunDirError):
            vaekit.train(tiny_config(scratch / "runs", "train.steps=1", name=name), force=True, quiet=True)
    assert _snapshot(scratch) == before


def test_force_replaces_a_marked_run_directory_and_nothing_beside_it(scratch):
    config = tiny_config(scratch / "runs", "train.steps=2", "train.checkpoint_every=2", name="mine")
    run_dir = vaekit.train(config, quiet=True)
    assert (run_dir / RUN_MARKER).is_file()
    (run_dir / "stale.txt").write_text("from the first run")
    others = {k: v for k, v in _snapshot(scratch).items() if not k.startswith("runs/mine")}
    vaekit.train(config, force=True, quiet=True)
    assert not (run_dir / "stale.txt").exists() and (run_dir / RUN_MARKER).is_file()
    assert (run_dir / "checkpoints/step-2/model.safetensors").is_file()
    assert {k: v for k, v in _snapshot(scratch).items() if not k.startswith("runs/mine")} == others


def test_a_force_interrupted_while_deleting_leaves_a_folder_force_still_replaces(scratch, monkeypatch):
    import shutil

    config = tiny_config(scratch / "runs", "train.steps=2", "train.checkpoint_every=2", name="mine")
    run_dir = vaekit.train(config, quiet=True)
    real_rmtree = shutil.rmtree

    def killed_while_deleting(path, *args, **kwargs):  # a kill after the first files are gone
        (Path(path) / RUN_MARKER).unlink(missing_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        vaekit.train(config, force=True, quiet=True)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    vaekit.train(config, force=True, quiet=True)
    assert (run_dir / "checkpoints/step-2/model.safetensors").is_file()


def test_resume_names_an_empty_run_directory_as_empty(scratch):
    (scratch / "runs" / "empty").mkdir()
    with pytest.raises(RunDirError, match="runs/empty is empty"):
        vaekit.train(tiny_config(scratch / "runs", "train.steps=1", name="empty"), resume=True, quiet=True)
