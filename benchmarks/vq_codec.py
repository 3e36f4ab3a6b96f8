"""VQ-VAE and its codec on Fashion-MNIST: the models every later stage measures, trained here.

    .venv/bin/python benchmarks/vq_codec.py train      # the VQ-VAEs and their code priors (resumable)

Stage `train` trains, on the training split only, each operating point of `OPERATING_POINTS` (the
`fashion-mnist-vqvae` preset with the listed overrides) and then a `fashion-mnist-code-prior` run
over its codes. Run directories go to benchmarks/results/partial/vq/; a stage that finds a finished
run reuses it and resumes an unfinished one from its newest checkpoint. Progress and the load
average go to benchmarks/results/vq_codec_train.json after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import vaekit
from vaekit.config import load_config
from vaekit.engine.runs import find_checkpoint
from vaekit.errors import VaekitError
from vaekit.io import atomic_write_json

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "vq"
OPERATING_POINTS = {  # name -> overrides of the fashion-mnist-vqvae preset
    "grid7-k512": [],
    "grid14-k512": ["model.downsamples=1"],
}


def train_run(preset: str, name: str, overrides: list[str]) -> Path:
    """Train (or finish, or reuse) one run under RUNS; its directory."""
    config = load_config(preset, [f"out_dir={RUNS}", f"name={name}", *overrides])
    run_dir = RUNS / name
    finished = run_dir / "checkpoints" / f"step-{config.train.steps}"
    if finished.is_dir():
        return run_dir
    try:
        find_checkpoint(run_dir)
        resume = True
    except VaekitError:
        resume = False
    return vaekit.train(config, resume=resume, force=not resume and run_dir.is_dir(), quiet=True)


def stage_train(out: Path) -> None:
    """Every operating point's VQ-VAE, then its code prior."""
    record = json.loads(out.read_text()) if out.is_file() else {}
    for point, overrides in OPERATING_POINTS.items():
        for preset, name, extra in (("fashion-mnist-vqvae", point, overrides),
                                    ("fashion-mnist-code-prior", f"{point}-prior", [f"parent={RUNS / point}"])):
            start, load = time.perf_counter(), os.getloadavg()
            run_dir = train_run(preset, name, extra)
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            test = [m for m in metrics if m.get("split") == "test"]
            record[name] = {"preset": preset, "overrides": extra, "wall_seconds_this_call": time.perf_counter() - start,
                            "loadavg_start": load, "loadavg_end": os.getloadavg(),
                            "train_seconds": max(m.get("train_seconds", 0.0) for m in metrics),
                            "last_test": test[-1] if test else None}
            atomic_write_json(out, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train"])
    args = parser.parse_args()
    if args.stage == "train":
        stage_train(ROOT / "results" / "vq_codec_train.json")


if __name__ == "__main__":
    main()
