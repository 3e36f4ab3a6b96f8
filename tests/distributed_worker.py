"""torchrun worker of tests/test_distributed.py: trains the named cases in this process group, then scores
each case's 1-process run by sharded evaluation.

usage: torchrun --nproc_per_node=2 tests/distributed_worker.py OUT_DIR CASE [CASE ...]
Each case's run is OUT_DIR/<case>-2 (its parent, if any, is the 1-process run OUT_DIR/<parent>-1); each
process writes its scores of OUT_DIR/<case>-1 to `sharded_scores_path(OUT_DIR, case, rank)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from distributed_cases import case_config, case_scores, sharded_scores_path
from toy_models import register_toy_models

import vaekit
from vaekit.engine.distributed import init_distributed

if __name__ == "__main__":
    register_toy_models()
    out_dir = Path(sys.argv[1])
    for case in sys.argv[2:]:
        vaekit.train(case_config(case, out_dir, f"{case}-2"), quiet=True)
    shard = init_distributed("cpu").shard
    for case in sys.argv[2:]:
        scores = case_scores(out_dir / f"{case}-1", shard)
        sharded_scores_path(out_dir, case, shard.rank).write_text(json.dumps(scores))
    dist.barrier()  # no process leaves while another still talks to it
    dist.destroy_process_group()
