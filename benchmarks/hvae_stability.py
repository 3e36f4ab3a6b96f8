"""Stability of the hierarchical VAE's CPU presets: every preset, 3 seeds, diverged runs and skipped updates.

    python benchmarks/hvae_stability.py [PRESET...] [--seeds 0 1 2] [--threads N]

Each run is the preset unchanged but for its seed and a cheaper final evaluation (K=100 on 1000 test
images: the evaluation scores the run, it does not change its training). A run has diverged when the
engine stops it (`TrainingDivergedError`: a non-finite loss that update skipping did not catch), or
its last logged training loss is not finite; skipped updates (`train.skip_grad_norm`) are counted.
Seed 0 of `fashion-mnist-hvae` is read from goal 2's run of benchmarks/hvae_fashion.py, which trains and
scores exactly as this run would (checked on its saved config; only its name differs).
Resumable: finished runs are read back, an interrupted one resumes from its checkpoint;
benchmarks/results/hvae_stability.json is rewritten after every run with the load average. Run
directories: benchmarks/results/partial/hvae-stability/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import vaekit
from vaekit.config import config_to_dict, load_config
from vaekit.errors import TrainingDivergedError
from vaekit.io import atomic_write_json

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "hvae-stability"
OUT = ROOT / "results" / "hvae_stability.json"
CPU_PRESETS = ["digits-hvae", "fashion-mnist-hvae-10min", "fashion-mnist-hvae", "fashion-mnist-hvae-logistic"]
CHEAPER_EVAL = ["eval.num_importance_samples=100", "eval.extra_importance_samples=[]", "eval.num_images=1000"]
# a run another benchmark trains with exactly a stability run's data, model, training and evaluation (only its
# name and directory differ, checked): goal 2 of benchmarks/hvae_fashion.py is seed 0 of the 2-hour preset
TRAINED_ELSEWHERE = {"fashion-mnist-hvae-seed0": ROOT / "results" / "partial" / "hvae" / "goal2"}


def _record() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def _same_run(run_dir: Path, wanted: vaekit.RunConfig) -> bool:
    """Whether a finished run trained and scored as `wanted` would (its name, directory and threads aside)."""
    if not (run_dir / "checkpoints" / f"step-{wanted.train.steps}").is_dir():
        return False  # not started, or not finished
    config = config_to_dict(load_config(run_dir / "config.yaml"))
    expected = config_to_dict(wanted)
    for section in (config, expected):
        section["train"].pop("num_threads")
        section["model"].pop("image_shape")  # the saved config's is taken from the data, the preset's is None
    return all(config[key] == expected[key] for key in ("data", "model", "train", "eval"))


def _run(preset: str, seed: int, threads: int | None) -> dict | None:
    """Train (or resume, or read back) one seed of a preset; what its metrics say about its stability. None: the
    run another benchmark trains for this seed is not finished yet."""
    name = f"{preset}-seed{seed}"
    overrides = [f"out_dir={RUNS}", f"name={name}", f"train.seed={seed}", *CHEAPER_EVAL]
    if threads is not None:
        overrides.append(f"train.num_threads={threads}")
    run_dir = RUNS / name
    if name in TRAINED_ELSEWHERE:
        run_dir = TRAINED_ELSEWHERE[name]
        if not _same_run(run_dir, load_config(preset, overrides)):
            print(f"{name}: {run_dir} is not finished (or not the same run); left for later", flush=True)
            return None
    else:
        resume = (run_dir / "checkpoints").is_dir()
        try:
            vaekit.train(preset, overrides=overrides, resume=resume, force=not resume, quiet=True)
        except TrainingDivergedError as error:
            return {"diverged": True, "error": str(error), "loadavg": os.getloadavg()}
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"][-1]
    test = [m for m in lines if m["split"] == "test"][-1]
    return {"diverged": not math.isfinite(train["loss"]), "steps": train["step"],
            "skipped_steps": train["skipped_steps"], "train_seconds": train["train_seconds"],
            "final_train_loss": train["loss"], "test_nll_k100": test["nll"], "test_elbo": test["elbo"],
            "active_groups": test.get("active_groups"), "run": str(run_dir.relative_to(ROOT)),
            "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=CPU_PRESETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:
        for seed in args.seeds:
            key = f"{preset}-seed{seed}"
            if key in _record():
                continue
            result = _run(preset, seed, args.threads)
            if result is None:
                continue
            record = _record()  # read again: presets may run in parallel processes
            record[key] = result
            atomic_write_json(OUT, record)
            print(key, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
