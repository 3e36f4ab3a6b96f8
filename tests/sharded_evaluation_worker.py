"""torchrun worker of tests/test_sharded_evaluation.py: the sharded evaluations of a small set in this process group.

usage: torchrun --nproc_per_node=2 tests/sharded_evaluation_worker.py OUT_DIR
Each process writes OUT_DIR/scores-rank<r>.json, then OUT_DIR/resumed-rank<r>.json from a second run
that resumes from the states the first left in OUT_DIR/state/; `small_set_scores(ONE_PROCESS, ...)`
is the 1-process reference. Chamfer distances by the matmul backend (VAEKIT_NEAREST=matmul): the
fused kernels would be compiled in every process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vaekit.config import EvalConfig
from vaekit.engine.distributed import Shard, init_distributed
from vaekit.metrics.emd_search import emd_set_metrics
from vaekit.metrics.images import per_image_log_px
from vaekit.metrics.pointclouds import chamfer_set_metrics, reconstruction_scores
from vaekit.models.pointcloud import PointCloudAE, PointCloudAEConfig
from vaekit.models.vae import VAE, VAEConfig

# 7 images over 2 processes: shares of 4 and 3 (the gather pads); chunks of 2 mix each share's images
NLL = EvalConfig(num_importance_samples=30, samples_per_chunk=16, images_per_chunk=2, seed=7)
POINTS = 32


def tiny_vae() -> VAE:
    """A seeded, untrained VAE on 8x8 binary images."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return VAE(VAEConfig(image_shape=(1, 8, 8), latent_dim=3, hidden_dims=(16,))).eval()


def tiny_autoencoder() -> PointCloudAE:
    """A seeded, untrained point-cloud auto-encoder (batch norm on its running statistics)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return PointCloudAE(PointCloudAEConfig(num_points=POINTS, latent_dim=4, encoder_channels=(8,),
                                               decoder_hidden_dims=(8,))).eval()


def binary_images(count: int = 7) -> torch.Tensor:
    """(count, 1, 8, 8) in {0, 1}, seeded."""
    return (torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.4).float()


def clouds(count: int, seed: int, scale: float) -> torch.Tensor:
    """(count, POINTS, 3) Gaussian clouds of spread `scale` in the unit box, seeded."""
    return (scale * torch.randn(count, POINTS, 3, generator=torch.Generator().manual_seed(seed))).clamp(-0.5, 0.5)


def small_set_scores(shard: Shard, state_dir: Path) -> dict[str, Any]:
    """Per-image NLL of the VAE, the CD and exact-EMD set metrics (resumable from `state_dir`), the
    reconstruction scores with the exact EMD."""
    log_px, elbo = per_image_log_px(tiny_vae(), binary_images(), NLL, shard=shard)
    samples, references = clouds(5, 2, 0.15), clouds(6, 3, 0.2)
    return {
        "log_px": log_px.tolist(),
        "elbo": elbo.tolist(),
        "chamfer": chamfer_set_metrics(samples, references, pairs_per_batch=4, state_dir=state_dir, shard=shard),
        "emd": emd_set_metrics(samples, references, state_path=state_dir / "emd.npz", shard=shard),
        "reconstruction": reconstruction_scores(tiny_autoencoder(), references, 2, emd=True, shard=shard),
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    shard = init_distributed("cpu").shard
    (out_dir / "state").mkdir(parents=True, exist_ok=True)
    for name in ("scores", "resumed"):  # the second run resumes from the states the first one saved
        scores = small_set_scores(shard, out_dir / "state")
        (out_dir / f"{name}-rank{shard.rank}.json").write_text(json.dumps(scores))
    dist.barrier()  # no process leaves while another still talks to it
    dist.destroy_process_group()
