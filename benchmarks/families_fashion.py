"""VAE vs WAE-MMD vs WAE-GAN on Fashion-MNIST, 3 seeds each, on the same sample-quality metrics.

    .venv/bin/python benchmarks/families_fashion.py --out benchmarks/results/families_fashion.json

Trains each preset (fashion-mnist-vae, fashion-mnist-wae-mmd, fashion-mnist-wae-gan) unchanged for
every seed, then scores the final model on the test split: reconstruction MSE and PSNR (first 1000
test images, deterministic reconstruction), kernel MMD (IMQ) between the codes of those images and
as many prior draws, and FD / KID of 10000 decoder-mean samples against the 10000 grey test images in
vaekit's Fashion-MNIST classifier features (not Inception FID), and sharpness: the mean variance of
the Laplacian of 1000 decoder-mean samples (a standard blur measure; the paper's claim is that WAE
samples are sharper), beside the same number for the test images. Resumable: finished runs are read
back from the JSON; the JSON is rewritten after every run. Sample grids: RUN_DIR/samples/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import vaekit
from vaekit.data import ImageData, load_data
from vaekit.divergences import mmd_unbiased
from vaekit.evaluation import sample_quality
from vaekit.io import atomic_write_json
from vaekit.metrics.images import reconstruction_scores
from vaekit.models import GenerativeModel

PRESETS = ("fashion-mnist-vae", "fashion-mnist-wae-mmd", "fashion-mnist-wae-gan")


def score(run_dir: Path) -> dict[str, float]:
    """The shared metrics of one trained run."""
    model = vaekit.load(run_dir)
    return score_model(model, load_data(model.run_config.data))


@torch.inference_mode()
def score_model(model: GenerativeModel, data: ImageData) -> dict[str, float]:
    """Test reconstruction MSE/PSNR, latent MMD to the prior, FD/KID of 10000 samples (see the module docstring)."""
    model.eval()
    grey = (data.test_grey if data.test_grey is not None else data.test)[:1000]
    codes = model.latent_codes(grey)
    prior_std = getattr(model.config, "prior_std", 1.0)
    prior = prior_std * torch.randn(codes.shape, generator=torch.Generator().manual_seed(0))
    results = reconstruction_scores(model, grey, chunk=500)
    results["latent_mmd_imq"] = mmd_unbiased(codes, prior, kernel="imq", prior_variance=prior_std**2).item()
    results |= sample_quality(model, data, 10000, seed=0)
    return results | sharpness(model, data)


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Sharpness of each image: variance of its 4-neighbour Laplacian (Pech-Pacheco et al. 2000): (N, 1, H, W) -> (N,)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(images.float(), kernel).flatten(1).var(1)


@torch.inference_mode()
def sharpness(model: GenerativeModel, data: ImageData, num_samples: int = 1000) -> dict[str, float]:
    """Mean Laplacian variance of decoder-mean samples and, for scale, of the grey test images (higher = sharper)."""
    samples = model.sample(num_samples, generator=torch.Generator().manual_seed(1)).cpu()
    grey = (data.test_grey if data.test_grey is not None else data.test)[:num_samples]
    return {"sharpness_samples": laplacian_variance(samples).mean().item(),
            "sharpness_test_images": laplacian_variance(grey).mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/families_fashion.json"))
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/results/partial/families"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--add-sharpness", action="store_true",
                        help="add the sharpness scores to finished runs that lack them, then stop")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    if args.add_sharpness:
        for record in results["runs"].values():
            if "sharpness_samples" not in record:
                model = vaekit.load(record["run_dir"])
                record |= sharpness(model, load_data(model.run_config.data))
                atomic_write_json(args.out, results)
        return
    results["environment"] = {"torch": torch.__version__, "vaekit": vaekit.__version__, "threads": torch.get_num_threads()}
    for seed in args.seeds:
        for preset in PRESETS:
            key = f"{preset}/seed{seed}"
            if key in results["runs"]:
                continue
            started = time.time()
            run_dir = vaekit.train(preset, overrides=[f"out_dir={args.runs}", f"name={preset}-seed{seed}",
                                                      f"train.seed={seed}"], force=True, quiet=True)
            record = {"train_wall_s": round(time.time() - started, 1), "run_dir": str(run_dir),
                      "loadavg": os.getloadavg()} | score(run_dir)
            results["runs"][key] = record
            atomic_write_json(args.out, results)
            print(key, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}, flush=True)


if __name__ == "__main__":
    main()
