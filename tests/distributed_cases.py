"""Tiny training runs of every registered model, for the 1-process vs 2-process equivalence tests
(training, and sharded evaluation of a trained run).

Each case: a preset, key=value overrides, and the case whose run is its parent (two-stage models).
A registered model without a case fails tests/test_distributed.py, so every future model joins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import vaekit
from vaekit.config import RunConfig, load_config
from vaekit.data import load_data
from vaekit.engine.distributed import ONE_PROCESS, Shard
from vaekit.evaluation import evaluate

STEPS = 6
COMMON = [f"train.steps={STEPS}", "train.batch_size=16", "train.log_every=3", f"train.eval_every={STEPS}",
          f"train.checkpoint_every={STEPS}", "train.num_threads=1", "train.ema_decay=0.5",
          "eval.num_importance_samples=4", "eval.num_images=16", "eval.num_grid_images=4"]
DIGITS = ["data.max_train=128", "data.max_test=16"]
POINTS = ["data={name: procedural, num_points: 64, shapes_per_category: 10, categories: [chair, mug]}"]
MLP_IMAGES = "architecture: mlp, hidden_dims: [16], latent_dim: 3"

CASES: dict[str, tuple[str, list[str], str | None]] = {
    "vae": ("digits-vae", [*DIGITS, f"model={{name: vae, {MLP_IMAGES}, free_bits: 0.2}}"], None),
    "wae-mmd": ("digits-vae", [*DIGITS, f"model={{name: wae-mmd, {MLP_IMAGES}}}"], None),
    "wae-gan": ("digits-vae", [*DIGITS, f"model={{name: wae-gan, {MLP_IMAGES}, discriminator_hidden_dims: [8]}}"],
                None),
    "pointcloud-ae": ("pointcloud-ae", [*POINTS, ("model={name: pointcloud-ae, latent_dim: 8, loss: sliced, "
                                                 "encoder_channels: [8, 16], decoder_hidden_dims: [16]}")], None),
    "latent-gan": ("pointcloud-latent-gan", [("model={name: latent-gan, loss: wgan-gp, noise_dim: 4, critic_updates: 2, "
                                             "generator_hidden_dims: [8], discriminator_hidden_dims: [8]}")],
                   "pointcloud-ae"),
    "latent-gmm": ("digits-latent-gmm", ["model={name: latent-gmm, num_components: 2}"], "vae"),
    "hierarchical-vae": ("digits-vae", [*DIGITS, ("model={name: hierarchical-vae, channels: 8, latent_channels: 2, "
                                              "groups_per_scale: [1, 2], kl_warmup_steps: 10, spectral_regularisation: 0.1}")],
                         None),
    "vqvae": ("digits-vae", [*DIGITS, "data.binarize=none", ("model={name: vqvae, channels: 8, downsamples: 1, "
                                                              "residual_cells: 1, num_codes: 16, code_dim: 4, rate_weight: 0.5}")], None),
    "code-prior": ("digits-code-prior", ["model={name: code-prior, width: 16, layers: 1, heads: 2}"], "vqvae"),
    "toy-codebook": ("digits-vae", [*DIGITS, "data.binarize=none", "model={name: toy-codebook}"], None),
}


def case_config(name: str, out_dir: Path, run_name: str) -> RunConfig:
    """The config of case `name`, writing to out_dir/run_name; a child's parent is out_dir/<parent>-1."""
    preset, overrides, parent = CASES[name]
    extra = [f"parent={out_dir / (parent + '-1')}"] if parent else []
    cache = [f"data.cache_dir={out_dir / 'cache'}"] if any(o.startswith("data={name: procedural") for o in overrides) else []
    return load_config(preset, [f"out_dir={out_dir}", f"name={run_name}", *COMMON, *overrides, *extra, *cache])


def case_scores(run_dir: Path, shard: Shard = ONE_PROCESS) -> dict[str, Any]:
    """`evaluate` of a trained run with its eval config (and the exact EMD of point clouds), this process's share."""
    model = vaekit.load(run_dir)
    config = model.run_config
    eval_config = config.eval.model_copy(update={"point_cloud_emd": True})
    return evaluate(model, load_data(config.data), eval_config, shard=shard)


def sharded_scores_path(out_dir: Path, case: str, rank: int) -> Path:
    """Where process `rank` of 2 writes its scores of the 1-process run of `case`."""
    return out_dir / f"eval-{case}-rank{rank}-of-2.json"
