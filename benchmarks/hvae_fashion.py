"""The hierarchical VAE on Fashion-MNIST (Bernoulli, dynamic binarisation): settings chosen on held-out
training images, then the test NLL after 10 minutes of training.

    python benchmarks/hvae_fashion.py select [NAME...]  # candidates on 50,000 training images, scored on the other 10,000
    python benchmarks/hvae_fashion.py goal1      # the fashion-mnist-hvae-10min preset, then the test protocol
    python benchmarks/hvae_fashion.py select2 [NAME...]  # the same for the 2-hour preset: regularisers at its steps
    python benchmarks/hvae_fashion.py goal2 [--candidate NAME]  # the 2-hour fashion-mnist-hvae preset (or another
                                                 # layout), its curve, the test protocol
    python benchmarks/hvae_fashion.py curve [--seed S]  # 1..9 latent groups and the single-level VAE, 10 minutes each
    python benchmarks/hvae_fashion.py subsets    # the binarisation noise of the image sets scored here (no model)

Stage `select`: each candidate (the preset with a few overrides) trains on the first 50,000 training
images (`data.validation=10000`) and is scored on the first 1000 of the 10,000 held-out training
images with K=100; no test image is read. Its steps are fixed, so its score does not depend on the
machine's load; SELECT_THREADS=1 runs it beside other work without oversubscribing 2 cores. Stage `select2`
does the same for the 2-hour preset (GOAL2_SELECT: the preset and regularisers of it, at its 36,000 steps, scored
also at every evaluation on the way, the held-out curve). Stage `goal1`: the chosen preset, unchanged, on the whole
training split; then `vaekit eval` in fp32 with K=1000 on the first 1000 test images (the preset's own
evaluation, K=100 beside it) and with K=100 on all 10,000 test images. Training time is the engine's
train_seconds (steps only, not evaluation or saving). Every stage is resumable: finished runs are read
back, an interrupted run resumes from its checkpoint (its train_seconds add up), and
benchmarks/results/hvae_fashion.json is rewritten after every run with the load average. Stage `goal2`: the
2-hour preset, unchanged but for its evaluations every 10,000 steps (K=100 on the first 1000 test images: the
curve as it goes, not used to choose anything), then the same test protocol. Stage `curve`:
each configuration (L = 1, 2, 3, 5, 9 latent groups, and the core's single-level VAE) first trains 300
steps to time a step on this machine, then for the steps that make CURVE_BUDGET_SECONDS of training
(equal wall clock; the seconds it really took are recorded), in a child process whose peak resident
memory is recorded; then test NLL at K=100 on the first 1000 test images (the settings are not chosen
by it), active groups, KL per group, and samples per second from the prior. Run it on an idle machine.
Stage `subsets`: for each set of images scored here, the expected -ln p(x | y) of a binarised image x under
its own grey levels y, sum over pixels of H(y) = -y ln y - (1 - y) ln(1 - y) (nats per image, mean over the
set): the binarisation noise that no model removes, which differs between sets of the same data.
Run directories: benchmarks/results/partial/hvae/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import vaekit
from vaekit.config import DataConfig
from vaekit.data.images import load_image_data
from vaekit.engine.precision import resolve_precision
from vaekit.io import atomic_write_json

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "hvae"
OUT = ROOT / "results" / "hvae_fashion.json"
GOAL1_PRESET = "fashion-mnist-hvae-10min"
GOAL2_PRESET = "fashion-mnist-hvae"
# goal 2's evaluations every eval_every steps: K=100 on the first 1000 test images (~1/10 of the preset's K=1000
# evaluation's time), the curve; the goal's K=1000 score comes from `vaekit eval` of the finished run
GOAL2_INTERIM_EVAL = ["eval.num_importance_samples=100", "eval.extra_importance_samples=[]"]
# other layouts for goal 2 (overrides of GOAL2_PRESET): fewer 7x7 groups scored best on the held-out images at the
# 10-minute budget (stage select: dense+1-12000 and dense+2-8300), and the time they save per step pays for a wider
# network and more steps (300-step probes on 2 idle cores: the preset 0.164 s, dense + 2 groups 48 wide 0.086 s, 64
# wide 0.151 s: 42,000 steps in 1 h 46 min at that pace, 1 h 56 min at 10% slower)
GOAL2_CANDIDATES: dict[str, list[str]] = {
    "dense+2-w64": ["model.channels=64", "model.groups_per_scale=[2]", "train.steps=42000",
                    "model.kl_warmup_steps=4200", "train.eval_every=10500"],
}
VALIDATION = ["data.validation=10000", "eval.num_images=1000", "eval.num_importance_samples=100",
              "eval.extra_importance_samples=[]", f"train.num_threads={os.environ.get('SELECT_THREADS', '2')}"]
# regularisers of the 2-hour preset (overrides of GOAL2_PRESET), chosen on held-out images at its steps: its
# training bound pulled away from the test bound as it trained (226.5 against 228.7 over the last 2,000 steps)
GOAL2_SELECT: dict[str, list[str]] = {
    "preset": [],
    "adamw-wd0.01": ["train.optimizer=adamw", "train.weight_decay=0.01"],  # decoupled weight decay, PyTorch's default
    # lambda as NVAE's MNIST command (--weight_decay_norm 1e-2, not annealed there), beside a per-image -ELBO as there
    "spectral-0.01": ["model.spectral_regularisation=0.01"],
    # a third of the preset's KL warm-up: at the 10-minute budget 10% of the steps scored 1.2 nats better than 30%
    # (stage select, strided-6000 against strided-6000-warmup10); is the absolute length what the 2-hour run pays?
    "kl-warmup-1200": ["model.kl_warmup_steps=1200"],
}
SPATIAL_ONLY = ["model.top_latent_dim=0", "model.resampling=nearest", "train.lr=0.001", "train.lr_warmup_steps=0"]
CANDIDATES: dict[str, list[str]] = {  # run name -> overrides of GOAL1_PRESET
    # spatial groups only (the first preset): 0.15-0.18 s per step on 2 idle cores
    "cells0-3600-lr1e-3": [*SPATIAL_ONLY, "model.downsamples=1", "model.groups_per_scale=[2,2]",
                           "train.steps=3600", "model.kl_warmup_steps=1080", "train.eval_every=3600"],
    "7x7-g4-cells0-6500-lr1e-3": [*SPATIAL_ONLY, "model.groups_per_scale=[4]", "train.steps=6500",
                                  "model.kl_warmup_steps=1950", "train.eval_every=6500"],
    "preset-10min": [*SPATIAL_ONLY, "model.groups_per_scale=[4]", "train.steps=3800",  # timed on 2 idle cores
                     "model.kl_warmup_steps=1140", "train.eval_every=3800"],
    # a dense first group (32 numbers) above the 7x7 groups, 3x3 convolutions to 28x28 and 4x4 stride-2 transposed
    # convolutions back (a layout since replaced by model.resampling=strided): 0.14-0.16 s per step idle
    "dense32-g2-4200-lr2e-3": ["model.groups_per_scale=[2]", "train.steps=4200", "model.kl_warmup_steps=1260",
                               "train.eval_every=4200"],
    "dense32-g4-3800-lr2e-3": ["train.steps=3800", "model.kl_warmup_steps=1140", "train.eval_every=3800"],
    # the image path as the VAE's conv nets (model.resampling=strided): ~0.6x the step time; 6000 steps, KL warm-up
    # over 30% or 10% of them
    "strided-6000": ["model.resampling=strided", "train.steps=6000", "model.kl_warmup_steps=1800",
                     "train.eval_every=6000"],
    "strided-6000-warmup10": ["model.resampling=strided", "train.steps=6000", "model.kl_warmup_steps=600",
                              "train.eval_every=6000"],
    # the preset's 5000 steps with a wider dense layer (as the VAE's 512), and with 64 numbers in the dense group
    "th512-5000": ["model.top_hidden=512"],
    "th512-top64-5000": ["model.top_hidden=512", "model.top_latent_dim=64"],
    # fewer groups, more steps (the curve: each 7x7 group costs ~0.02 s per step): the steps of 10 minutes at the
    # curve's probe paces (0.048 and 0.072 s)
    "dense+1-12000": ["model.groups_per_scale=[1]", "train.steps=12000", "model.kl_warmup_steps=1200",
                      "train.eval_every=12000"],
    "dense+2-8300": ["model.groups_per_scale=[2]", "train.steps=8300", "model.kl_warmup_steps=830",
                     "train.eval_every=8300"],
}

CURVE_BUDGET_SECONDS = 600.0  # equal wall clock: each configuration's steps are sized to this many train_seconds
CURVE_EVAL = ["eval.num_images=1000", "eval.num_importance_samples=100", "eval.extra_importance_samples=[]",
              "eval.sample_quality_samples=0"]
CURVE: dict[str, tuple[str, list[str]]] = {  # name -> (preset, overrides); L = latent groups
    "L1-one-7x7-group": (GOAL1_PRESET, ["model.top_latent_dim=0", "model.groups_per_scale=[1]"]),
    "L2-dense+1": (GOAL1_PRESET, ["model.groups_per_scale=[1]"]),
    "L3-dense+2": (GOAL1_PRESET, ["model.groups_per_scale=[2]"]),
    "L5-dense+4": (GOAL1_PRESET, []),  # the 10-minute preset
    "L9-dense+8": (GOAL1_PRESET, ["model.groups_per_scale=[8]"]),
    "single-level-vae": ("fashion-mnist-vae", []),  # the core's best single-level VAE (benchmarks section 3)
}
PROBE_STEPS = (100, 300)  # seconds per step = train_seconds between these steps / 200
PROBE_EVAL = ["eval.num_images=10", "eval.num_importance_samples=2", "eval.extra_importance_samples=[]",
              "eval.sample_quality_samples=0"]  # the evaluation every run ends with, made negligible


def _record() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def _save(record: dict) -> None:
    atomic_write_json(OUT, record)


def _last_lines(run_dir: Path) -> tuple[dict, dict]:
    """The last training-metrics line and the last test line of a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return ([m for m in lines if m["split"] == "train"][-1], [m for m in lines if m["split"] == "test"][-1])


