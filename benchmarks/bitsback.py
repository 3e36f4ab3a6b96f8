"""Lossless compression by bits back on Fashion-MNIST against the classical lossless codecs.

    python benchmarks/bitsback.py train                          # the models, on the training split (resumable)
    benchmarks/.venv-ref/bin/python benchmarks/bitsback.py rates    # bytes, -ELBO, NLL; the codecs beside them
    benchmarks/.venv-ref/bin/python benchmarks/bitsback.py speed    # images/s against chains, PNG and WebP (idle)

Stage `train` trains (or finishes, or reuses) the runs of `MODELS` under benchmarks/results/partial/bitsback/:
the 8-bit VAE (`fashion-mnist-vae-logistic`), the 8-bit hierarchical VAE (`fashion-mnist-hvae-logistic`) and the
Bernoulli VAE of the binarised images (`fashion-mnist-vae`), each with `train.num_threads=1` (two train at once on
2 cores; their numbers do not depend on that: fixed seeded steps). The hierarchical VAE's final evaluation used
K=100 (`eval.num_importance_samples=100 eval.extra_importance_samples=[]` on resuming from step 5000 with 2 threads):
K=1000 on 1000 images was on course for ~65 minutes on the shared machine.

Stage `rates` (reference environment, for imagecodecs): the first 1000 Fashion-MNIST test images, uint8.
- 8-bit: PNG (Pillow, optimize), WebP lossless (method 6), JPEG-LS, JPEG XL lossless (effort 9) one file per
  image and the 1000 images tiled into one picture; gzip -9, bzip2 -9 and xz -9e of the 1000 images as one
  stream of raw bytes.
- Binary: the fixed seeded binarisation of the test split that vaekit's evaluation uses (binarize=dynamic, seed 1):
  1-bit PNG, WebP lossless (0/255), JPEG XL lossless per file and tiled; gzip, bzip2, xz of the bits packed 8 per
  byte as one stream.
- vaekit: each trained run through `BitsBackCodec`, the 1000 images as one lossless .vqz file (one chain), for b in
  BUCKET_BITS (first `images_b` of them where b = 16 is slow): bytes per image = file size / count, rate in bits
  per image and per dimension, the initial bits, and beside them the mean -ELBO of the same images (continuous z,
  analytic KL, 16 draws) and the run's importance-sampled NLL (its final evaluation: K=1000 on the first 1000 test
  images). Every file decompressed and compared.
Stage `speed` (on an otherwise idle machine): images/s to compress and to decompress (uint8 in memory to bytes and
back) against the number of chains B, at b = 12, 2 threads, and PNG / WebP lossless one file per image in the same
run, with the load average.
The JSON is written after every measurement; a rerun skips what is there. Output: results/bitsback.json.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from vq_codec import _tiled, test_images, train_run

import vaekit
from vaekit.coding.bitsback import BitsBackCodec, initial_count, negative_elbo
from vaekit.data import load_data
from vaekit.io import atomic_write_json

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "bitsback"
OUT = ROOT / "results" / "bitsback.json"
MODELS = {  # name -> (preset, data kind, overrides)
    "vae-logistic": ("fashion-mnist-vae-logistic", "8-bit", []),
    "hvae-logistic": ("fashion-mnist-hvae-logistic", "8-bit", []),
    "vae-bernoulli": ("fashion-mnist-vae", "binary", ["train.eval_every=8000"]),  # the final evaluation only
}
BUCKET_BITS = (8, 12, 16)
CHAINS = (1, 4, 16, 64)
COUNT = 1000


def stage_train() -> None:
    for name, (preset, _, overrides) in MODELS.items():
        train_run(preset, name, ["train.num_threads=1", *overrides], runs=RUNS)


# -- the classical codecs ------------------------------------------------------------------------------------------

def _pillow(fmt: str, **options) -> Callable[[np.ndarray], bytes]:
    from PIL import Image

    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


def _decoded(fmt: str, data: bytes) -> np.ndarray:
    """A file of any of the formats back to uint8 (H, W), 0/255 for 1-bit images."""
    import imagecodecs
    from PIL import Image

    if fmt == "JXL":
        return imagecodecs.jpegxl_decode(data)
    if fmt == "JPEG-LS":
        return imagecodecs.jpegls_decode(data)
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def per_file_codecs(binary: bool) -> dict[str, Callable[[np.ndarray], bytes]]:
    """Lossless image codecs, uint8 (H, W) -> file (binary images as 0/255)."""
    import imagecodecs
    from PIL import Image

    def one_bit_png(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).convert("1").save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()

    codecs = {"PNG": one_bit_png if binary else _pillow("PNG", optimize=True),
              "WEBP": _pillow("WEBP", lossless=True, quality=100, method=6),
              "JXL": lambda image: imagecodecs.jpegxl_encode(image, lossless=True, effort=9)}
    if not binary:
        codecs["JPEG-LS"] = lambda image: imagecodecs.jpegls_encode(image)
    return codecs


def classical(images: np.ndarray, binary: bool) -> dict:
    """Bytes per image of each codec, one file per image and tiled into one picture, and of the stream codecs."""
    results = {}
    for fmt, encode in per_file_codecs(binary).items():
        files = [encode(image) for image in images]
        tiled = encode(_tiled(images))
        back = np.stack([_decoded(fmt, data) for data in files])
        assert np.array_equal(back, images), fmt  # lossless
        results[fmt] = {"file": sum(map(len, files)) / len(images), "tiled": len(tiled) / len(images)}
    raw = np.packbits(images > 0).tobytes() if binary else images.tobytes()  # one stream of the whole set
    for name, compress in (("gzip", lambda b: gzip.compress(b, 9)), ("bzip2", lambda b: bz2.compress(b, 9)),
                           ("xz", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        results[name] = {"stream": len(compress(raw)) / len(images)}
    results["best"] = min((value, f"{fmt} {kind}") for fmt, kinds in results.items() for kind, value in kinds.items())
    return results


def classical_speed(images: np.ndarray) -> dict:
    """images/s to encode and to decode one file per image, PNG and WebP lossless."""
    speeds = {}
    for fmt, encode in per_file_codecs(binary=False).items():
        if fmt not in ("PNG", "WEBP"):
            continue
        start = time.perf_counter()
        files = [encode(image) for image in images]
        middle = time.perf_counter()
        for data in files:
            _decoded(fmt, data)
        end = time.perf_counter()
        speeds[fmt] = {"compress_images_per_second": len(images) / (middle - start),
                       "decompress_images_per_second": len(images) / (end - middle)}
    return speeds


# -- vaekit ---------------------------------------------------------------------------------------------------------

def finished(run: Path) -> bool:
    """The run has its last step's checkpoint (written after its final evaluation)."""
    if not (run / "config.yaml").is_file():
        return False
    steps = vaekit.load_config(str(run / "config.yaml")).train.steps
    return (run / "checkpoints" / f"step-{steps}").is_dir()


