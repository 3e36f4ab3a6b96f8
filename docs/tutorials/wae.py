"""Tutorial: a Wasserstein auto-encoder (WAE-MMD) on the embedded 8x8 digits (well under a minute on a CPU).

    python docs/tutorials/wae.py [OUT_DIR]

1. Train the `digits-wae-mmd` preset: deterministic encoder, cost 0.05 * ||x - G(z)||^2, and
   lambda = 10 times the kernel MMD (IMQ) between a batch of codes and a batch of prior draws.
2. Check what the penalty bought: the MMD between the test codes and N(0, I) draws, against the
   same number for a plain auto-encoder (lambda = 0) trained the same way.
3. Samples from the prior decoded, and reconstructions, as PNG grids.
"""

import shutil
import sys
from pathlib import Path

import torch

import vaekit
from vaekit.data import load_data
from vaekit.divergences import mmd_unbiased
from vaekit.evaluation import write_image_grids

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)


def latent_mmd(run_dir: Path) -> float:
    """MMD^2 (IMQ, unbiased) between the codes of the test digits and as many draws of the prior."""
    model = vaekit.load(run_dir)
    test = load_data(model.run_config.data).test
    with torch.no_grad():
        codes = model.latent_codes(test)
    prior = torch.randn(codes.shape, generator=torch.Generator().manual_seed(0))
    return mmd_unbiased(codes, prior, kernel="imq").item()


wae = vaekit.train("digits-wae-mmd", overrides=[f"out_dir={runs}", "name=wae"], force=True, quiet=True)
plain = vaekit.train("digits-wae-mmd", overrides=[f"out_dir={runs}", "name=plain-ae", "model.penalty_weight=0"],
                     force=True, quiet=True)
print(f"latent MMD to the prior: WAE-MMD {latent_mmd(wae):.4f}, plain AE (lambda = 0) {latent_mmd(plain):.4f}")

model = vaekit.load(wae)
for picture in write_image_grids(model, load_data(model.run_config.data), wae, step=0, config=model.run_config.eval):
    shutil.copyfile(picture, out / f"wae-{picture.parent.name}.png")
print("pictures in", out)
