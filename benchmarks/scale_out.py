"""Scale-out measurements on this machine: sharded evaluation 1 vs 2 processes, and the bytes each family
moves between processes per training step.

    python benchmarks/scale_out.py eval      # wall time of `vaekit eval`, 1 vs 2 processes
    python benchmarks/scale_out.py bytes     # bytes all-reduced / gathered per step, per family

Stage `eval`: three workloads, each trained briefly once (runs under benchmarks/results/partial/scale/):
`vaekit eval` of the `digits-vae` and `digits-hvae` presets with K=1000 importance samples on all 360
test digits, and of `pointcloud-ae` (Chamfer and exact-EMD metrics over 100 test clouds); each as
1 process with 2 threads and as 2 processes (torchrun, gloo) with 1 thread each, alternating, 3
times each, with the scores of both recorded (the NLL within 1e-4 nats per image is a test). The
fixed cost of starting the launcher and importing vaekit is measured alone. A workload already in the
JSON is skipped (delete its entry to measure it again). On a 2-core machine
this is an upper bound on what sharding buys, not a measure of scaling.

Stage `bytes`: each family's digits or procedural preset for 4 steps on 2 processes; the worker
counts what vaekit's own collectives move in training (torch.distributed.all_gather / all_reduce
wrapped, so global-batch terms: MMD codes, batch-norm statistics, codebook counts and sums; the
sharded evaluation at the last step, issued from vaekit.engine.distributed, is left out) and adds DDP's
gradient all-reduce, which moves every trainable parameter's gradient once per backward (fp32:
4 bytes each; counted from the model, since DDP reduces in C++). Output:
benchmarks/results/scale_out.json (load average recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "scale"
OUT = ROOT / "results" / "scale_out.json"
FAMILIES = {  # name -> (preset, overrides, parent family)
    "vae": ("digits-vae", [], None),
    "wae-mmd": ("digits-wae-mmd", [], None),
    "hierarchical-vae": ("digits-hvae", [], None),
    "vqvae": ("digits-vqvae", [], None),
    "code-prior": ("digits-code-prior", [], "vqvae"),
    "pointcloud-ae": ("pointcloud-ae", ["data.shapes_per_category=20"], None),
}
STEPS = 4


def _record() -> dict:
    return json.loads(OUT.read_text()) if OUT.is_file() else {}


def _save(record: dict) -> None:
    from vaekit.io import atomic_write_json

    atomic_write_json(OUT, record)


EVAL_WORKLOADS = {  # name -> (preset, training overrides, eval options)
    "vae NLL, K=1000, 360 test digits": ("digits-vae", [], ["--importance-samples", "1000"]),
    "hierarchical-vae NLL, K=1000, 360 test digits": ("digits-hvae", ["train.steps=300"],
                                                      ["--importance-samples", "1000"]),
    "pointcloud-ae Chamfer + exact EMD, 100 test clouds": ("pointcloud-ae", ["train.steps=100",
                                                                            "eval.point_cloud_emd=true"], []),
}


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | env, capture_output=True)
    return time.perf_counter() - start


def stage_eval(repeats: int = 3) -> None:
    """Wall seconds of the same `vaekit eval` on 1 process (2 threads) and 2 processes (1 thread each)."""
    import vaekit

    launchers = {
        "1 process x 2 threads": ([sys.executable], {"OMP_NUM_THREADS": "2"}),
        "2 processes x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node=2"], {"OMP_NUM_THREADS": "1"}),
    }
    startup = {name: sorted(_timed([*launcher, "-c", "import vaekit"] if len(launcher) == 1 else
                                   [*launcher, "--no-python", sys.executable, "-c", "import vaekit"], env)
                            for _ in range(repeats))[repeats // 2]
               for name, (launcher, env) in launchers.items()}
    record = _record()
    record["eval"] = {"startup_median_seconds": startup} | {"workloads": record.get("eval", {}).get("workloads", {})}
    for workload, (preset, overrides, options) in EVAL_WORKLOADS.items():
        if workload in record["eval"]["workloads"]:  # measured already (resumable)
            continue
        run_dir = vaekit.train(preset, overrides=[f"out_dir={RUNS}", f"name=eval-{preset}", *overrides],
                               resume=False, force=True, quiet=True)
        results: dict[str, dict] = {name: {"seconds": []} for name in launchers}
        for repeat in range(repeats):
            for name, (launcher, env) in launchers.items():
                out = RUNS / f"eval-{preset}-{repeat}-{name[0]}.json"
                command = [*launcher, "-m", "vaekit", "eval", str(run_dir), *options, "--quiet", "--out", str(out)]
                results[name]["seconds"].append(_timed(command, env))
                results[name]["loadavg"] = os.getloadavg()
                scores = json.loads(out.read_text())
                results[name]["scores"] = {key: value for key, value in scores.items() if isinstance(value, float)}
        for entry in results.values():
            entry["median_seconds"] = sorted(entry["seconds"])[repeats // 2]
        one, two = (results[name]["median_seconds"] for name in launchers)
        record["eval"]["workloads"][workload] = {"results": results, "speedup": one / two}
        _save(record)


def stage_bytes() -> None:
    """Per family: bytes through vaekit's collectives and DDP's gradient all-reduce per training step."""
    import vaekit

    record = _record()
    record["bytes"] = {}
    for family, (preset, overrides, parent) in FAMILIES.items():
        common = [f"out_dir={RUNS}", f"train.steps={STEPS}", f"train.eval_every={STEPS}",
                  f"train.checkpoint_every={STEPS}", "train.num_threads=1", "eval.num_images=16",
                  "eval.num_importance_samples=10", *overrides]
        extra = [f"parent={RUNS / (parent + '-1')}"] if parent else []
        vaekit.train(preset, overrides=[*common, *extra, f"name={family}-1"], force=True, quiet=True)
        counts = RUNS / f"{family}-bytes.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   str(Path(__file__)), "worker", preset, str(counts), *common, *extra, f"name={family}-2"]
        subprocess.run(command, check=True, capture_output=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        model = vaekit.load(RUNS / f"{family}-1")
        gradient_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
        measured = json.loads(counts.read_text())
        record["bytes"][family] = {"ddp_gradient_bytes_per_backward": gradient_bytes,
                                   "vaekit_collective_bytes_per_step": measured["bytes"] / STEPS,
                                   "vaekit_collective_calls_per_step": measured["calls"] / STEPS}
        _save(record)


def worker(preset: str, counts: Path, overrides: list[str]) -> None:
    """torchrun worker: train with torch.distributed's all_gather / all_reduce wrapped to count bytes."""
    import torch.distributed as dist

    import vaekit

    tally = {"bytes": 0, "calls": 0}
    original = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}

    def counted(name: str):
        def call(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") != "vaekit.engine.distributed":  # not the final evaluation
                tensor = args[1] if name == "all_gather" else args[0]
                tally["bytes"] += tensor.numel() * tensor.element_size()
                tally["calls"] += 1
            return original[name](*args, **kwargs)
        return call

    for name in original:
        setattr(dist, name, counted(name))
    vaekit.train(preset, overrides=overrides, force=True, quiet=True)
    if dist.get_rank() == 0:
        counts.write_text(json.dumps(tally))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["eval", "bytes"])
    args = parser.parse_args()
    RUNS.mkdir(parents=True, exist_ok=True)
    {"eval": stage_eval, "bytes": stage_bytes}[args.stage]()


if __name__ == "__main__":
    main()