def _train(name: str, preset: str, overrides: list[str]) -> Path:
    """Train (or resume, or read back) one run under RUNS; its directory."""
    run_dir = RUNS / name
    resume = (run_dir / "checkpoints").is_dir()
    config = vaekit.load_config(preset, [f"out_dir={RUNS}", f"name={name}", *overrides])
    if resume and (run_dir / "metrics.jsonl").is_file():
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if any(m["split"] == "test" and m["step"] == config.train.steps for m in lines):
            return run_dir
    return vaekit.train(preset, overrides=[f"out_dir={RUNS}", f"name={name}", *overrides], resume=resume,
                        force=not resume, quiet=True)


def _summary(run_dir: Path) -> dict:
    train, test = _last_lines(run_dir)
    keep = ("nll", "nll_stderr", "elbo", "kl", "active_groups", "kl_per_group", "active_units", "num_images",
            "importance_samples", "nll_k100", "bits_per_dim")
    precision = json.loads((run_dir / "versions.json").read_text())["precision"]  # train.precision=auto resolved
    return {"train_seconds": train["train_seconds"], "steps": train["step"], "skipped_steps": train["skipped_steps"],
            "score": {key: test[key] for key in keep if key in test}, "precision": precision,
            "loadavg": os.getloadavg()}


def stage_select(key: str, preset: str, candidates: dict[str, list[str]], only: list[str]) -> None:
    """Each candidate (overrides of `preset`) trained on 50,000 training images and scored on held-out ones; results
    under record[key][name], with every held-out evaluation on the way. The comparison is paired, so every
    candidate of a stage trains in the precision its first ones did (records without one: bf16, the presets'
    precision before `auto`); on a CPU where `auto` picks another, the stage stops."""
    here = resolve_precision("auto", torch.device("cpu"))
    recorded = {entry.get("precision", "bf16") for entry in _record().get(key, {}).values()}
    if recorded - {here}:
        raise SystemExit(f"stage {key}'s candidates trained in {', '.join(sorted(recorded))}; this CPU trains in "
                         f"{here} (train.precision=auto): run it on a CPU of the same kind")
    for name, overrides in candidates.items():
        if name in _record().get(key, {}) or (only and name not in only):
            continue
        run_dir = _train(f"{key}-{name}", preset, [*overrides, *VALIDATION])
        result = {"overrides": overrides, **_summary(run_dir)}
        result["curve"] = [{field: m[field] for field in ("step", "train_seconds", "nll", "elbo", "active_groups")}
                           for m in map(json.loads, (run_dir / "metrics.jsonl").open()) if m["split"] == "test"]
        record = _record()  # read again: candidates may run in parallel processes
        record.setdefault(key, {})[name] = result
        _save(record)
        print(name, result["train_seconds"], result["score"]["nll"], flush=True)