def model_images(run: Path, count: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A run's model and its first `count` test images as the model sees them (binarised with the evaluation's
    fixed seed for a Bernoulli run), uint8 (N, 1, 28, 28)."""
    model = vaekit.load(run)
    x = load_data(model.run_config.data).test[:count]
    return model, (x.double() * 255).round().to(torch.uint8)


def final_nll(run: Path) -> dict:
    """The run's last test evaluation: NLL (nats), bits/dim, its K and number of images."""
    test = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"test"' in line][-1]
    return {key: test[key] for key in ("nll", "nll_stderr", "bits_per_dim", "importance_samples", "num_images",
                                       "step") if key in test}


def rate(model, pixels: torch.Tensor, bucket_bits: int) -> dict:
    """One chain over all images: bytes, rate, initial bits; decompressed and compared."""
    codec = BitsBackCodec(model, bucket_bits=bucket_bits, chains=1, threads=2)
    start = time.perf_counter()
    data = codec.compress(pixels)
    seconds = time.perf_counter() - start
    assert torch.equal(codec.decompress(data), pixels), "round trip"
    dims = math.prod(pixels.shape[1:])
    initial = 32 * initial_count(bucket_bits, sum(codec.group_dims))
    return {"images": len(pixels), "bytes_per_image": len(data) / len(pixels),
            "rate_bits_per_image": 8 * len(data) / len(pixels), "bits_per_dim": 8 * len(data) / len(pixels) / dims,
            "initial_bits_per_image": initial / len(pixels), "compress_seconds": seconds}


