"""Two CPU processes (torchrun, gloo) train to the same parameters as one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import tiny_config
from safetensors.torch import load_file

import vaekit


def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    overrides = ["train.steps=12", "train.batch_size=64", "train.checkpoint_every=12", "train.eval_every=12",
                 "train.ema_decay=0.9"]
    single = vaekit.train(tiny_config(tmp_path, *overrides, name="single"), quiet=True)
    # batch_size is the global batch: two processes of 32 rows each
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vaekit", "train", "--quiet", f"out_dir={tmp_path}", "name=double",
               "model.hidden_dims=[64]", "model.latent_dim=4", "train.log_every=5", "train.num_threads=1",
               "eval.num_importance_samples=20", "eval.num_images=40", "eval.num_grid_images=16", *overrides]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(single / "checkpoints/step-12/model.safetensors")
    b = load_file(tmp_path / "double/checkpoints/step-12/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # and the run really moved: parameters differ from initialisation by far more than the tolerance
    torch.manual_seed(0)
    initial = vaekit.build_model(vaekit.load(single).config).state_dict()
    assert max((initial[k] - a[k]).abs().max().item() for k in a) > 1e-2
