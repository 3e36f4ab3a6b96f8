"""Reference side of the VAE benchmark: pythae 0.1.2's MNIST conv VAE on binarised Fashion-MNIST.

Runs only in the benchmark's own environment (benchmarks/.venv-ref, see requirements-ref.txt);
pythae is not a dependency of vaekit. Measures, and writes as JSON to --out:
  1. training throughput (samples/s) and achieved GFLOP/s at batch 100, fp32 and bf16 autocast,
     in interleaved rounds, warm-up steps excluded;
  2. wall time and value of pythae's own `VAE.get_nll` (importance-sampled log p(x)) on the first
     N images of the fixed binarised test set;
  3. optionally (--train-epochs E) training for E epochs with the test NLL after each epoch,
     writing partial JSON and a resumable checkpoint after every epoch.

Data protocol, shared with the vaekit side so both see the same pixels:
  - Fashion-MNIST IDX files, pixels / 255 as float32 of shape (N, 1, 28, 28).
  - Binarisation is vaekit.data.images.binarize's recipe: `(torch.rand(x.shape, generator=g) < x)`.
  - Training: all 60,000 training images; each batch is binarised afresh with g the run's data
    generator.
  - Test: the whole 10,000-image test split binarised once with
    g = torch.Generator().manual_seed(1); NLL uses its first N images. Its SHA-256 is written to
    the JSON so the other side can check it holds the same set.

How pythae 0.1.2's `get_nll(data, n_samples, batch_size)` works (read from
pythae/models/vae/vae_model.py):
  - It returns the MEAN over images of log p(x) (a negative number), so NLL = -get_nll(...).
  - With reconstruction_loss="bce", log p(x|z) = -F.binary_cross_entropy(recon_x, x).sum() over
    all 784 pixels, i.e. the Bernoulli log-likelihood of binary x summed over pixels (torch
    clamps each log term at -100). log q(z|x) and log p(z) both omit the -d/2 log(2 pi)
    constant, which cancels. So its NLL is in nats per image, summed over pixels, the same
    quantity as vaekit's importance-sampled NLL in nats.
  - It loops in Python over images, one at a time; for each image it runs
    max(1, n_samples // batch_size) forward passes of batch_size copies of that image. So the
    effective number of samples is batch_size * max(1, n_samples // batch_size): with
    n_samples < batch_size it silently uses batch_size samples, and a remainder is dropped. This
    script passes batch_size = min(K, --nll-batch-size) and requires K % batch_size == 0.
  - It does not disable autograd; this script calls it under torch.no_grad() and model.eval()
    (the encoder and decoder contain BatchNorm, so eval mode matters).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pythae
import torch
from pythae.models import VAE, VAEConfig
from pythae.models.nn.benchmarks.mnist import Decoder_Conv_AE_MNIST, Encoder_Conv_VAE_MNIST
from torch.utils.flop_counter import FlopCounterMode

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_BINARIZE_SEED = 1
LATENT_DIM = 16
INPUT_DIM = (1, 28, 28)
PRECISIONS = ("fp32", "bf16")


# ----------------------------------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a uint8 array of the shape its header declares."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def load_images(data_dir: Path, split: str) -> torch.Tensor:
    """Fashion-MNIST images of `split` ("train" or "t10k") as float32 in [0, 1], shape (N, 1, 28, 28)."""
    array = read_idx(data_dir / f"{split}-images-idx3-ubyte.gz")
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(1)


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli(x) draw per pixel, u < x with u ~ U[0, 1): vaekit's recipe, bit for bit."""
    return (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x).to(x.dtype)


def binarized_test_set(data_dir: Path) -> torch.Tensor:
    """The one fixed binarisation of the whole test split, shape (10000, 1, 28, 28)."""
    test = load_images(data_dir, "t10k")
    return binarize(test, torch.Generator().manual_seed(TEST_BINARIZE_SEED))


def tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------- model


def build_model(seed: int) -> VAE:
    """pythae's VAE with its MNIST conv encoder/decoder, latent 16, Bernoulli (bce) likelihood."""
    torch.manual_seed(seed)
    config = VAEConfig(input_dim=INPUT_DIM, latent_dim=LATENT_DIM, reconstruction_loss="bce")
    return VAE(
        model_config=config,
        encoder=Encoder_Conv_VAE_MNIST(config),
        decoder=Decoder_Conv_AE_MNIST(config),
    )


def autocast(precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, precision: str) -> torch.Tensor:
    """One step as pythae's BaseTrainer takes it: forward, `.loss`, zero_grad, backward, step."""
    with autocast(precision):
        loss = model({"data": x}).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def random_batch(train: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(train), (batch_size,), generator=generator)
    return binarize(train[index], generator)


