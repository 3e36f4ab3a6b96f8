"""Tutorial: lossless compression by bits back, a VAE and a hierarchical VAE against PNG, WebP, gzip, bzip2 and xz
on the embedded 8x8 digits (a few minutes on a CPU).

    python docs/tutorials/bits_back.py [OUT_DIR]

1. Train three models with discrete likelihoods: `digits-vae` and `digits-hvae` (Bernoulli, binarised digits) and
   a VAE with a discretised logistic over the digits' 17 grey levels.
2. Compress the test digits losslessly into one .vqz file per model (BB-ANS for the VAEs, HiLLoC for the
   hierarchical VAE: its latent groups are discretised under each group's prior given the groups above),
   decompress, check every pixel came back, and put the bytes beside the model's -ELBO (the rate bits back
   reaches) and the initial bits the file carries.
3. The same images with the classical lossless codecs (Pillow's PNG and WebP, one file per image; gzip, bzip2 and
   xz over the whole set as one stream) and the plot of bytes per image.
"""

import bz2
import gzip
import io
import lzma
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vaekit
from vaekit.coding.bitsback import BitsBackCodec, initial_count, negative_elbo
from vaekit.coding.container import unpack
from vaekit.data import load_data
from vaekit.viz import save_lossless_rate_plot

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "tutorials"
runs = Path("runs") / "tutorials"  # run directories, relative to the working directory
out.mkdir(parents=True, exist_ok=True)

trained = {
    "VAE": vaekit.train("digits-vae", overrides=[f"out_dir={runs}", "name=bb-vae"], force=True, quiet=True),
    # one evaluation at K=100 at the end, not the preset's two at K=1000 (one thread): its NLL is not used here
    "hierarchical VAE": vaekit.train("digits-hvae", overrides=[f"out_dir={runs}", "name=bb-hvae", "train.steps=1500",
                                                               "model.kl_warmup_steps=450", "train.eval_every=1500",
                                                               "eval.num_importance_samples=100"],
                                     force=True, quiet=True),
    "grey VAE": vaekit.train("digits-vae", overrides=[f"out_dir={runs}", "name=bb-grey", "data.binarize=none",
                                                      "model.likelihood=logistic", "model.num_bins=17"],
                             force=True, quiet=True),
}


def classical(images: np.ndarray, binary: bool) -> dict[str, float]:
    """Bytes per image of PNG and WebP lossless (one file per image) and gzip, bzip2, xz (one stream)."""
    sizes = {}
    for fmt, options in (("PNG", {"optimize": True}), ("WEBP", {"lossless": True, "quality": 100, "method": 6})):
        total = 0
        for image in images:
            buffer = io.BytesIO()
            picture = Image.fromarray(image)
            (picture.convert("1") if binary and fmt == "PNG" else picture).save(buffer, format=fmt, **options)
            total += buffer.tell()
        sizes[f"{fmt} (files)"] = total / len(images)
    raw = np.packbits(images > 0).tobytes() if binary else images.tobytes()
    for name, compress in (("gzip", lambda b: gzip.compress(b, 9)), ("bzip2", lambda b: bz2.compress(b, 9)),
                           ("xz", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        sizes[f"{name} (stream)"] = len(compress(raw)) / len(images)
    return sizes


rates: dict[str, dict[str, float]] = {"binary": {}, "grey": {}}
bounds: dict[str, dict[str, float]] = {"binary": {}, "grey": {}}
for name, run in trained.items():
    model = vaekit.load(run)
    test = load_data(model.run_config.data).test  # binarised once with the evaluation's seed, or 17 grey levels
    pixels = (test.double() * 255).round().to(torch.uint8)  # (N, 1, 8, 8): what a user's image files hold
    codec = BitsBackCodec(model)
    data = codec.compress(pixels)
    assert torch.equal(codec.decompress(data), pixels)  # lossless: every pixel back
    kind = "grey" if name == "grey VAE" else "binary"
    label = f"vaekit {name}"
    rates[kind][label] = len(data) / len(pixels)
    bounds[kind][label] = float(negative_elbo(model, test).mean()) / math.log(2) / 8
    initial = 4 * initial_count(codec.bucket_bits, sum(codec.group_dims)) / len(pixels)
    header = (len(data) - len(unpack(data).payload)) / len(pixels)
    print(f"{name}: {len(pixels)} test digits -> {len(data)} bytes = {rates[kind][label]:.2f} per image; "
          f"-ELBO {bounds[kind][label]:.2f} + initial bits {initial:.2f} + header {header:.2f}")
    if kind == "binary" and not any("PNG" in codec_name for codec_name in rates["binary"]):
        rates["binary"] |= classical(pixels[:, 0].numpy(), binary=True)
    if kind == "grey":
        rates["grey"] |= classical(pixels[:, 0].numpy(), binary=False)

for kind, title in (("binary", "binarised 8x8 digits"), ("grey", "8x8 digits, 17 grey levels")):
    print(f"{title}, bytes per image:", ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates[kind].items(),
                                                                                        key=lambda kv: kv[1])))
    save_lossless_rate_plot(rates[kind], out / f"bitsback-{kind}.png", negative_elbo=bounds[kind],
                            title=f"lossless, {title}")