def speed(model, pixels: torch.Tensor, chains: int) -> dict:
    """images/s each way with B chains, b = 12, 2 threads; bytes per image with B chains' initial bits."""
    codec = BitsBackCodec(model, chains=chains, threads=2)
    start = time.perf_counter()
    data = codec.compress(pixels)
    middle = time.perf_counter()
    back = codec.decompress(data)
    end = time.perf_counter()
    assert torch.equal(back, pixels), "round trip"
    return {"chains": chains, "images": len(pixels), "compress_images_per_second": len(pixels) / (middle - start),
            "decompress_images_per_second": len(pixels) / (end - middle), "bytes_per_image": len(data) / len(pixels)}


def stage_rates() -> None:
    record = json.loads(OUT.read_text()) if OUT.is_file() else {}
    record |= {"images": COUNT, "threads": 2}
    torch.set_num_threads(2)
    if "classical_8bit" not in record:
        record["classical_8bit"] = classical(test_images(COUNT), binary=False)
        atomic_write_json(OUT, record)
    for name, (_, kind, _) in MODELS.items():
        run = RUNS / name
        if not finished(run):
            continue
        entry = record.setdefault("vaekit", {}).setdefault(name, {"data": kind})
        model, pixels = model_images(run, COUNT)
        if kind == "binary" and "classical_binary" not in record:
            record["classical_binary"] = classical(pixels[:, 0].numpy(), binary=True)
        if "negative_elbo_bits_per_image" not in entry:
            with torch.inference_mode():
                x = pixels.float() / 255
                elbo = torch.cat([negative_elbo(model, chunk) for chunk in x.split(100)])
            entry |= {"negative_elbo_bits_per_image": float(elbo.mean()) / math.log(2.0),
                      "negative_elbo_first_100": float(elbo[:100].mean()) / math.log(2.0)}
        entry["nll"] = final_nll(run)
        for bits in BUCKET_BITS:
            if f"b{bits}" not in entry:
                count = 100 if bits == 16 and name.startswith("hvae") else COUNT  # 2^16 buckets: slow
                entry[f"b{bits}"] = rate(model, pixels[:count], bits) | {"loadavg": os.getloadavg()}
                atomic_write_json(OUT, record)


def stage_speed() -> None:
    record = json.loads(OUT.read_text()) if OUT.is_file() else {}
    torch.set_num_threads(2)
    speeds = {"loadavg_start": os.getloadavg(), "classical": classical_speed(test_images(COUNT))}
    for name in MODELS:
        if finished(RUNS / name):
            model, pixels = model_images(RUNS / name, COUNT)
            count = COUNT if name.startswith("vae") else 100  # the hierarchical VAE codes ~25 images/s
            speeds[name] = [speed(model, pixels[:count], chains) for chains in CHAINS]
    record["speed"] = speeds | {"loadavg_end": os.getloadavg()}
    atomic_write_json(OUT, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "rates", "speed"])
    args = parser.parse_args()
    {"train": stage_train, "rates": stage_rates, "speed": stage_speed}[args.stage]()


if __name__ == "__main__":
    main()