def flops_per_step(train: torch.Tensor, batch_size: int, seed: int) -> int:
    """FLOPs of one training step (forward + backward; the Adam update is not counted)."""
    model = build_model(seed)
    model.train()
    x = random_batch(train, batch_size, torch.Generator().manual_seed(seed))
    counter = FlopCounterMode(display=False)
    with counter:
        loss = model({"data": x}).loss
        loss.backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------- throughput


def measure_throughput(
    train: torch.Tensor, *, batch_size: int, steps: int, warmup: int, rounds: int,
    precisions: list[str], seed: int, flops: int,
) -> dict:
    """Samples/s of the plain Adam loop, each precision on its own model, in interleaved rounds."""
    runs = {}
    for precision in precisions:
        model = build_model(seed)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        runs[precision] = (model, optimizer, torch.Generator().manual_seed(seed))
    per_round = {p: [] for p in precisions}
    last_loss = {}
    for _ in range(rounds):
        for precision in precisions:
            model, optimizer, generator = runs[precision]
            for _ in range(warmup):
                train_step(model, optimizer, random_batch(train, batch_size, generator), precision)
            start = time.perf_counter()
            for _ in range(steps):
                loss = train_step(model, optimizer, random_batch(train, batch_size, generator), precision)
            elapsed = time.perf_counter() - start
            per_round[precision].append(steps * batch_size / elapsed)
            last_loss[precision] = float(loss)
    result = {}
    for precision in precisions:
        samples_per_s = statistics.median(per_round[precision])
        result[precision] = {
            "samples_per_s": samples_per_s,
            "samples_per_s_rounds": per_round[precision],
            "gflop_per_s": flops / 1e9 * samples_per_s / batch_size,
            "last_loss": last_loss[precision],
        }
    return result


# ------------------------------------------------------------------------------------------ NLL


