"""Tutorial: a VQ-VAE, a learned prior over its codes, and a file of bits, on the embedded 8x8 digits (a few
minutes on a CPU).

    python docs/tutorials/vq_vae.py [OUT_DIR]

1. Train the `digits-vqvae` preset: each 8x8 digit becomes a 4x4 grid of codes, each one of 64 codebook
   entries (EMA codebook, commitment cost 0.25). Codebook health: the share of codes in use on the test
   split and the perplexity of their use.
2. Train the `digits-code-prior` preset over those codes: a causal transformer p(c) = prod_i p(c_i | c_<i)
   (a two-stage run: its parent is the frozen VQ-VAE).
3. Compress the test digits into one .vqz file with the prior's probabilities, decompress it, check the
   codes came back exactly, and compare the bytes with log2(64) = 6 bits per code without a prior, with
   the prior's cross-entropy, and with WebP at several qualities (Pillow) on the same digits.
4. Pictures: reconstructions, prior samples, and the rate-distortion plot.
"""

import io
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaekit
from vaekit.coding.container import unpack
from vaekit.coding.vq_codec import VQCodec
from vaekit.data import load_data
from vaekit.evaluation import write_image_grids
from vaekit.viz import save_codec_comparison_plot

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)

vq_run = vaekit.train("digits-vqvae", overrides=[f"out_dir={runs}", "name=vqvae"], force=True, quiet=True)
prior_run = vaekit.train("digits-code-prior", overrides=[f"out_dir={runs}", "name=code-prior", f"parent={vq_run}"],
                         force=True, quiet=True)

vq = vaekit.load(vq_run)
data = load_data(vq.run_config.data)
with torch.inference_mode():
    health = vq.extra_scores(data.test)
print(f"codebook: {health['codes_in_use']:.0%} of 64 codes in use on the test split, "
      f"perplexity {health['code_perplexity']:.1f}")

codec = VQCodec(vaekit.load(prior_run))
test = data.test  # (N, 1, 8, 8) in [0, 1]
pixels = (test[:, 0] * 255).round().to(torch.uint8).numpy()  # what a user's 8-bit images would be
stream = codec.compress(torch.from_numpy(pixels).float().div(255)[:, None])
_, codes = codec.decode_codes(stream)
with torch.inference_mode():
    assert torch.equal(codes, codec.vq.latent_codes(torch.from_numpy(pixels).float().div(255)[:, None]))
    cross_entropy = -codec.model.prior.log_prob(codes).mean().item() / math.log(2)  # bits per image
decoded = codec.decompress(stream)[:, 0].numpy()


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """10 log10(255^2 / MSE) over all pixels."""
    return float(10 * np.log10(255.0**2 / np.mean((reference.astype(float) - decoded.astype(float)) ** 2)))


count = len(pixels)
payload = len(unpack(stream).payload)
print(f"{count} test digits -> {len(stream)} bytes ({len(stream) / count:.1f} per image, header "
      f"{len(stream) - payload} bytes), PSNR {psnr(pixels, decoded):.2f} dB")
print(f"without a prior: {16 * 6 / 8:.1f} bytes per image; the prior's cross-entropy: {cross_entropy / 8:.2f}")

webp = []
for quality in (0, 10, 25, 50, 75, 90):
    files, back = [], []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="WEBP", quality=quality, method=6)
        files.append(buffer.getvalue())
        back.append(np.asarray(Image.open(io.BytesIO(files[-1])).convert("L")))
    webp.append((sum(map(len, files)) / count, psnr(pixels, np.stack(back))))
print("WebP, one file per image (bytes, dB):", ", ".join(f"({b:.0f}, {p:.1f})" for b, p in webp))

alone = sum(len(codec.compress(torch.from_numpy(image).float().div(255)[None, None])) for image in pixels) / count
print(f"each digit in its own .vqz file: {alone:.1f} bytes per image")
quality = psnr(pixels, decoded)
save_codec_comparison_plot({"vaekit VQ-VAE + prior, one stream": [(len(stream) / count, quality)],
                            "vaekit, one file per image": [(alone, quality)],
                            "WebP, one file per image": webp}, out / "vq-rate-distortion.png")
for picture in write_image_grids(codec.model, data, prior_run, step=0, config=codec.model.run_config.eval):
    shutil.copyfile(picture, out / f"vq-{picture.parent.name}.png")
print("pictures in", out)
