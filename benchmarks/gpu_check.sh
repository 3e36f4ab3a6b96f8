#!/bin/bash
# On a machine with a CUDA GPU: one short training per family under bf16 on one GPU, and, where two
# GPUs exist, the same under 2 processes with NCCL (torchrun); then a sharded `vaekit eval`. Writes
# benchmarks/results/gpu_check.json (per run: world size, exit status, wall seconds, training
# seconds, final training loss, the last test scores). The CPU test suite never depends on it.
#
#   bash benchmarks/gpu_check.sh [STEPS]          # from the repository root, vaekit installed
#   DEVICE=cpu bash benchmarks/gpu_check.sh 2     # the script's own smoke run on a machine without a GPU
set -uo pipefail
STEPS=${1:-200}
OUT=$(mktemp -d)
RESULTS=benchmarks/results/gpu_check.json
DEVICE=${DEVICE:-cuda}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$DEVICE" = cuda ] && [ "$GPUS" -lt 1 ]; then echo "gpu_check: no CUDA device visible to torch" >&2; exit 2; fi
if [ "$DEVICE" = cpu ]; then GPUS=1; RESULTS=$OUT/gpu_check.json; fi  # smoke run: one process, results not kept
COMMON=("train.device=$DEVICE" train.precision=bf16 "train.steps=$STEPS" "train.eval_every=$STEPS"
        "train.checkpoint_every=$STEPS" "out_dir=$OUT")
FAMILIES=(digits-vae digits-wae-mmd pointcloud-ae digits-hvae digits-vqvae)

run() {  # run NAME WORLD COMMAND...: time one command, record its exit status
    local name=$1 world=$2; shift 2
    local start end status
    start=$(date +%s.%N)
    "$@" > "$OUT/$name.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    echo "$name $world $status $(awk "BEGIN {print $end - $start}")" >> "$OUT/runs.txt"
}

for preset in "${FAMILIES[@]}"; do
    run "$preset-1gpu" 1 vaekit train --config "$preset" "name=$preset-1gpu" "${COMMON[@]}" --quiet
    if [ "$GPUS" -ge 2 ]; then
        run "$preset-2gpu" 2 torchrun --standalone --nproc-per-node=2 -m vaekit train --config "$preset" \
            "name=$preset-2gpu" "${COMMON[@]}" --quiet
    fi
done
run digits-code-prior-1gpu 1 vaekit train --config digits-code-prior name=digits-code-prior-1gpu \
    "parent=$OUT/digits-vqvae-1gpu" "${COMMON[@]}" --quiet
if [ "$GPUS" -ge 2 ]; then
    run digits-vae-eval-2gpu 2 torchrun --standalone --nproc-per-node=2 -m vaekit eval "$OUT/digits-vae-1gpu" \
        --out "$OUT/digits-vae-eval-2gpu.json" --quiet
fi

python - "$OUT" "$RESULTS" "$STEPS" <<'PY'
import json, platform, sys
from pathlib import Path

import torch

out, results, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
record = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
          "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], "steps": steps,
          "runs": {}}
for line in (out / "runs.txt").read_text().splitlines():
    name, world, status, seconds = line.split()
    entry = {"world_size": int(world), "exit_status": int(status), "wall_seconds": float(seconds)}
    metrics = out / name / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(row) for row in metrics.read_text().splitlines()]
        train = [row for row in rows if row.get("split") == "train"]
        entry |= {"final_loss": train[-1].get("loss") if train else None,
                  "train_seconds": max((row.get("train_seconds", 0.0) for row in rows), default=None),
                  "tests": [row for row in rows if row.get("split") == "test"][-1:]}
    if int(status) != 0:
        entry["log_tail"] = (out / f"{name}.log").read_text()[-2000:]
    record["runs"][name] = entry
results.write_text(json.dumps(record, indent=2) + "\n")
failed = [name for name, entry in record["runs"].items() if entry["exit_status"]]
print(f"gpu_check: {len(record['runs'])} runs, {len(failed)} failed {failed}; {results}")
sys.exit(1 if failed else 0)
PY
