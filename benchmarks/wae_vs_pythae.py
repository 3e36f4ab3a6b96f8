"""vaekit's WAE-MMD against pythae 0.1.2's WAE_MMD on grey-level Fashion-MNIST, same nets, data and epochs.

    benchmarks/.venv-ref/bin/python benchmarks/wae_vs_pythae.py --epochs 1

Runs in the benchmark's own environment (benchmarks/.venv-ref: pythae 0.1.2 plus vaekit installed
with --no-deps). Both sides train pythae's Encoder_Conv_AE_MNIST / Decoder_Conv_AE_MNIST (latent 16,
the same initial weights) with the paper's objective: cost 0.05 * ||x - G(z)||^2 summed over pixels
plus lambda = 10 times the unbiased IMQ MMD (scales 0.1..10 times 2 d_z sigma_p^2, sigma_p = 1),
Adam 1e-3, batch 100, fp32, --epochs passes over the 60,000 training images.
  - pythae: WAE_MMD's forward `.loss`, zero_grad, backward, Adam step, in a plain loop over a
    seeded permutation per epoch (pythae's trainer adds only logging around that).
  - vaekit: `Trainer.run`, the engine's own loop, on a vaekit WAE-MMD whose encoder/decoder are thin
    adapters around the pythae modules (periodic evaluation and checkpoints stubbed out).
Then both trained models are wrapped in the same vaekit adapter and scored by the same code as
benchmarks/families_fashion.py: test MSE per pixel and PSNR (first 1000 test images), kernel MMD
(IMQ) between their codes and prior draws, FD / KID of 10000 decoder-mean samples in vaekit's
Fashion-MNIST classifier features. Each side's result is written to --out when it finishes; a
rerun skips sides already there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pythae_vae as ref  # data loading (same IDX reader) and the environment record
from families_fashion import score_model
from pythae.models import WAE_MMD, WAE_MMD_Config
from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_AE_MNIST
from vae_vs_pythae import PythaeDecoderLogits

from vaekit.config import DataConfig, validate_config
from vaekit.data import load_data
from vaekit.engine.distributed import init_distributed
from vaekit.engine.train import Trainer, make_optimizers
from vaekit.io import atomic_write_json
from vaekit.models.wae import WAEMMD, WAEMMDConfig

LATENT_DIM = 16
LAMBDA, COST_SCALE = 10.0, 0.05


class PythaeAEEncoder(nn.Module):
    """pythae's Encoder_Conv_AE_MNIST as a vaekit deterministic encoder: x (B, 1, 28, 28) -> z (B, 16)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.net = encoder

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).embedding


def build_pythae(seed: int) -> WAE_MMD:
    torch.manual_seed(seed)
    config = WAE_MMD_Config(input_dim=ref.INPUT_DIM, latent_dim=LATENT_DIM, kernel_choice="imq", reg_weight=LAMBDA,
                            kernel_bandwidth=1.0, reconstruction_loss_scale=COST_SCALE)
    return WAE_MMD(model_config=config, encoder=Encoder_Conv_AE_MNIST(config), decoder=Decoder_Conv_AE_MNIST(config))


def vaekit_adapter(pythae_model: WAE_MMD) -> WAEMMD:
    """A vaekit WAE-MMD whose nets ARE pythae_model's modules (shared), with the same objective."""
    model = WAEMMD(WAEMMDConfig(image_shape=(1, 28, 28), latent_dim=LATENT_DIM, kernel="imq", prior_std=1.0,
                                penalty_weight=LAMBDA, reconstruction_scale=COST_SCALE))
    model.encoder = PythaeAEEncoder(pythae_model.encoder)
    model.decoder = PythaeDecoderLogits(pythae_model.decoder)
    return model


def train_pythae(train: Tensor, steps: int, seed: int, batch_size: int) -> tuple[WAE_MMD, float]:
    model = build_pythae(seed)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    batches = []
    start = time.perf_counter()
    for _ in range(steps):
        if not batches:
            batches = list(torch.randperm(len(train), generator=generator).split(batch_size))[::-1]
        loss = model({"data": train[batches.pop()]}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, time.perf_counter() - start


def train_vaekit(args: argparse.Namespace, steps: int) -> tuple[WAE_MMD, float]:
    big = 10**9
    config = validate_config({
        "name": "wae-vs-pythae", "out_dir": str(args.work_dir),
        "data": {"name": "fashion_mnist", "path": str(args.data_dir)},
        "model": {"name": "wae-mmd", "image_shape": [1, 28, 28], "latent_dim": LATENT_DIM, "kernel": "imq",
                  "penalty_weight": LAMBDA, "reconstruction_scale": COST_SCALE},
        "train": {"steps": steps, "batch_size": args.batch_size, "optimizer": "adam", "lr": 1e-3, "precision": "fp32",
                  "seed": args.seed, "log_every": 100, "eval_every": big, "checkpoint_every": big, "device": "cpu"},
    })
    data = load_data(config.data)
    trainer = Trainer(config, data, init_distributed("cpu"), quiet=args.quiet)
    pythae_model = build_pythae(args.seed)  # same initial weights as the pythae side
    trainer.model.encoder = PythaeAEEncoder(pythae_model.encoder)
    trainer.model.decoder = PythaeDecoderLogits(pythae_model.decoder)
    trainer.optimizers = make_optimizers(trainer.model, trainer.train_cfg)
    trainer.open_run_dir(resume=False, force=True)
    trainer._evaluate = lambda: None  # scored below, by the same code as pythae's model
    trainer._save = lambda: None
    start = time.perf_counter()
    trainer.run()
    return pythae_model, time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "wae_vs_pythae.json")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "partial" / "wae_vs_pythae")
    parser.add_argument("--data-dir", type=Path, default=ref.DEFAULT_DATA_DIR)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead (a quick check)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    settings = {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "latent_dim": LATENT_DIM,
                "lambda": LAMBDA, "cost_scale": COST_SCALE, "precision": "fp32"}
    if results.get("settings") != settings:
        results = {"settings": settings}
    results["environment"] = ref.environment(torch.get_num_threads())
    data = load_data(DataConfig(name="fashion_mnist", path=str(args.data_dir)))
    steps = args.steps or args.epochs * len(data.train) // args.batch_size
    for side in ("pythae", "vaekit"):
        if side in results:
            continue
        if side == "pythae":
            model, seconds = train_pythae(data.train, steps, args.seed, args.batch_size)
        else:
            model, seconds = train_vaekit(args, steps)
        adapter = vaekit_adapter(model)
        results[side] = {"train_s": seconds, "steps": steps, "samples_per_s": steps * args.batch_size / seconds,
                         "loadavg": os.getloadavg()} | score_model(adapter, data)
        atomic_write_json(args.out, results)
        print(side, results[side], flush=True)
    results["ratio_samples_per_s_vaekit_over_pythae"] = results["vaekit"]["samples_per_s"] / results["pythae"]["samples_per_s"]
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
