"""torchrun worker of tests/test_distributed.py: trains the named cases in this process group.

usage: torchrun --nproc_per_node=2 tests/distributed_worker.py OUT_DIR CASE [CASE ...]
Each case's run is OUT_DIR/<case>-2 (its parent, if any, is the 1-process run OUT_DIR/<parent>-1).
"""

from __future__ import annotations

import sys
from pathlib import Path

from distributed_cases import case_config
from toy_models import register_toy_models

import vaekit

if __name__ == "__main__":
    register_toy_models()
    out_dir = Path(sys.argv[1])
    for case in sys.argv[2:]:
        vaekit.train(case_config(case, out_dir, f"{case}-2"), quiet=True)
