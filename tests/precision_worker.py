"""torchrun worker of tests/test_precision.py: `train.precision=auto` on two processes of which only rank 0 has
bf16 instructions (as told by a patched `native_bf16`).

usage: torchrun --nproc_per_node=2 tests/precision_worker.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conftest import tiny_config

import vaekit
from vaekit.engine import precision

if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    precision.native_bf16 = lambda device: rank == 0
    vaekit.train(tiny_config(Path(sys.argv[1]), "train.precision=auto", "train.steps=4", "train.eval_every=4",
                             "train.device=cpu"), quiet=True)