def _test_eval(goal: dict, run_dir: Path, key: str, importance_samples: int, num_images: int) -> None:
    """`vaekit eval` of a finished run on the first `num_images` test images at K=`importance_samples`, into goal[key]."""
    if key in goal:
        return
    out = RUNS / f"{run_dir.name}-{key}.json"
    subprocess.run([sys.executable, "-m", "vaekit", "eval", str(run_dir), "--importance-samples",
                    str(importance_samples), "--num-images", str(num_images), "--quiet", "--out", str(out)], check=True)
    scores = json.loads(out.read_text())
    goal[key] = {name: scores[name] for name in ("nll", "nll_stderr", "elbo", "num_images", "kl_per_group",
                                                   "active_groups")} | {"loadavg": os.getloadavg()}


def stage_goal1() -> None:
    record = _record()
    goal = record.setdefault("goal1", {"preset": GOAL1_PRESET})
    run_dir = _train("goal1", GOAL1_PRESET, [])
    goal |= _summary(run_dir)
    _save(record)
    _test_eval(goal, run_dir, "test_all_k100", 100, 10000)
    _save(record)
    print(json.dumps(goal, indent=1))


def stage_goal2(candidate: str | None) -> None:
    """The 2-hour preset (or a candidate layout) with K=100 test scores as it goes (its curve), then the goal's
    protocol on the test split."""
    record = _record()
    overrides = GOAL2_CANDIDATES[candidate] if candidate else []
    entry = {"preset": GOAL2_PRESET, "overrides": overrides, "interim_eval": GOAL2_INTERIM_EVAL}
    goal = (record.setdefault("goal2_candidates", {}).setdefault(candidate, entry) if candidate
            else record.setdefault("goal2", entry))
    run_dir = _train(f"goal2-{candidate}" if candidate else "goal2", GOAL2_PRESET, [*overrides, *GOAL2_INTERIM_EVAL])
    goal |= _summary(run_dir)
    goal["curve"] = [{key: m[key] for key in ("step", "train_seconds", "nll", "elbo", "active_groups")}
                     for m in map(json.loads, (run_dir / "metrics.jsonl").open()) if m["split"] == "test"]
    _save(record)
    _test_eval(goal, run_dir, "test_first1000_k1000", 1000, 1000)
    _save(record)
    _test_eval(goal, run_dir, "test_all_k100", 100, 10000)
    _save(record)
    print(json.dumps(goal, indent=1))