def pythae_nll(
    model: VAE, images: torch.Tensor, *, num_samples: int, batch_size: int, seed: int,
    chunk: int = 50, partial: dict | None = None, on_chunk=None, until: int | None = None,
) -> dict:
    """NLL (nats/image) from pythae's own get_nll, called image by image to keep per-image values.

    get_nll itself loops over images one at a time, so calling it on one image per call runs the
    same operations (checked: same value as one call on all images under the same seed); the
    per-image values let the other side compare paired, within noise. The global RNG is seeded
    per chunk of `chunk` images, so a run stopped between chunks resumes from `partial` (an
    earlier result of the same settings) and gives the same numbers; `on_chunk(result)` is
    called after every chunk so the caller can write partial JSON. `until` stops after that many
    images (a later call with the partial result goes on), so callers can interleave two libraries.
    """
    batch_size = min(num_samples, batch_size)
    if num_samples % batch_size:
        raise ValueError(f"K={num_samples} must be a multiple of the NLL batch size {batch_size}")
    settings = {"num_images": len(images), "num_samples": num_samples, "batch_size": batch_size,
                "seed": seed, "chunk": chunk}
    if partial and all(partial.get(k) == v for k, v in settings.items()):
        nll, wall, chunk_walls = list(partial["nll_per_image"]), partial["wall_s"], list(partial["chunk_wall_s"])
    else:
        nll, wall, chunk_walls = [], 0.0, []
    model.eval()
    result: dict = {}
    with torch.no_grad():
        for first in range(len(nll), min(len(images), until or len(images)), chunk):
            torch.manual_seed(seed * 1_000_003 + first // chunk)
            start = time.perf_counter()
            for i in range(first, min(first + chunk, len(images))):
                nll.append(-float(model.get_nll(images[i : i + 1], n_samples=num_samples, batch_size=batch_size)))
            chunk_walls.append(time.perf_counter() - start)
            wall += chunk_walls[-1]
            mean = statistics.fmean(nll)
            result = {
                **settings,
                "complete": len(nll) == len(images),
                "nll_nats": mean,
                "nll_stderr_over_images": statistics.stdev(nll) / math.sqrt(len(nll)) if len(nll) > 1 else float("nan"),
                "bits_per_dim": mean / (math.log(2) * images[0].numel()),
                "wall_s": wall,
                "seconds_per_image": wall / len(nll),
                "chunk_wall_s": chunk_walls,
                "nll_per_image": nll,
            }
            if on_chunk is not None:
                on_chunk(result)
    return result or dict(partial)


# ------------------------------------------------------------------------------------- training


def save_checkpoint(directory: Path, model: VAE, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Model, Adam state and torch RNG into safetensors, the rest into JSON, written atomically."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"epoch": epoch, "param_groups": opt_state["param_groups"]}
    tmp = directory / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    _fsync_replace(tmp, directory / "state.safetensors")
    _atomic_write_text(directory / "state.json", json.dumps(meta))


def load_checkpoint(directory: Path, model: VAE, optimizer: torch.optim.Optimizer) -> int:
    """Restore what save_checkpoint wrote; returns the number of epochs completed."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "state.safetensors"))
    meta = json.loads((directory / "state.json").read_text())
    load_model_weights(directory, model)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epoch"])


def load_model_weights(directory: Path, model: VAE) -> None:
    """Load only the model weights from a folder written by save_checkpoint."""
    from safetensors.torch import load_file

    tensors = load_file(str(directory / "state.safetensors"))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})


def train_epochs(
    train: torch.Tensor, test: torch.Tensor, *, epochs: int, batch_size: int, precision: str,
    seed: int, eval_images: int, eval_samples: int, nll_batch_size: int, steps_per_epoch: int | None,
    checkpoint_dir: Path, resume: bool, results: dict, out: Path,
) -> dict:
    """Train E epochs (Adam 1e-3), test NLL after each; partial JSON + checkpoint every epoch.

    Epoch e's shuffle and binarisation come from a generator seeded (seed, e), and the model's
    reparameterisation noise from the global torch RNG saved in the checkpoint, so a resumed run
    repeats the uninterrupted one.
    """
    model = build_model(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    section = results.setdefault("training", {})
    done = 0
    if resume and (checkpoint_dir / "state.json").exists():
        done = load_checkpoint(checkpoint_dir, model, optimizer)
        section["epochs"] = section.get("epochs", [])[:done]
        print(f"resumed after epoch {done}", flush=True)
    else:
        torch.manual_seed(seed)
        section["epochs"] = []
    section.update(
        precision=precision, batch_size=batch_size, optimizer="Adam lr=1e-3",
        eval_images=eval_images, eval_samples=eval_samples, steps_per_epoch=steps_per_epoch,
    )
    train_wall = section["epochs"][-1]["train_wall_s_cumulative"] if section["epochs"] else 0.0
    num_batches = len(train) // batch_size
    if steps_per_epoch is not None:
        num_batches = min(num_batches, steps_per_epoch)
    for epoch in range(done + 1, epochs + 1):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(train), generator=generator)
        model.train()
        losses = torch.zeros(num_batches)
        start = time.perf_counter()
        for b in range(num_batches):
            x = binarize(train[order[b * batch_size : (b + 1) * batch_size]], generator)
            losses[b] = train_step(model, optimizer, x, precision)
        epoch_wall = time.perf_counter() - start
        train_wall += epoch_wall
        training_rng = torch.get_rng_state()  # the NLL reseeds the global RNG; training resumes its own
        nll = pythae_nll(
            model, test[:eval_images], num_samples=eval_samples, batch_size=nll_batch_size, seed=seed + epoch,
        )
        torch.set_rng_state(training_rng)
        model.train()
        section["epochs"].append({
            "epoch": epoch,
            "train_loss_mean": float(losses.mean()),
            "train_wall_s": epoch_wall,
            "train_wall_s_cumulative": train_wall,
            "test_nll_nats": nll["nll_nats"],
            "test_nll_stderr_over_images": nll["nll_stderr_over_images"],
            "eval_wall_s": nll["wall_s"],
            "loadavg": os.getloadavg(),
        })
        save_checkpoint(checkpoint_dir, model, optimizer, epoch)
        write_json(out, results)
        print(
            f"epoch {epoch}: loss {float(losses.mean()):.2f}  test NLL {nll['nll_nats']:.2f} nats  "
            f"train {epoch_wall:.0f}s (total {train_wall:.0f}s)  eval {nll['wall_s']:.0f}s",
            flush=True,
        )
    return section


# ---------------------------------------------------------------------------------------- output


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync_replace(tmp, path)


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def environment(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pythae": getattr(pythae, "__version__", "0.1.2"),
        "numpy": np.__version__,
        "threads": threads,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "bf16_supported": torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON results file (written atomically)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with the Fashion-MNIST IDX .gz files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    g = p.add_argument_group("throughput")
    g.add_argument("--steps", type=int, default=20, help="timed training steps per round and precision (0 skips)")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed round")
    g.add_argument("--rounds", type=int, default=2, help="interleaved rounds over precisions; the median is reported")
    g.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (bf16 = CPU autocast)")
    g = p.add_argument_group("NLL of pythae's get_nll")
    g.add_argument("--nll-n", type=int, default=100, help="first N test images (0 skips)")
    g.add_argument("--nll-k", type=int, default=100, help="importance samples K per image")
    g.add_argument("--nll-batch-size", type=int, default=100, help="get_nll batch_size (samples per forward); min(K, this)")
    g.add_argument("--nll-train-steps", type=int, default=0,
                   help="fp32 training steps on the model before the NLL (0 = NLL of the untrained model)")
    g.add_argument("--nll-checkpoint", type=Path, default=None,
                   help="evaluate the model saved by --train-epochs in this checkpoint folder instead")
    g.add_argument("--nll-chunk", type=int, default=50, help="images per RNG-seeded chunk; partial JSON after each")
    g = p.add_argument_group("training to quality")
    g.add_argument("--train-epochs", type=int, default=0, help="train E epochs, test NLL after each (0 skips)")
    g.add_argument("--train-precision", choices=PRECISIONS, default="fp32")
    g.add_argument("--steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick checks only)")
    g.add_argument("--eval-n", type=int, default=1000, help="test images for the per-epoch NLL")
    g.add_argument("--eval-k", type=int, default=100, help="importance samples for the per-epoch NLL")
    g.add_argument("--checkpoint-dir", type=Path, default=None, help="default: OUT with suffix .ckpt")
    g.add_argument("--resume", action="store_true",
                   help="continue from the partial JSON at --out (NLL chunks) and --checkpoint-dir (epochs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for precision in precisions:
        autocast(precision)  # validates the name

    results: dict = {}
    if args.resume and args.out.exists():
        results = json.loads(args.out.read_text())
    results["environment"] = environment(args.threads)
    results["protocol"] = {
        "data": "Fashion-MNIST, pixels/255 (float32), train batches binarised afresh: torch.rand(shape, generator=g) < x",
        "test_binarization": f"(torch.rand(test.shape, generator=torch.Generator().manual_seed({TEST_BINARIZE_SEED})) < test) over all 10000 test images",
        "model": "pythae VAE, Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST, latent_dim 16, reconstruction_loss bce",
        "nll_units": "nats per image, Bernoulli log-likelihood summed over 784 pixels",
        "seed": args.seed,
    }

    train = load_images(args.data_dir, "train")
    test = binarized_test_set(args.data_dir)
    results["protocol"]["test_set_sha256_float32"] = tensor_sha256(test)
    model = build_model(args.seed)
    results["model"] = {"parameters": sum(p.numel() for p in model.parameters())}

    flops = flops_per_step(train, args.batch_size, args.seed)
    results["model"]["gflop_per_train_step"] = flops / 1e9
    results["model"]["batch_size"] = args.batch_size
    print(f"parameters {results['model']['parameters']:,}  GFLOP/step {flops / 1e9:.1f}", flush=True)

    throughput_settings = {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "precisions": precisions}
    already_measured = args.resume and results.get("throughput_settings") == throughput_settings
    if args.steps > 0 and not already_measured:
        results["throughput"] = measure_throughput(
            train, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
            precisions=precisions, seed=args.seed, flops=flops,
        )
        results["throughput_settings"] = throughput_settings
        for precision, r in results["throughput"].items():
            print(f"train {precision}: {r['samples_per_s']:.1f} samples/s  {r['gflop_per_s']:.0f} GFLOP/s", flush=True)
        write_json(args.out, results)

    if args.nll_n > 0:
        if args.nll_checkpoint is not None:
            load_model_weights(args.nll_checkpoint, model)
            source = f"checkpoint {args.nll_checkpoint}"
        elif args.nll_train_steps:
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            generator = torch.Generator().manual_seed(args.seed)
            for _ in range(args.nll_train_steps):
                train_step(model, optimizer, random_batch(train, args.batch_size, generator), "fp32")
            source = f"{args.nll_train_steps} fp32 training steps from seed {args.seed}"
        else:
            source = f"untrained, seed {args.seed}"

        def record(partial_result: dict) -> None:
            results["nll"] = {**partial_result, "model": source}
            write_json(args.out, results)

        previous = results.get("nll") if args.resume and results.get("nll", {}).get("model") == source else None
        nll = pythae_nll(
            model, test[: args.nll_n], num_samples=args.nll_k, batch_size=args.nll_batch_size, seed=args.seed,
            chunk=args.nll_chunk, partial=previous, on_chunk=record,
        )
        record(nll)
        print(
            f"get_nll N={args.nll_n} K={args.nll_k}: {nll['nll_nats']:.2f} ± {nll['nll_stderr_over_images']:.2f} nats "
            f"in {nll['wall_s']:.1f}s ({nll['seconds_per_image']:.2f} s/image)",
            flush=True,
        )

    if args.train_epochs > 0:
        checkpoint_dir = args.checkpoint_dir or args.out.with_suffix(".ckpt")
        train_epochs(
            train, test, epochs=args.train_epochs, batch_size=args.batch_size, precision=args.train_precision,
            seed=args.seed, eval_images=args.eval_n, eval_samples=args.eval_k, nll_batch_size=args.nll_batch_size,
            steps_per_epoch=args.steps_per_epoch, checkpoint_dir=checkpoint_dir, resume=args.resume,
            results=results, out=args.out,
        )

    results["environment"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, results)


if __name__ == "__main__":
    sys.exit(main())
