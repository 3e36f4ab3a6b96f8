"""Run directories: runs/<name>/{config.yaml, versions.json, metrics.jsonl, events, samples/, checkpoints/}."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from vaekit.config import RunConfig, dump_yaml
from vaekit.engine.checkpoint import list_checkpoints
from vaekit.errors import RunDirError
from vaekit.io import TEMP_SUFFIX, atomic_write_json, atomic_write_text

CONFIG_FILE = "config.yaml"
VERSIONS_FILE = "versions.json"
METRICS_FILE = "metrics.jsonl"


RUN_MARKER = ".vaekit-run"  # written into every run directory vaekit creates; --force replaces only these
# a file or checkpoint staging folder being written (`.NAME.RANDOM.vaekit-tmp`, io.TEMP_SUFFIX); only a kill leaves one
_INTERRUPTED_WRITE = re.compile(r"^\.[^/]+\.[a-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def run_dir_of(config: RunConfig) -> Path:
    """<out_dir>/<name>; the name is one plain path component (RunConfig validates it)."""
    return Path(config.out_dir) / config.name


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a real folder (not a link) that vaekit created as a run directory."""
    return path.is_dir() and not path.is_symlink() and (path / RUN_MARKER).is_file()


def check_run_dir(config: RunConfig, *, resume: bool, force: bool) -> bool:
    """Refuse what would overwrite, delete or resume the wrong thing (read-only: every process calls it).

    Returns whether an existing run directory is to be replaced (`force`). `force` replaces only
    a folder holding vaekit's run marker, never any other folder, file or link.
    """
    path = run_dir_of(config)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} exists and is not a folder; choose another name=... or out_dir=...")
    if path.exists() and any(path.iterdir()):
        if resume and force:
            raise RunDirError("pass either --resume or --force, not both")
        if force and not is_run_dir(path):
            raise RunDirError(
                f"--force replaces only run directories vaekit created (they hold {RUN_MARKER}); {path} is not one, "
                "so nothing was deleted. Choose another name=... or out_dir=..., or remove it yourself"
            )
        if not force and not resume:
            newest = list_checkpoints(path / "checkpoints")
            what = f"checkpoints up to {newest[-1].name}" if newest else "files"
            raise RunDirError(
                f"run directory {path} already exists ({what}); pass --resume to continue it "
                f"or --force to overwrite it, or choose another name=..."
            )
        return force
    if resume:
        state = "is empty" if path.exists() else "does not exist"
        raise RunDirError(f"cannot resume: run directory {path} {state}")
    return False


def prepare_run_dir(config: RunConfig, *, replace: bool) -> Path:
    """Create the run directory with its marker (replacing a marked one when `replace`), without what interrupted
    writes left in it; call after `check_run_dir`."""
    path = run_dir_of(config)
    if replace:
        if not is_run_dir(path):  # checked before, re-checked at the moment of deleting
            raise RunDirError(f"refusing to delete {path}: it is not a vaekit run directory")
        for entry in path.iterdir():  # everything but the marker: a kill meanwhile leaves a folder --force still replaces
            if entry.name != RUN_MARKER:
                entry.unlink() if entry.is_symlink() or not entry.is_dir() else shutil.rmtree(entry)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / RUN_MARKER).exists():
        atomic_write_json(path / RUN_MARKER, {"format": 1, "created_by": "vaekit"})
    remove_interrupted_writes(path)
    return path


def remove_interrupted_writes(path: Path) -> None:
    """Delete the temporary files and checkpoint staging folders that killed writes left under run directory
    `path`: vaekit's own temporary names only, never a link or anything else."""
    for folder, folders, files in os.walk(path):  # links are not followed
        for name in files:
            entry = Path(folder) / name
            if _INTERRUPTED_WRITE.match(name) and not entry.is_symlink():
                entry.unlink()
        for name in [name for name in folders if _INTERRUPTED_WRITE.match(name)]:
            folders.remove(name)
            if not (Path(folder) / name).is_symlink():
                shutil.rmtree(Path(folder) / name)


def write_run_files(path: Path, config: RunConfig, versions: dict[str, Any]) -> None:
    atomic_write_text(path / CONFIG_FILE, dump_yaml(config))
    atomic_write_json(path / VERSIONS_FILE, versions)


def collect_versions(seed: int, precision: str) -> dict[str, Any]:
    """Versions of everything that shapes a run's numbers, with the precision it trains under on this machine."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "vaekit": package_version(),
        "git": git_hash(),
        "seed": seed,
        "precision": precision,  # train.precision resolved (`auto` depends on the machine)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def package_version() -> str:
    """vaekit's installed version (from the package metadata, not by importing the package)."""
    try:
        return importlib.metadata.version("vaekit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def git_hash() -> str | None:
    """The commit vaekit runs from, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class MetricsLog:
    """Append-only metrics.jsonl; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, *, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (AttributeError, ValueError, RecursionError):
        return 1 << 62
