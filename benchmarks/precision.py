"""Training step time in fp32 and in bf16 autocast, side by side on this CPU, and what `train.precision=auto` picks.

    python benchmarks/precision.py [--threads 2] [--presets [NAME ...]] [--codec]

Each preset trains for PROBE_STEPS[1] steps in a child process (`vaekit train`, the engine's own step: forward,
backward, clipping, optimiser), once with `train.precision=fp32` and once with `bf16`, alternating preset by preset
so both precisions see the same machine state; seconds per step are the engine's train_seconds between
PROBE_STEPS / their difference (the first steps, with oneDNN's kernel selection, are left out). The evaluation every
run ends with is made negligible and not timed. Stage `codec` (with --codec): the .vqz codec of the preset's
architectures (`fashion-mnist-vqvae` and `fashion-mnist-code-prior`, stand-ins trained CODEC_STAND_IN_STEPS
steps: speed does not depend on the weights) on the first 1000 Fashion-MNIST test images as one stream, images/s
each way and of its parts alone with `VQCodec(precision=fp32)` and `bf16`, timed by vq_codec.py's `codec_speed`
(best of three after one untimed call). Output: benchmarks/results/precision.json, one entry per kind of CPU
(torch's CPU capability and whether it has bfloat16 instructions), written after every measurement, so runs on
different machines sit side by side; keep the machine otherwise idle and read the recorded load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vq_codec  # the codec's timing (codec_speed), its test images and best-of-repeats timer

import vaekit
from vaekit.coding.vq_codec import torch_threads
from vaekit.engine.precision import native_bf16, resolve_precision
from vaekit.io import atomic_write_json

OUT = Path(__file__).parent / "results" / "precision.json"
PRESETS = ("fashion-mnist-vae", "fashion-mnist-wae-mmd", "fashion-mnist-hvae-10min", "fashion-mnist-hvae",
           "fashion-mnist-vqvae", "pointcloud-ae")
PROBE_STEPS = (10, 30)
CODEC_STAND_IN_STEPS = 20
PROBE_EVAL = ["eval.num_images=10", "eval.num_importance_samples=2", "eval.extra_importance_samples=[]",
              "eval.sample_quality_samples=0"]


def seconds_per_step(preset: str, precision: str, threads: int, out_dir: Path) -> float:
    """One probe run of `preset` at `precision`: train_seconds per step between PROBE_STEPS."""
    name = f"{preset}-{precision}"
    subprocess.run([sys.executable, "-m", "vaekit", "train", "--config", preset, f"out_dir={out_dir}", f"name={name}",
                    "--force", "--quiet", f"train.precision={precision}", f"train.num_threads={threads}",
                    f"train.steps={PROBE_STEPS[1]}", f"train.log_every={PROBE_STEPS[0]}", "train.eval_every=1000000",
                    "train.checkpoint_every=1000000", *PROBE_EVAL], check=True)
    seconds = {m["step"]: m["train_seconds"] for m in map(json.loads, (out_dir / name / "metrics.jsonl").open())
               if m["split"] == "train"}
    return (seconds[PROBE_STEPS[1]] - seconds[PROBE_STEPS[0]]) / (PROBE_STEPS[1] - PROBE_STEPS[0])


def codec_speeds(out_dir: Path) -> dict[str, dict]:
    """vq_codec.py's codec timing per precision (each way and its parts), on stand-ins of the Fashion-MNIST presets."""
    schedule = [f"out_dir={out_dir}", f"train.steps={CODEC_STAND_IN_STEPS}", f"train.eval_every={CODEC_STAND_IN_STEPS}",
                *PROBE_EVAL]
    vq = vaekit.train("fashion-mnist-vqvae", overrides=[*schedule, "name=vq"], quiet=True)
    prior = vaekit.train("fashion-mnist-code-prior", overrides=[*schedule, "name=prior", f"parent={vq}"], quiet=True)
    images = vq_codec.test_images()
    return {precision: vq_codec.codec_speed(prior, images, precision) for precision in ("fp32", "bf16")}


def matmul_gflops(dtype: torch.dtype, size: int = 1024) -> float:
    """GFLOP/s of one size x size matrix product in `dtype` on one thread (vq_codec.py's best of repeats)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    with torch_threads(1):
        return 2 * size**3 / vq_codec._best_seconds(lambda: a @ b) / 1e9


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), help="none: only the matrix products")
    parser.add_argument("--codec", action="store_true", help="also time the .vqz codec per precision")
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    native = native_bf16(cpu)
    key = f"{torch.backends.cpu.get_cpu_capability()}, {'with' if native else 'no'} bf16 instructions"
    record = json.loads(OUT.read_text()) if OUT.is_file() else {}
    entry = record.setdefault(key, {"presets": {}})  # a preset measured again replaces its own result only
    entry |= {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
              "auto_picks": resolve_precision("auto", cpu), "torch": torch.__version__, "threads": args.threads,
              "probe_steps": list(PROBE_STEPS)}
    entry["matmul_gflops_one_thread"] = {name: matmul_gflops(dtype) for name, dtype in
                                         (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    atomic_write_json(OUT, record)
    print("1024 x 1024 matrix product, one thread, GFLOP/s:", entry["matmul_gflops_one_thread"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            loadavg_start = os.getloadavg()
            times = {precision: seconds_per_step(preset, precision, args.threads, Path(tmp))
                     for precision in ("fp32", "bf16")}
            entry["presets"][preset] = {"fp32_seconds_per_step": times["fp32"], "bf16_seconds_per_step": times["bf16"],
                                        "bf16_over_fp32_time": times["bf16"] / times["fp32"],
                                        "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": loadavg_start,
                                        "loadavg_end": os.getloadavg()}
            atomic_write_json(OUT, record)
            print(f"{preset}: fp32 {times['fp32']:.4f} s, bf16 {times['bf16']:.4f} s per step "
                  f"({times['bf16'] / times['fp32']:.2f}x the time)", flush=True)
        if args.codec:
            torch.set_num_threads(args.threads)
            loadavg_start = os.getloadavg()
            entry["codec"] = codec_speeds(Path(tmp)) | {"date": time.strftime("%Y-%m-%d %H:%M"),
                                                       "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()}
            atomic_write_json(OUT, record)
            print("codec:", json.dumps(entry["codec"]), flush=True)


if __name__ == "__main__":
    main()
