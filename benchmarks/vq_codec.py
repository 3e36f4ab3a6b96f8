"""VQ-VAE and its codec on Fashion-MNIST: the models every later stage measures, trained here.

    .venv/bin/python benchmarks/vq_codec.py train [--points NAME...] [--threads 1]  # VQ-VAEs, code priors (resumable)
    benchmarks/.venv-ref/bin/python benchmarks/vq_codec.py quantiser   # against pythae, vector-quantize-pytorch
    benchmarks/.venv-ref/bin/python benchmarks/vq_codec.py rd          # rate-distortion and codec speed
    benchmarks/.venv-ref/bin/python benchmarks/vq_codec.py speed       # codec speed against WebP and AVIF
    benchmarks/.venv-ref/bin/python benchmarks/vq_codec.py health      # codebook health against pythae
    .venv/bin/python benchmarks/vq_codec.py remedies                    # restarts and the rotation trick vs plain EMA
    benchmarks/.venv-ref/bin/python benchmarks/vq_codec.py heads        # the prior's key/value heads: rate and speed

Stage `train` trains, on the training split only, each operating point of `OPERATING_POINTS` (the
`fashion-mnist-vqvae` preset with the listed overrides) and then a `fashion-mnist-code-prior` run
over its codes. Run directories go to benchmarks/results/partial/vq/; a stage that finds a finished
run reuses it and resumes an unfinished one from its newest checkpoint; a point in `CONTINUES` starts as a
copy of another point's finished run and resumes it for its own steps. Progress and the load
average go to benchmarks/results/vq_codec_train.json after every run.

Stage `quantiser` (reference environment): one training step of each quantiser alone on encoder
vectors (256, 49, 64) with K = 512 and 8192: the forward pass (nearest codes, straight-through
output, commitment loss), the backward pass to the vectors, and the EMA codebook update (vaekit's in
its post-step `update_buffers`; pythae's QuantizerEMA and vector-quantize-pytorch's VectorQuantize
inside their forward). Same codebook and vectors in all three, which must choose the same codes;
k-means, dead-code restarts and the rotation trick off; rounds interleaved, medians reported, with
the load average. Output: benchmarks/results/vq_quantiser_speed.json.

Stage `rd` (reference environment): the first 1000 Fashion-MNIST test images (uint8), PSNR =
10 log10(255^2 / MSE) over all pixels of the set, decoded images as uint8. vaekit: each trained
VQ-VAE and prior through `VQCodec` at each rate weight of `RATE_WEIGHTS` (the encoder's
entropy-constrained choice of codes; 0: the nearest codes), the 1000 images as one .vqz stream and
each image as its own .vqz file. The others at every quality 0-100 in steps of 5: Pillow's JPEG (optimize), WebP
(method 6), AVIF (speed 0, qualities 0-50), imagecodecs' JPEG XL (effort 9, distances 0.5-25); one file per
image (headers included), and as a stream: the smaller of the files with their container headers
stripped (JPEG: the entropy-coded segment; WebP: the RIFF and chunk headers; AVIF: the mdat
payload; JPEG XL: a bare codestream) and all 1000 images tiled into one picture, each point
compared with the fewer bytes of the two at its PSNR. Comparison inside the PSNR interval both
curves cover (log bytes interpolated linearly in PSNR) and the Bjontegaard delta rate (cubic fits
of log bytes against PSNR). Speed: images/s to compress and decompress
uint8 arrays in memory, vaekit streams against WebP and AVIF files, same run. The prior's test
cross-entropy beside the payload. Output: benchmarks/results/vq_rate_distortion.json.

Stage `health` (reference environment): pythae's VQVAE (its MNIST ResNet encoder and decoder, EMA,
decay 0.99, commitment 0.25, Adam lr 1e-3, batch 64) on the first 10,000 Fashion-MNIST training
images for 3 epochs, K = 512 and 4096, its training seconds measured; then vaekit's
`fashion-mnist-vqvae` on the same images with the same K for as many steps as fit in the same
seconds (a 60-step probe measures its rate between steps 20 and 60, after the k-means
initialisation), with pythae's batch of 64 and dead-code restarts after 20 unused steps
(`HEALTH_SETTINGS`: the preset's 100 would hardly act in the ~350 steps that fit); a run that
takes over 2% longer than pythae's is trained again for the steps its log shows within that time.
For both, on the whole test split in eval mode:
codes in use (at least one assignment), perplexity / K, MSE per pixel and PSNR; codes dead at the
end (no assignment on the training images under the final weights); for vaekit also the
codes without an assignment in the training batches of the last epoch (its `last_used` buffer).
Output: benchmarks/results/vq_codebook_health.json, rewritten after every run.

Stage `speed` (reference environment): the codec's speed on each operating point's architecture, apart from
its quality: stand-in runs of the `fashion-mnist-vqvae` preset (with the point's overrides) and of its
`fashion-mnist-code-prior`, trained for `STAND_IN_STEPS` steps each in benchmarks/results/partial/vq-speed/
(the work per image does not depend on the weights). The first 1000 test images as one stream, each
direction timed `SPEED_REPEATS` times (best kept, after a warm-up call), with the encoder, the
prior's walk and the decoder timed alone, against WebP (quality 10) and AVIF (quality 30) one file
per image, same run. Output: benchmarks/results/vq_codec_speed.json.

Stage `remedies`: the `fashion-mnist-vqvae` preset for 2000 steps on the whole training split,
plain EMA (no restarts, straight-through), with the rotation trick instead of the straight-through
gradient (Fifty et al. 2025), with dead-code restarts (the preset), and with both; codebook health and
test PSNR as in `health`. Fixed steps: the numbers do not depend on the machine's pace, so `--threads 1`
runs it beside other work. Resumable (a checkpoint every 250 steps). Output:
benchmarks/results/vq_remedies.json, rewritten after every run.

Stage `heads`: the code prior's key/value heads (`model.kv_heads`: 4 = one per query head, the
multi-head attention of the preset; 2 grouped; 1 multi-query) on the `grid7-k512` operating point
of stage `train` (trained here if missing): each prior is the `fashion-mnist-code-prior` preset but
for its key/value heads, trained on the same VQ-VAE's codes for the preset's steps; its test
cross-entropy (bits per grid, first 1000 test images) against the codec's speed with its weights
(as stage `speed` times it). `--kv-heads 1 --threads 1 --no-speed` trains one beside other work
(fixed steps); the timing needs an idle machine. Output: benchmarks/results/vq_prior_heads.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import vaekit
from vaekit.batch import Batch
from vaekit.config import config_to_dict, load_config
from vaekit.engine.runs import find_checkpoint
from vaekit.errors import VaekitError
from vaekit.io import atomic_write_json

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "results" / "partial" / "vq"
FASHION = Path("/usr/share/datasets/fashion-mnist")  # apt-get install -y dataset-fashion-mnist
OPERATING_POINTS = {  # name -> overrides of the fashion-mnist-vqvae preset
    "grid7-k512": [],
    "grid14-k512": ["model.downsamples=1"],
    "grid7-k2048": ["model.num_codes=2048"],
    # the grid7-k512 VQ-VAE trained 3x as long (it continues that run: see CONTINUES)
    "grid7-k512-18k": ["train.steps=18000"],
    # entropy-constrained choice of codes in training (model.rate_weight; the unigram rates of the EMA counts)
    "grid7-k512-rate0.5": ["model.rate_weight=0.5"],
}


# training settings that do not change the weights a run ends with (its pace and how often it is saved)
SCHEDULING_KEYS = frozenset({"num_threads", "checkpoint_every", "keep_checkpoints"})
# checkpoints every 500 steps: an interrupted 14x14 prior (~2.8 s a step at one thread) loses at most ~25 minutes
CHECKPOINTS = ["train.checkpoint_every=500"]


# point -> the point whose finished VQ-VAE run it continues for more steps: the preset's learning rate is constant and
# a resume is bit-identical, so this is the longer run without paying its first steps twice
CONTINUES = {"grid7-k512-18k": "grid7-k512"}


def _continue_run(source: Path, target: Path) -> None:
    """Start `target` as a copy of the run `source`, to be resumed with its own settings (its config.yaml is written
    again at the resume); copied beside it and renamed, so an interrupted copy is never taken for a run."""
    partial = target.with_name(f"{target.name}.copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns("tensorboard"))
    (partial / "config.yaml").unlink()
    partial.rename(target)


def _settings_differ(run_dir: Path, wanted: vaekit.RunConfig) -> list[str]:
    """The model and training settings `wanted` names (not None; scheduling aside) that a stored run was not
    trained with, as "section.key"."""
    saved = config_to_dict(load_config(run_dir / "config.yaml"))
    expected = config_to_dict(wanted)
    return [f"{section}.{key}" for section in ("model", "train") for key, value in expected[section].items()
            if value is not None and key not in SCHEDULING_KEYS and saved[section].get(key) != value]


def train_run(preset: str, name: str, overrides: list[str], runs: Path = RUNS) -> Path:
    """Train (or finish, or reuse) one run under `runs`; its directory. A stored run trained with other settings
    (an older preset) is an error, never silently reused."""
    config = load_config(preset, [f"out_dir={runs}", f"name={name}", *overrides])
    run_dir = runs / name
    if (run_dir / "config.yaml").is_file() and (stale := _settings_differ(run_dir, config)):
        raise SystemExit(f"{run_dir} was trained with other settings ({', '.join(stale)}) than {preset} with "
                         f"{overrides}; remove it to train it again")
    finished = run_dir / "checkpoints" / f"step-{config.train.steps}"
    if finished.is_dir():
        return run_dir
    try:
        find_checkpoint(run_dir)
        resume = True
    except VaekitError:
        resume = False
    return vaekit.train(config, resume=resume, force=not resume and run_dir.is_dir(), quiet=True)


def stage_train(out: Path, points: tuple[str, ...] = tuple(OPERATING_POINTS), threads: int | None = None) -> None:
    """The operating points' VQ-VAEs, each followed by its code prior (threads: torch threads of each run; 1 runs
    two points side by side without oversubscribing 2 cores, the steps are fixed)."""
    pace = [*CHECKPOINTS, *([f"train.num_threads={threads}"] if threads else [])]
    for point, overrides in ((name, OPERATING_POINTS[name]) for name in points):
        for preset, name, extra in (("fashion-mnist-vqvae", point, [*overrides, *pace]),
                                    ("fashion-mnist-code-prior", f"{point}-prior", [f"parent={RUNS / point}", *pace])):
            if name in CONTINUES and not (RUNS / name).exists():
                _continue_run(RUNS / CONTINUES[name], RUNS / name)
            start, load, seconds_before = time.perf_counter(), os.getloadavg(), _train_seconds(RUNS / name)
            run_dir = train_run(preset, name, extra)
            metrics = _metrics(run_dir)
            test = [m for m in metrics if m.get("split") == "test"]
            record = json.loads(out.read_text()) if out.is_file() else {}  # read again: points train side by side
            if _train_seconds(run_dir) > seconds_before:  # this call trained; a run found finished keeps its record
                record[name] = {"preset": preset, "overrides": extra, "wall_seconds_this_call": time.perf_counter() - start,
                                "loadavg_start": load, "loadavg_end": os.getloadavg()}
            elif name not in record:
                record[name] = {"preset": preset, "overrides": extra, "found_finished": True}
            record[name] |= {"train_seconds": _train_seconds(run_dir), "last_test": test[-1] if test else None,
                             **({"continues": CONTINUES[name]} if name in CONTINUES else {})}
            atomic_write_json(out, record)


def _metrics(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl records (none before its first log)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _train_seconds(run_dir: Path) -> float:
    """The engine's training seconds of a run so far (0 before any)."""
    return max((m.get("train_seconds", 0.0) for m in _metrics(run_dir)), default=0.0)