def _run_child(args: list[str]) -> float:
    """Run a vaekit command in a child process; its peak resident memory (MiB)."""
    child = subprocess.Popen([sys.executable, "-m", "vaekit", *args])
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"vaekit {' '.join(args[:3])} failed (status {status})")
    return usage.ru_maxrss / 1024  # KiB on Linux


def _seconds_per_step(name: str, preset: str, overrides: list[str]) -> float:
    """A short probe run on this machine: seconds per training step between PROBE_STEPS."""
    out = RUNS / "curve-probe"
    _run_child(["train", "--config", preset, *overrides, f"out_dir={out}", f"name={name}", "--force", "--quiet",
                f"train.steps={PROBE_STEPS[1]}", "train.log_every=100", "train.eval_every=1000000",
                "train.checkpoint_every=1000000", *PROBE_EVAL])
    seconds = {m["step"]: m["train_seconds"] for m in map(json.loads, (out / name / "metrics.jsonl").open())
               if m["split"] == "train"}
    return (seconds[PROBE_STEPS[1]] - seconds[PROBE_STEPS[0]]) / (PROBE_STEPS[1] - PROBE_STEPS[0])


def _sampling_rate(run_dir: Path, count: int = 1000) -> float:
    """Samples per second from the prior (decoder means), 2 threads, one batch of `count`."""
    import time

    import torch
    torch.set_num_threads(2)
    model = vaekit.load(run_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.sample(10, generator)
        start = time.perf_counter()
        model.sample(count, generator)
    return count / (time.perf_counter() - start)


def stage_curve(seed: int) -> None:
    """Each configuration for CURVE_BUDGET_SECONDS of training (steps from a probe), scored on the test split."""
    for name, (preset, overrides) in CURVE.items():
        key = f"{name}-seed{seed}"
        if key in _record().get("curve", {}):
            continue
        seconds_per_step = _seconds_per_step(name, preset, overrides)
        steps = int(CURVE_BUDGET_SECONDS / seconds_per_step)
        schedule = [f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                    f"train.seed={seed}"]
        if preset == GOAL1_PRESET:
            schedule.append(f"model.kl_warmup_steps={int(0.1 * steps)}")  # 10% of training, as the preset
        run_name = f"curve-{key}"
        peak_mib = _run_child(["train", "--config", preset, *overrides, *schedule, *CURVE_EVAL, f"out_dir={RUNS}",
                               f"name={run_name}", "--force", "--quiet"])
        result = {"preset": preset, "overrides": overrides + schedule, "probe_seconds_per_step": seconds_per_step,
                  "peak_rss_mib": round(peak_mib), "samples_per_second": _sampling_rate(RUNS / run_name),
                  **_summary(RUNS / run_name)}
        record = _record()
        record.setdefault("curve", {})[key] = result
        _save(record)
        print(key, steps, result["train_seconds"], result["score"]["nll"], flush=True)


def binarisation_entropy(grey: torch.Tensor) -> float:
    """Mean over images (N, C, H, W) in [0, 1] of sum over pixels of H(y) = -y ln y - (1 - y) ln(1 - y), nats."""
    grey = grey.double()
    entropy = -(torch.special.xlogy(grey, grey) + torch.special.xlogy(1 - grey, 1 - grey))
    return float(entropy.flatten(1).sum(1).mean())


def stage_subsets() -> None:
    """The binarisation noise of every image set the goals score (see the docstring)."""
    full = load_image_data(DataConfig(name="fashion_mnist"))
    held_out = load_image_data(DataConfig(name="fashion_mnist", validation=10000))
    sets = {"test, first 1000 (the goals' K=1000 set)": full.test[:1000], "test, all 10,000": full.test,
            "held-out training images, first 1000 (stage select's set)": held_out.test[:1000],
            "held-out training images, all 10,000": held_out.test, "training split, all 60,000": full.train}
    record = _record()
    record["subsets"] = {name: binarisation_entropy(images) for name, images in sets.items()}
    _save(record)
    for name, nats in record["subsets"].items():
        print(f"{nats:8.2f} nats  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["select", "select2", "goal1", "goal2", "curve", "subsets"])
    parser.add_argument("candidates", nargs="*", help="select, select2: only these candidates (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="curve: the training seed")
    parser.add_argument("--candidate", choices=sorted(GOAL2_CANDIDATES), help="goal2: this layout, not the preset")
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    if args.stage == "select":
        stage_select("select", GOAL1_PRESET, CANDIDATES, args.candidates)
    elif args.stage == "select2":
        stage_select("select2", GOAL2_PRESET, GOAL2_SELECT, args.candidates)
    elif args.stage == "curve":
        stage_curve(args.seed)
    elif args.stage == "goal2":
        stage_goal2(args.candidate)
    elif args.stage == "subsets":
        stage_subsets()
    else:
        stage_goal1()


if __name__ == "__main__":
    main()
