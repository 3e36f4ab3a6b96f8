"""vaekit's WAE-MMD against pythae 0.1.2's WAE_MMD on grey-level Fashion-MNIST, same nets, data and epochs.

    benchmarks/.venv-ref/bin/python benchmarks/wae_vs_pythae.py --epochs 1

Runs in the benchmark's own environment (benchmarks/.venv-ref: pythae 0.1.2 plus vaekit installed
editable). Both sides train pythae's Encoder_Conv_AE_MNIST / Decoder_Conv_AE_MNIST (latent 16,
the same initial weights) with the paper's objective: cost 0.05 * ||x - G(z)||^2 summed over pixels
plus lambda = 10 times the unbiased IMQ MMD (scales 0.1..10 times 2 d_z sigma_p^2, sigma_p = 1),
Adam 1e-3, batch 100, fp32, --epochs passes over the 60,000 training images.
  - pythae: WAE_MMD's forward `.loss`, zero_grad, backward, Adam step, in a plain loop over a
    seeded permutation per epoch (pythae's trainer adds only logging around that).
  - vaekit: `Trainer.run`, the engine's own loop, on a vaekit WAE-MMD whose encoder/decoder are thin
    adapters around the pythae modules (periodic evaluation and checkpoints stubbed out).
  The two trainings advance in interleaved blocks of --block steps, each block timed, so both see
  the same machine load; samples/s = steps * batch / the side's summed block times.
Then both trained models are wrapped in the same vaekit adapter and scored by the same code as
benchmarks/families_fashion.py: test MSE per pixel and PSNR (first 1000 test images), kernel MMD
(IMQ) between their codes and prior draws, FD / KID of 10000 decoder-mean samples in vaekit's
Fashion-MNIST classifier features. Results are written to --out at the end.
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
from vae_vs_pythae import PythaeDecoderLogits, engine_steps

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


class PythaeLoop:
    """pythae's WAE_MMD trained by its forward `.loss`, zero_grad, backward, Adam step; a seeded permutation per epoch."""

    def __init__(self, train: Tensor, seed: int, batch_size: int) -> None:
        self.model = build_pythae(seed)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.train, self.batch_size = train, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batches: list[Tensor] = []

    def steps(self, count: int) -> None:
        for _ in range(count):
            if not self.batches:
                self.batches = list(torch.randperm(len(self.train), generator=self.generator).split(self.batch_size))[::-1]
            loss = self.model({"data": self.train[self.batches.pop()]}).loss
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()


def vaekit_trainer(args: argparse.Namespace) -> tuple[Trainer, WAE_MMD]:
    """vaekit's engine on a WAE-MMD whose nets are adapters around a fresh pythae model (same seed, same weights)."""
    big = 10**9
    config = validate_config({
        "name": "wae-vs-pythae", "out_dir": str(args.work_dir),
        "data": {"name": "fashion_mnist", "path": str(args.data_dir)},
        "model": {"name": "wae-mmd", "image_shape": [1, 28, 28], "latent_dim": LATENT_DIM, "kernel": "imq",
                  "penalty_weight": LAMBDA, "reconstruction_scale": COST_SCALE},
        "train": {"steps": 1, "batch_size": args.batch_size, "optimizer": "adam", "lr": 1e-3, "precision": "fp32",
                  "seed": args.seed, "log_every": 100, "eval_every": big, "checkpoint_every": big, "device": "cpu"},
    })
    trainer = Trainer(config, load_data(config.data), init_distributed("cpu"), quiet=True)
    pythae_model = build_pythae(args.seed)
    trainer.model.encoder = PythaeAEEncoder(pythae_model.encoder)
    trainer.model.decoder = PythaeDecoderLogits(pythae_model.decoder)
    trainer.optimizers = make_optimizers(trainer.model, trainer.train_cfg)
    trainer.open_run_dir(resume=False, force=True)
    trainer._evaluate = lambda: None  # scored below, by the same code as pythae's model
    trainer._save = lambda: None
    return trainer, pythae_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "wae_vs_pythae.json")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "partial" / "wae_vs_pythae")
    parser.add_argument("--data-dir", type=Path, default=ref.DEFAULT_DATA_DIR)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead (a quick check)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--block", type=int, default=50, help="steps per side between switches (interleaving)")
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
    if not {"pythae", "vaekit"} <= results.keys():
        pythae = PythaeLoop(data.train, args.seed, args.batch_size)
        trainer, vaekit_model = vaekit_trainer(args)
        seconds = {"pythae": 0.0, "vaekit": 0.0}
        runners = {"pythae": pythae.steps, "vaekit": lambda n: engine_steps(trainer, n)}
        for done in range(0, steps, args.block):  # interleaved blocks: both sides see the same machine load
            count = min(args.block, steps - done)
            for side, run in runners.items():
                start = time.perf_counter()
                run(count)
                seconds[side] += time.perf_counter() - start
        for side, model in (("pythae", pythae.model), ("vaekit", vaekit_model)):
            results[side] = {"train_s": seconds[side], "steps": steps,
                             "samples_per_s": steps * args.batch_size / seconds[side],
                             "loadavg": os.getloadavg()} | score_model(vaekit_adapter(model), data)
            atomic_write_json(args.out, results)
            print(side, results[side], flush=True)
    results["ratio_samples_per_s_vaekit_over_pythae"] = results["vaekit"]["samples_per_s"] / results["pythae"]["samples_per_s"]
    atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