def _quantisers(codebook: torch.Tensor) -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (module, step function (vectors (B, P, D) -> indices (B*P,))) sharing one codebook (K, D)."""
    from pythae.models.vq_vae.vq_vae_config import VQVAEConfig as PythaeConfig
    from pythae.models.vq_vae.vq_vae_utils import QuantizerEMA
    from vector_quantize_pytorch import VectorQuantize

    from vaekit.quantize import VectorQuantizer

    num_codes, dim = codebook.shape
    ours = VectorQuantizer(num_codes, dim, ema=True, decay=0.99, restart_after=0)
    ours._set_codebook(codebook)
    ours.initialised.fill_(True)

    def ours_step(vectors: torch.Tensor) -> torch.Tensor:
        out = ours(vectors.reshape(-1, dim))
        (out.quantised.sum() + 0.25 * out.commitment_loss.sum()).backward()
        ours.update_buffers(vectors.detach(), Batch.of(vectors.detach()), step=1, indices=out.indices)
        return out.indices

    pythae_config = PythaeConfig(input_dim=(1, 28, 28), latent_dim=dim, num_embeddings=num_codes, decay=0.99,
                                 commitment_loss_factor=0.25)
    pythae_config.embedding_dim = dim  # set by pythae's VQVAE model before it builds its quantiser
    pythae = QuantizerEMA(pythae_config)
    pythae.embeddings.copy_(codebook)

    def pythae_step(vectors: torch.Tensor) -> torch.Tensor:
        grid = vectors.view(vectors.shape[0], 7, 7, dim)  # pythae quantises (B, H, W, D)
        out = pythae(grid)
        (out.quantized_vector.sum() + out.loss).backward()
        return out.quantized_indices.reshape(-1)

    lucidrains = VectorQuantize(dim=dim, codebook_size=num_codes, decay=0.99, commitment_weight=0.25,
                                kmeans_init=False, threshold_ema_dead_code=0, rotation_trick=False)
    lucidrains._codebook.embed.data.copy_(codebook[None])
    lucidrains._codebook.embed_avg.data.copy_(codebook[None])

    def lucidrains_step(vectors: torch.Tensor) -> torch.Tensor:
        quantised, indices, commitment = lucidrains(vectors)
        (quantised.sum() + commitment.sum()).backward()
        return indices.reshape(-1)

    return {"vaekit": (ours, ours_step), "pythae": (pythae, pythae_step),
            "vector_quantize_pytorch": (lucidrains, lucidrains_step)}


def stage_quantiser(out: Path, rounds: int = 7) -> None:
    """Seconds per training step of each quantiser (see the module docstring)."""
    record = {"shape": [256, 49, 64], "threads": torch.get_num_threads(), "torch": torch.__version__, "results": {}}
    generator = torch.Generator().manual_seed(0)
    for num_codes in (512, 8192):
        vectors = torch.randn(256, 49, 64, generator=generator)
        codebook = vectors.reshape(-1, 64)[torch.randperm(256 * 49, generator=generator)[:num_codes]].clone()
        steps = _quantisers(codebook)
        chosen = {}
        for name, (module, step) in steps.items():
            module.train()
            chosen[name] = step(vectors.clone().requires_grad_())
        agreement = {name: float((chosen[name] == chosen["vaekit"]).float().mean()) for name in chosen}
        seconds: dict[str, list[float]] = {name: [] for name in steps}
        loads = [os.getloadavg()]
        for _ in range(rounds):
            for name, (module, step) in steps.items():
                inputs = vectors.clone().requires_grad_()
                start = time.perf_counter()
                step(inputs)
                seconds[name].append(time.perf_counter() - start)
            loads.append(os.getloadavg())
        median = {name: sorted(times)[len(times) // 2] for name, times in seconds.items()}
        record["results"][str(num_codes)] = {
            "seconds_median": median, "seconds_all": seconds, "same_codes_as_vaekit": agreement,
            "speedup_vs": {name: median[name] / median["vaekit"] for name in median if name != "vaekit"},
            "loadavg": loads}
        atomic_write_json(out, record)


def test_images(count: int = 1000) -> np.ndarray:
    """The first `count` Fashion-MNIST test images, uint8 (N, 28, 28)."""
    return (fashion_split("t10k", count)[:, 0] * 255).round().to(torch.uint8).numpy()


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """10 log10(255^2 / MSE) over all pixels of the set."""
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def _stripped(fmt: str, data: bytes) -> int:
    """Bytes of a file without its container: what a stream of many images would need per image."""
    if fmt == "JPEG":  # the entropy-coded segment: after the start-of-scan header, before the end-of-image marker
        sos = data.index(b"\xff\xda")
        return len(data) - (sos + 2 + int.from_bytes(data[sos + 2: sos + 4], "big")) - 2
    if fmt == "WEBP":  # RIFF header (12 bytes) and the VP8 chunk header (8)
        return len(data) - 20
    if fmt == "AVIF":  # the payload of the mdat box
        at = data.index(b"mdat")
        return int.from_bytes(data[at - 4: at], "big") - 8
    return len(data)  # JPEG XL: imagecodecs writes a bare codestream


def _classical(fmt: str, quality: float) -> tuple:
    """(encode uint8 (H, W) -> bytes, decode bytes -> uint8 (H, W)) of one codec at one setting."""
    import imagecodecs
    from PIL import Image

    if fmt == "JXL":
        return (lambda image: imagecodecs.jpegxl_encode(image, effort=9, distance=quality),
                lambda data: imagecodecs.jpegxl_decode(data))
    options = {"JPEG": {"quality": int(quality), "optimize": True}, "WEBP": {"quality": int(quality), "method": 6},
               "AVIF": {"quality": int(quality), "speed": 0}}[fmt]

    def encode(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L"))

    return encode, decode


def _tiled(images: np.ndarray, columns: int = 40) -> np.ndarray:
    """(N, H, W) -> one picture of ceil(N / columns) x columns tiles (the last row padded with black)."""
    count, height, width = images.shape
    rows = -(-count // columns)
    padded = np.zeros((rows * columns, height, width), np.uint8)
    padded[:count] = images
    return padded.reshape(rows, columns, height, width).transpose(0, 2, 1, 3).reshape(rows * height, columns * width)


def classical_point(fmt: str, quality: float, images: np.ndarray) -> dict:
    """One codec at one setting: per-file bytes and PSNR; as a stream, stripped files and one tiled picture."""
    encode, decode = _classical(fmt, quality)
    files = [encode(image) for image in images]
    decoded = np.stack([decode(data) for data in files])
    tiled = encode(_tiled(images))
    tiled_decoded = decode(tiled)
    height, width = images.shape[1:]
    untiled = tiled_decoded.reshape(-1, height, 40, width).transpose(0, 2, 1, 3).reshape(-1, height, width)
    stripped = sum(_stripped(fmt, data) for data in files) / len(images)
    return {"quality": quality, "file": {"bytes": sum(map(len, files)) / len(images), "psnr": psnr(images, decoded)},
            "stream": {"stripped": {"bytes": stripped, "psnr": psnr(images, decoded)},
                       "tiled": {"bytes": len(tiled) / len(images), "psnr": psnr(images, untiled[: len(images)])}}}


# AVIF only up to quality 50 (~34 dB): ~2 minutes per setting at speed 0, and far above every vaekit point's PSNR
QUALITIES = {"JPEG": range(0, 101, 5), "WEBP": range(0, 101, 5), "AVIF": range(0, 51, 5),
             "JXL": (25.0, 15.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5)}


# lambda of the encoder's entropy-constrained choice of codes (VQCodec's rate_weight), in units of the mean squared
# distance from the encoder vectors of the first 1000 training images to their nearest codes, per nat: one VQ-VAE and
# prior give an operating point per value
RATE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def mean_nearest_distance(codec) -> float:
    """Mean of min_k ||z_e - e_k||^2 over the encoder vectors of the first 1000 training images."""
    with torch.inference_mode():
        vectors = codec.encoder_vectors(fashion_split("train", 1000))
        return torch.cdist(vectors.double(), codec.vq.quantizer.codebook.double()).pow(2).amin(-1).mean().item()


def vaekit_points(prior_run: Path, images: np.ndarray) -> list[dict]:
    """One operating point per rate weight: stream and per-file bytes, PSNR, the prior's cross-entropy of the codes
    coded, speed."""
    from vaekit.coding.container import unpack
    from vaekit.coding.vq_codec import VQCodec

    model = vaekit.load(prior_run)
    scale = mean_nearest_distance(VQCodec(model))
    pixels = torch.from_numpy(images).float().div(255)[:, None]
    points = []
    for factor in RATE_WEIGHTS:
        codec = VQCodec(model, rate_weight=factor * scale)
        codec.decompress(codec.compress(pixels[:8]))  # first calls (allocations, kernels) outside the timing
        start = time.perf_counter()
        stream = codec.compress(pixels)
        compress_seconds = time.perf_counter() - start
        start = time.perf_counter()
        decoded = codec.decompress(stream)[:, 0].numpy()
        decompress_seconds = time.perf_counter() - start
        files = [codec.compress(pixels[i: i + 1]) for i in range(len(images))]
        with torch.inference_mode():
            codes = codec.decode_codes(stream)[1]  # the codes the stream holds (the nearest ones at weight 0)
            cross_entropy = -codec.model.prior.log_prob(codes).sum().item() / np.log(2)  # bits for the whole set
        points.append({
            "run": str(prior_run.relative_to(ROOT)), "grid": list(codec.grid),
            "num_codes": codec.model.config.codes.num_symbols, "rate_weight_factor": factor,
            "rate_weight": factor * scale, "psnr": psnr(images, decoded),
            "stream": {"bytes": len(stream) / len(images), "psnr": psnr(images, decoded)},
            "file": {"bytes": sum(map(len, files)) / len(images), "psnr": psnr(images, decoded)},
            "prior_cross_entropy_bytes_per_image": cross_entropy / 8 / len(images),
            "stream_total_bytes": len(stream), "stream_header_bytes": len(stream) - len(unpack(stream).payload),
            "file_header_bytes": len(files[0]) - len(unpack(files[0]).payload),
            "compress_images_per_second": len(images) / compress_seconds,
            "decompress_images_per_second": len(images) / decompress_seconds})
    return points


def compare(ours: list[dict], curves: dict[str, list[dict]]) -> dict:
    """Each of our points against their curves at the same PSNR (inside a curve's range; the fewest bytes of
    the curves that reach it), and the BD-rate against each curve. Points: {"bytes", "psnr"}."""
    table = {}
    for name, theirs in curves.items():
        curve = sorted((p["psnr"], np.log(p["bytes"])) for p in theirs if np.isfinite(p["psnr"]))
        their_psnr = np.array([c[0] for c in curve])
        monotone = np.maximum.accumulate(np.array([c[1] for c in curve]))  # bytes never fall as PSNR rises
        table[name] = (their_psnr, monotone)
    points = []
    for point in ours:
        at = {name: float(np.exp(np.interp(point["psnr"], x, y))) for name, (x, y) in table.items()
              if x[0] <= point["psnr"] <= x[-1]}
        best = min(at.values()) if at else None
        points.append({"psnr": point["psnr"], "bytes": point["bytes"], "their_bytes_at_psnr": at,
                       "ratio_to_fewest": point["bytes"] / best if best else None})
    return {"points": points, "bd_rate_percent": {
        name: bd_rate([(p["psnr"], p["bytes"]) for p in ours], list(zip(x, np.exp(y), strict=True)))
        for name, (x, y) in table.items()}}


def bd_rate(ours: list[tuple[float, float]], theirs: list[tuple[float, float]]) -> float | None:
    """Bjontegaard delta rate in percent (negative: fewer bytes than theirs) over the common PSNR interval,
    from cubic fits of log bytes against PSNR (a straight line with fewer than 4 points)."""
    if len(ours) < 2:
        return None
    ours_psnr, ours_log = np.array([p for p, _ in ours]), np.log([b for _, b in ours])
    their_psnr, their_log = np.array([p for p, _ in theirs]), np.log([b for _, b in theirs])
    low, high = max(ours_psnr.min(), their_psnr.min()), min(ours_psnr.max(), their_psnr.max())
    if low >= high:
        return None
    fits = [np.polyint(np.polyfit(x, y, min(3, len(x) - 1))) for x, y in ((ours_psnr, ours_log),
                                                                          (their_psnr, their_log))]
    mean_ours, mean_theirs = ((np.polyval(f, high) - np.polyval(f, low)) / (high - low) for f in fits)
    return float((np.exp(mean_ours - mean_theirs) - 1) * 100)


def classical_speed(fmt: str, quality: float, images: np.ndarray) -> dict:
    """images/s to encode and to decode one file per image."""
    encode, decode = _classical(fmt, quality)
    start = time.perf_counter()
    files = [encode(image) for image in images]
    middle = time.perf_counter()
    for data in files:
        decode(data)
    end = time.perf_counter()
    return {"format": fmt, "quality": quality, "compress_images_per_second": len(images) / (middle - start),
            "decompress_images_per_second": len(images) / (end - middle)}


def stage_rd(out: Path, formats: tuple[str, ...] = tuple(QUALITIES), curves_only: bool = False,
             operating_points: tuple[str, ...] = tuple(OPERATING_POINTS)) -> None:
    """Rate-distortion of every trained operating point against the classical codecs (see the docstring);
    codecs already in the JSON are kept (AVIF at speed 0 takes ~2 minutes per quality setting). curves_only: the
    classical curves missing from the JSON and the comparisons of the points already measured, nothing timed
    (beside other work)."""
    images = test_images()
    record = json.loads(out.read_text()) if out.is_file() else {}
    for fmt, qualities in ((f, QUALITIES[f]) for f in formats):
        if fmt not in record.get("classical", {}):
            record.setdefault("classical", {})[fmt] = [classical_point(fmt, q, images) for q in qualities]
            atomic_write_json(out, record)
    if not curves_only:
        record |= {"images": len(images), "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}
        measured = {str((RUNS / f"{name}-prior").relative_to(ROOT)) for name in operating_points}
        record["vaekit"] = [point for point in record.get("vaekit", []) if point["run"] not in measured] + [
            point for name in operating_points if (RUNS / f"{name}-prior" / "checkpoints").is_dir()
            for point in vaekit_points(RUNS / f"{name}-prior", images)]  # the other points' earlier measurements kept
        record["speed"] = [classical_speed(fmt, quality, images) for fmt, quality in (("WEBP", 10), ("AVIF", 30))
                           if fmt in formats]
        record["loadavg_end"] = os.getloadavg()
    runs = {point["run"]: [p for p in record.get("vaekit", []) if p["run"] == point["run"]]
            for point in record.get("vaekit", [])}  # each model's points apart: one curve (and BD-rate) per model
    record["comparison"] = {fmt: {run: {
        "file": compare([p["file"] for p in ours], {"file": [p["file"] for p in theirs]}),
        "stream": compare([p["stream"] for p in ours],
                          {kind: [p["stream"][kind] for p in theirs] for kind in ("stripped", "tiled")})}
        for run, ours in runs.items()} for fmt, theirs in record["classical"].items()}
    atomic_write_json(out, record)


STAND_IN_STEPS = 20
SPEED_REPEATS = 3


def _best_seconds(work, repeats: int = SPEED_REPEATS) -> float:
    """The fastest of `repeats` timed calls of `work`, after one untimed call (allocations, kernels)."""
    work()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def codec_speed(prior_run: Path, images: np.ndarray, precision: str = "auto") -> dict:
    """images/s of a codec each way on `images` as one stream, and of its parts alone (`VQCodec(precision=)`)."""
    from vaekit.coding.vq_codec import VQCodec

    codec = VQCodec(vaekit.load(prior_run), precision=precision)
    pixels = torch.from_numpy(images).float().div(255)[:, None]
    stream = codec.compress(pixels)
    with torch.inference_mode():
        codes = codec.decode_codes(stream)[1].flatten(1)  # (N, P)
        parts = {"encoder": _best_seconds(lambda: codec.encoder_vectors(pixels)),
                 "prior_walk": _best_seconds(lambda: codec._walk(len(codes), lambda i, _: codes[:, i].numpy())),
                 "decoder": _best_seconds(lambda: codec.decoder_images(codes.view(-1, *codec.grid)))}
    count = len(images)
    return {"grid": list(codec.grid), "num_codes": codec.model.config.codes.num_symbols, "batch": codec.batch,
            "threads": codec.threads, "bytes_per_image": len(stream) / count,
            "compress_images_per_second": count / _best_seconds(lambda: codec.compress(pixels)),
            "decompress_images_per_second": count / _best_seconds(lambda: codec.decompress(stream)),
            "alone_images_per_second": {name: count / seconds for name, seconds in parts.items()}}


def stage_speed(out: Path) -> None:
    """The codec's speed on every operating point's architecture against WebP and AVIF (see the docstring)."""
    images = test_images()
    record = {"images": len(images), "threads": torch.get_num_threads(), "stand_in_steps": STAND_IN_STEPS,
              "loadavg_start": os.getloadavg(), "vaekit": {}}
    runs = ROOT / "results" / "partial" / "vq-speed"
    schedule = [f"train.steps={STAND_IN_STEPS}", f"train.eval_every={STAND_IN_STEPS}",
                f"train.checkpoint_every={STAND_IN_STEPS}", "eval.num_images=100"]
    # a point that changes only training settings (grid7-k512-18k) codes with its base point's networks: not timed twice
    architectures = {point: overrides for point, overrides in OPERATING_POINTS.items()
                     if not overrides or not all(key.startswith("train.") for key in overrides)}
    for point, overrides in architectures.items():
        train_run("fashion-mnist-vqvae", point, [*overrides, *schedule], runs)
        prior_run = train_run("fashion-mnist-code-prior", f"{point}-prior", [f"parent={runs / point}", *schedule], runs)
        record["vaekit"][point] = codec_speed(prior_run, images)
        atomic_write_json(out, record)
    record["classical"] = [classical_speed(fmt, quality, images) for fmt, quality in (("WEBP", 10), ("AVIF", 30))]
    record["loadavg_end"] = os.getloadavg()
    atomic_write_json(out, record)


def fashion_split(name: str, count: int | None = None) -> torch.Tensor:
    """Fashion-MNIST images (N, 1, 28, 28) in [0, 1]: split "train" or "t10k"."""
    from vaekit.data import read_idx

    pixels = np.asarray(read_idx(FASHION / f"{name}-images-idx3-ubyte.gz", magic=2051))[:count]
    return torch.from_numpy(pixels.copy()).float().div(255)[:, None]


def _health(indices: torch.Tensor, train_indices: torch.Tensor, num_codes: int, mse: float) -> dict:
    """Codebook health from test-split and training-set code indices, and the test reconstruction error."""
    from vaekit.quantize import perplexity

    counts = torch.bincount(indices.flatten(), minlength=num_codes).float()
    train_counts = torch.bincount(train_indices.flatten(), minlength=num_codes)
    return {"codes_in_use": float((counts > 0).float().mean()), "perplexity": float(perplexity(counts)),
            "perplexity_over_k": float(perplexity(counts)) / num_codes,
            "dead_on_training_images": float((train_counts == 0).float().mean()),
            "test_mse_per_pixel": mse, "test_psnr": float(10 * np.log10(1.0 / mse))}


def pythae_health(num_codes: int, train: torch.Tensor, test: torch.Tensor) -> dict:
    """pythae's VQVAE trained 3 epochs; its seconds and codebook health."""
    from pythae.models import VQVAE, VQVAEConfig
    from pythae.models.nn.benchmarks.mnist import (
        Decoder_ResNet_VQVAE_MNIST,
        Encoder_ResNet_VQVAE_MNIST,
    )

    torch.manual_seed(0)
    config = VQVAEConfig(input_dim=(1, 28, 28), latent_dim=16, num_embeddings=num_codes, use_ema=True, decay=0.99,
                         commitment_loss_factor=0.25)
    model = VQVAE(config, encoder=Encoder_ResNet_VQVAE_MNIST(config), decoder=Decoder_ResNet_VQVAE_MNIST(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    for _ in range(3):  # epochs, as pythae's BaseTrainer steps: forward, .loss, zero_grad, backward, step
        for rows in torch.randperm(len(train)).split(64):
            loss = model({"data": train[rows]}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()

    def indices_and_mse(images: torch.Tensor) -> tuple[torch.Tensor, float]:
        found, squared = [], 0.0
        with torch.inference_mode():
            for chunk in images.split(500):
                out = model({"data": chunk})
                found.append(out.quantized_indices.flatten())
                squared += float((out.recon_x - chunk).pow(2).sum())
        return torch.cat(found), squared / images.numel()

    test_indices, mse = indices_and_mse(test)
    return {"train_seconds": seconds, "grid": [4, 4]} | _health(test_indices, indices_and_mse(train)[0], num_codes, mse)


# pythae's batch of 64; ~350 steps fit, so codes unused for 20 steps restart (preset: 100). Chosen on training images
# 50,000-52,000 (not the 10,000 trained on, no test image) at K=512 against batch 64 with restarts after 100 steps
# (19.9 dB, 90% of codes in use there) and batch 128 with restarts after 30 (17.8 dB, 93%): 18.7 dB, 99%.
HEALTH_SETTINGS = ["train.batch_size=64", "model.restart_after=20"]
HEALTH_PROBE = (20, 60)  # steps per second between these steps of a probe run (after k-means, with restarts)


def _train_seconds_by_step(run_dir: Path) -> dict[int, float]:
    """The engine's train_seconds at each logged training step of a run."""
    return {m["step"]: m["train_seconds"] for m in _metrics(run_dir) if m["split"] == "train"}


def vaekit_health(num_codes: int, seconds: float) -> dict:
    """vaekit's preset on the same images with the same K, trained for about `seconds`; its codebook health.

    Steps from a probe's pace; a run that takes more than 2% longer is trained again for the steps its own log
    shows within `seconds` (a constant learning rate: the shorter run follows the same path)."""
    overrides = [f"out_dir={RUNS / 'health'}", "data.max_train=10000", f"model.num_codes={num_codes}",
                 "train.eval_every=100000", "train.checkpoint_every=100000", "train.log_every=10", *HEALTH_SETTINGS]
    probe = vaekit.train("fashion-mnist-vqvae", overrides=[
        *overrides, f"name=probe-{num_codes}", f"train.steps={HEALTH_PROBE[1]}"], force=True, quiet=True)
    elapsed = _train_seconds_by_step(probe)
    rate = (HEALTH_PROBE[1] - HEALTH_PROBE[0]) / (elapsed[HEALTH_PROBE[1]] - elapsed[HEALTH_PROBE[0]])
    steps = max(1, int((seconds - elapsed[HEALTH_PROBE[0]]) * rate) + HEALTH_PROBE[0])
    for _ in range(3):
        run_dir = vaekit.train("fashion-mnist-vqvae", overrides=[
            *overrides, f"name=k{num_codes}", f"train.steps={steps}", f"train.checkpoint_every={steps}"],
            force=True, quiet=True)
        elapsed = _train_seconds_by_step(run_dir)
        if max(elapsed.values()) <= 1.02 * seconds:
            break
        steps = max(step for step, spent in elapsed.items() if spent <= seconds)
    model = vaekit.load(run_dir).eval()
    last_epoch_start = steps - int(np.ceil(10000 / model.run_config.train.batch_size))
    return {"steps": steps, "train_seconds": max(elapsed.values()), "grid": list(model.grid),
            "dead_in_last_epoch_batches": float((model.quantizer.last_used < last_epoch_start).float().mean())
            } | run_health(model, fashion_split("train", 10000))


@torch.inference_mode()
def run_health(model, train: torch.Tensor) -> dict:
    """`_health` of a trained vaekit VQ-VAE: its codes of the test split and of `train`, its test MSE."""
    test = fashion_split("t10k")
    test_codes = torch.cat([model.latent_codes(chunk) for chunk in test.split(500)])
    train_codes = torch.cat([model.latent_codes(chunk) for chunk in train.split(500)])
    mse = sum(float((model.reconstruct(chunk) - chunk).pow(2).sum()) for chunk in test.split(500)) / test.numel()
    return _health(test_codes, train_codes, model.config.num_codes, mse)


def stage_health(out: Path) -> None:
    """pythae's VQVAE against vaekit's at K = 512 and 4096 in the same training time (see the docstring)."""
    record = json.loads(out.read_text()) if out.is_file() else {}
    train, test = fashion_split("train", 10000), fashion_split("t10k")
    for num_codes in (512, 4096):
        key = str(num_codes)
        entry = record.setdefault(key, {})
        if "pythae" not in entry:
            entry["pythae"] = pythae_health(num_codes, train, test) | {"loadavg": os.getloadavg()}
            atomic_write_json(out, record)
        if "vaekit" not in entry:
            entry["vaekit"] = vaekit_health(num_codes, entry["pythae"]["train_seconds"]) | {
                "settings": HEALTH_SETTINGS, "loadavg": os.getloadavg()}
            atomic_write_json(out, record)


REMEDIES = {"plain EMA": ["model.restart_after=0"],  # the two the comparison needs first
            "rotation trick": ["model.restart_after=0", "model.gradient=rotation"],
            "restarts (preset)": [], "restarts + rotation trick": ["model.gradient=rotation"]}


def stage_remedies(out: Path, steps: int = 2000, threads: int | None = None) -> None:
    """Plain EMA against the rotation trick, restarts and both (see the module docstring); resumable."""
    record = json.loads(out.read_text()) if out.is_file() else {}
    train = fashion_split("train")
    for name, overrides in REMEDIES.items():
        if name in record:
            continue
        schedule = [f"train.steps={steps}", f"train.eval_every={steps}", "train.checkpoint_every=250",
                    *([f"train.num_threads={threads}"] if threads else [])]
        run_dir = train_run("fashion-mnist-vqvae", name.replace(" ", "-").replace("(", "").replace(")", ""),
                            [*schedule, *overrides], RUNS / "remedies")
        record[name] = {"overrides": overrides, "steps": steps, "loadavg": os.getloadavg()} | run_health(
            vaekit.load(run_dir).eval(), train)
        atomic_write_json(out, record)


PRIOR_KV_HEADS = (4, 2, 1)  # the preset's 4 query heads: one key/value head each, one per pair, one for all


def stage_heads(out: Path, kv_heads: tuple[int, ...], threads: int | None, speed: bool) -> None:
    """Rate and codec speed of the grid7-k512 point's prior at each number of key/value heads (see the docstring)."""
    point = "grid7-k512"
    train_run("fashion-mnist-vqvae", point, OPERATING_POINTS[point])
    images = test_images()
    for kv in kv_heads:
        overrides = [f"parent={RUNS / point}", f"model.kv_heads={kv}",
                     *([f"train.num_threads={threads}"] if threads else [])]
        run_dir = train_run("fashion-mnist-code-prior", f"{point}-prior-kv{kv}", overrides)
        test = [m for m in _metrics(run_dir) if m.get("split") == "test"][-1]
        record = json.loads(out.read_text()) if out.is_file() else {}
        entry = record.setdefault(str(kv), {})
        entry |= {"code_bits_per_grid": test["code_bits_per_grid"], "psnr": test["psnr"], "step": test["step"],
                  "train_seconds": _train_seconds(run_dir),
                  "parameters": sum(p.numel() for p in vaekit.load(run_dir).prior.parameters())}
        if speed:
            entry["speed"] = codec_speed(run_dir, images) | {"loadavg": os.getloadavg()}
        atomic_write_json(out, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "quantiser", "rd", "speed", "health", "remedies",
                                                                 "heads"])
    parser.add_argument("--formats", nargs="+", choices=list(QUALITIES), default=list(QUALITIES),
                        help="rd: the classical codecs to measure (default: all)")
    parser.add_argument("--threads", type=int,
                        help="train, remedies, heads: torch threads of the training runs (default: torch's)")
    parser.add_argument("--kv-heads", type=int, nargs="+", default=list(PRIOR_KV_HEADS),
                        help="heads: the priors' key/value head counts to train and measure")
    parser.add_argument("--no-speed", action="store_true", help="heads: train and score only, nothing timed")
    parser.add_argument("--curves-only", action="store_true",
                        help="rd: only the classical curves missing from the JSON, nothing timed")
    parser.add_argument("--points", nargs="+", choices=list(OPERATING_POINTS), default=list(OPERATING_POINTS),
                        help="train, rd: the operating points (default: all)")
    args = parser.parse_args()
    if args.stage == "train":
        stage_train(ROOT / "results" / "vq_codec_train.json", tuple(args.points), args.threads)
    elif args.stage == "quantiser":
        stage_quantiser(ROOT / "results" / "vq_quantiser_speed.json")
    elif args.stage == "rd":
        stage_rd(ROOT / "results" / "vq_rate_distortion.json", tuple(args.formats), args.curves_only,
                 tuple(args.points))
    elif args.stage == "speed":
        stage_speed(ROOT / "results" / "vq_codec_speed.json")
    elif args.stage == "health":
        stage_health(ROOT / "results" / "vq_codebook_health.json")
    elif args.stage == "remedies":
        stage_remedies(ROOT / "results" / "vq_remedies.json", threads=args.threads)
    elif args.stage == "heads":
        stage_heads(ROOT / "results" / "vq_prior_heads.json", tuple(args.kv_heads), args.threads, not args.no_speed)


if __name__ == "__main__":
    main()
