"""vaekit against pythae 0.1.2 on dynamically binarised Fashion-MNIST, both in one process.

Runs in the benchmark's own environment (benchmarks/.venv-ref: pythae 0.1.2 plus vaekit installed
editable, see requirements-ref.txt). Data loading, pythae's model, its training step, its
`get_nll` and the checkpoint helpers come from pythae_vae.py beside this file. Writes JSON to
--out after every unit of work (a timing round, a chunk of NLL images, an evaluation or checkpoint
of a training run); --resume continues from that JSON and the checkpoints under --work-dir.
Results of sections not run in a call are kept in --out, so sections may run in separate calls.

Sections (--sections, default all three):
  check       vaekit's loss on the adapter model against pythae's loss on the same batch with the
              same reparameterisation noise (they must agree: bce summed over pixels + KL is the
              negative ELBO), at initialisation here and at the trained weights in `nll`.
  throughput  pythae's MNIST conv VAE (Encoder_Conv_VAE_MNIST / Decoder_Conv_AE_MNIST, latent 16)
              trained by pythae's loss in a plain Adam loop, against a vaekit VAE whose
              encoder/decoder are thin adapters around the same pythae modules (same
              initial weights), trained by vaekit's own engine (`Trainer.run`, i.e. the engine's
              batch + binarisation + autocast + fused Adam step code path; its periodic
              evaluation and checkpoint are switched off). Batch 100, interleaved rounds
              (pythae fp32, vaekit fp32, pythae bf16, vaekit bf16, repeat), warm-up excluded,
              median samples/s, ratio vaekit/pythae, GFLOP/s from FlopCounterMode.
  nll         importance-sampled NLL of the SAME trained weights: pythae's model (trained here for
              --nll-train-steps or loaded from a pythae_vae.py checkpoint) is wrapped, modules
              shared, in the vaekit adapter; pythae's `get_nll` on the first N test images against
              vaekit's `importance_sampled_log_px` (batched over images and samples) on N and N'
              images; wall times, ratio, both NLLs and a paired test of their agreement.
  ttq         time to quality: vaekit's preset (fashion-mnist-vae) trained by vaekit's engine for
              each --seeds, test NLL (K=100, first 1000 test images) every --eval-every steps;
              training wall time per evaluation with evaluation and checkpoint time excluded;
              time to reach pythae's NLL after E epochs (--target-from pythae_vae.py JSON, or
              --target and --pythae-train-s), the ratio to pythae's time, and the best NLL within
              --budget-s of training.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pythae_vae as ref  # the pythae side: data, model, step, get_nll, checkpoints

import vaekit
from vaekit.batch import Batch
from vaekit.config import DataConfig, RunConfig, load_config, validate_config
from vaekit.data import ImageData, load_image_data
from vaekit.engine.checkpoint import list_checkpoints, read_state
from vaekit.engine.distributed import init_distributed
from vaekit.engine.rundir import git_hash
from vaekit.engine.train import Trainer, _check_data, make_optimizers, resolve_config
from vaekit.models.vae import VAE as VaekitVAE
from vaekit.models.vae import VAEConfig as VaekitVAEConfig
from vaekit.objectives import importance_sampled_log_px

SECTIONS = ("check", "throughput", "nll", "ttq")
PYTHAE_TARGET_EPOCHS = 10  # the issue's time-to-quality target: pythae's test NLL after 10 epochs
FASHION_TRAIN_IMAGES = 60_000
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "vae_vs_pythae.json"
DEFAULT_WORK_DIR = Path(__file__).resolve().parent / "results" / "partial" / "vae_vs_pythae"


# -------------------------------------------------------------------------- the adapter model


class PythaeEncoderAdapter(nn.Module):
    """pythae encoder as vaekit's encoder: x (B, 1, 28, 28) -> (B, 2 * latent) = [mean, log_var]."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.net = encoder

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return torch.cat([out.embedding, out.log_covariance], dim=-1)


class PythaeDecoderLogits(nn.Module):
    """pythae's Decoder_Conv_AE_MNIST without its final Sigmoid: z (N, latent) -> logits (N, 1, 28, 28).

    pythae's forward is layers[0] (Linear to 1024*4*4), a reshape to (N, 1024, 4, 4), then the
    Sequentials layers[1:], the last of which is (ConvTranspose2d, Sigmoid); this runs the same
    modules and stops before the Sigmoid, as vaekit's Bernoulli likelihood takes logits.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        last = decoder.layers[-1]
        if not (isinstance(last, nn.Sequential) and isinstance(last[-1], nn.Sigmoid)):
            raise TypeError(f"expected pythae's decoder to end with a Sequential(..., Sigmoid), got {last}")
        self.net = decoder

    def forward(self, z: Tensor) -> Tensor:
        layers = self.net.layers
        out = layers[0](z).reshape(z.shape[0], 1024, 4, 4)  # (N, 1024, 4, 4)
        for layer in layers[1:-1]:
            out = layer(out)
        for layer in list(layers[-1])[:-1]:
            out = layer(out)
        return out  # (N, 1, 28, 28) logits


def vaekit_adapter(pythae_model: nn.Module) -> VaekitVAE:
    """A vaekit VAE (Bernoulli, latent 16, (1, 28, 28)) whose nets ARE pythae_model's modules (shared)."""
    model = VaekitVAE(VaekitVAEConfig(image_shape=(1, 28, 28), latent_dim=ref.LATENT_DIM, likelihood="bernoulli"))
    model.encoder = PythaeEncoderAdapter(pythae_model.encoder)
    model.decoder = PythaeDecoderLogits(pythae_model.decoder)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------- check


def bce_terms(logits: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Per-image -log p(x|z) two ways: pythae's (sigmoid, then F.binary_cross_entropy, which clamps
    each log at -100) and vaekit's (binary_cross_entropy_with_logits, exact); plus the pixels where
    pythae's fp32 sigmoid saturates so that its log term hits the clamp (logit >~ 16.6 with x = 0)."""
    probabilities = torch.sigmoid(logits.float())
    pythae_style = F.binary_cross_entropy(probabilities, x, reduction="none").flatten(1)  # (B, 784)
    exact = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").flatten(1)
    return {"pythae_style": pythae_style.sum(1), "exact": exact.sum(1), "clamped_pixels": (pythae_style >= 100.0).sum(1)}


def loss_agreement(pythae_model: nn.Module, x: Tensor, seed: int) -> dict[str, Any]:
    """pythae's loss vs vaekit's loss.total on the same batch and the same noise eps (fp32).

    pythae draws eps with torch.randn_like on the global RNG; vaekit draws it from the batch's
    generator; both seeded `seed` give the same eps. Done in train mode (BatchNorm batch
    statistics) and in eval mode (running statistics), each on a fresh copy of the model.
    pythae's reconstruction term takes the log of a fp32 sigmoid and clamps it at -100 per pixel,
    so where the decoder saturates (a logit above ~16.6 on a 0 pixel) it differs from the exact
    Bernoulli log-likelihood; the decoder logits of the same z are recomputed to split the
    difference into that clamp error and the rest (which must be ~0).
    """
    result: dict[str, Any] = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            pythae_copy = copy.deepcopy(pythae_model)  # a train-mode pass moves BatchNorm's running statistics
            vaekit_model = vaekit_adapter(pythae_copy)
            pythae_copy.train(mode == "train")
            vaekit_model.train(mode == "train")
            torch.manual_seed(seed)
            out = pythae_copy({"data": x})
            losses = vaekit_model.loss(Batch(x=x, generator=torch.Generator().manual_seed(seed)))
            eps = torch.randn(x.shape[0], ref.LATENT_DIM, generator=torch.Generator().manual_seed(seed))
            terms = bce_terms(vaekit_model.decoder(vaekit_model.encode(x).rsample(eps)), x)
            pythae_loss, vaekit_loss = float(out.loss), float(losses.total)
            saturation_error = float((terms["pythae_style"] - terms["exact"]).mean())
            unexplained = pythae_loss - saturation_error - vaekit_loss
            result[mode] = {
                "pythae_loss": pythae_loss,
                "vaekit_loss": vaekit_loss,
                "abs_diff": abs(vaekit_loss - pythae_loss),
                "rel_diff": abs(vaekit_loss - pythae_loss) / abs(pythae_loss),
                "pythae_recon": float(out.recon_loss),
                "vaekit_recon": float(losses.terms["reconstruction"].mean()),
                "pythae_kl": float(out.reg_loss),
                "vaekit_kl": float(losses.terms["kl"].mean()),
                "pythae_fp32_sigmoid_clamp_error_per_image": saturation_error,
                "clamped_pixels_per_image": float(terms["clamped_pixels"].float().mean()),
                "diff_unexplained_by_clamp": unexplained,
                "rel_diff_unexplained_by_clamp": abs(unexplained) / abs(pythae_loss),
            }
    result["agree"] = all(result[m]["rel_diff"] < 1e-4 for m in ("train", "eval"))
    result["agree_after_clamp_correction"] = all(result[m]["rel_diff_unexplained_by_clamp"] < 1e-4 for m in ("train", "eval"))
    return result


def decoder_saturation(vaekit_model: VaekitVAE, x: Tensor, chunk: int = 100) -> dict[str, float]:
    """At z = posterior mean (eval mode): pixels per image where pythae's clamp is hit, and its error in nats."""
    vaekit_model.eval()
    clamped, error = [], []
    with torch.no_grad():
        for part in x.split(chunk):
            terms = bce_terms(vaekit_model.decoder(vaekit_model.encode(part).mean), part)
            clamped.append(terms["clamped_pixels"].float())
            error.append(terms["pythae_style"] - terms["exact"])
    return {"clamped_pixels_per_image": float(torch.cat(clamped).mean()),
            "pythae_clamp_error_nats_per_image": float(torch.cat(error).mean()),
            "num_images": len(x)}


# -------------------------------------------------------------------------------- throughput


def throughput_run_config(work_dir: Path, data_dir: Path, precision: str, seed: int, batch_size: int) -> RunConfig:
    """The engine config of the adapter model's training: batch 100, Adam 1e-3, dynamic binarisation."""
    big = 10**9  # periodic eval/checkpoint off (they are stubbed out too); logging once per call
    return validate_config({
        "name": f"throughput-{precision}", "out_dir": str(work_dir / "throughput-runs"),
        "data": {"name": "fashion_mnist", "path": str(data_dir), "binarize": "dynamic"},
        "model": {"name": "vae", "image_shape": [1, 28, 28], "latent_dim": ref.LATENT_DIM, "likelihood": "bernoulli"},
        "train": {"steps": 1, "batch_size": batch_size, "optimizer": "adam", "lr": 1e-3, "precision": precision,
                  "seed": seed, "log_every": big, "eval_every": big, "checkpoint_every": big, "device": "cpu"},
    })


def engine_trainer_for_adapter(config: RunConfig, data: ImageData, seed: int) -> Trainer:
    """vaekit's Trainer with its model's nets replaced by adapters around a fresh pythae model (seed)."""
    trainer = Trainer(config, data, init_distributed("cpu"), quiet=True)
    pythae_model = ref.build_model(seed)
    trainer.model.encoder = PythaeEncoderAdapter(pythae_model.encoder)
    trainer.model.decoder = PythaeDecoderLogits(pythae_model.decoder)
    trainer.optimizers = make_optimizers(trainer.model, trainer.train_cfg)  # the engine's Adam (fused where torch has it)
    trainer.open_run_dir(resume=False, force=True)
    trainer._evaluate = lambda: None  # no periodic evaluation (an instance attribute, src untouched)
    trainer._save = lambda: None  # no checkpoints
    return trainer


def engine_steps(trainer: Trainer, num_steps: int) -> None:
    """Run `num_steps` more steps of the engine's own loop (Trainer.run) on the trainer's model."""
    trainer.train_cfg = trainer.train_cfg.model_copy(update={"steps": trainer.step + num_steps})
    trainer.run()


def vaekit_flops_per_step(data: ImageData, batch_size: int, seed: int) -> int:
    """FLOPs of one forward + backward of vaekit's loss on the adapter model (Adam not counted)."""
    model = vaekit_adapter(ref.build_model(seed))
    model.train()
    generator = torch.Generator().manual_seed(seed)
    x = ref.random_batch(data.train, batch_size, generator)
    counter = FlopCounterMode(display=False)
    with counter:
        model.loss(Batch(x=x, generator=generator)).total.backward()
    return int(counter.get_total_flops())


def run_throughput(args: argparse.Namespace, results: dict, data: ImageData, save: Callable[[], None]) -> None:
    precisions = args.precisions
    settings = {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "precisions": precisions,
                "batch_size": args.batch_size, "seed": args.seed}
    section = results.get("throughput", {})
    if not (args.resume and section.get("settings") == settings):
        section = {"settings": settings, "rounds": []}
    if section.get("complete"):
        print("throughput: complete in the JSON, skipped", flush=True)
        return
    results["throughput"] = section
    flops = {"pythae": ref.flops_per_step(data.train, args.batch_size, args.seed),
             "vaekit": vaekit_flops_per_step(data, args.batch_size, args.seed)}
    section["gflop_per_train_step"] = {k: v / 1e9 for k, v in flops.items()}
    section["parameters"] = {"pythae": count_parameters(ref.build_model(args.seed)),
                             "vaekit": count_parameters(vaekit_adapter(ref.build_model(args.seed)))}
    section["how"] = {
        "pythae": "pythae VAE forward .loss, zero_grad, backward, torch.optim.Adam(lr=1e-3) (torch's CPU default: "
                  "no foreach) step; batch = pythae_vae.random_batch (random rows, binarised afresh)",
        "vaekit": "vaekit.engine.train.Trainer.run on a VAE whose encoder/decoder are adapters around pythae's "
                  "modules: the engine's batch + dynamic binarisation, autocast, loss, backward, fused Adam (foreach where torch has no fused one) "
                  "(lr=1e-3) step, NaN flag and per-term sums; one metrics.jsonl line per timed call; "
                  "periodic evaluation and checkpoints stubbed out",
        "timed": "each round and precision: `warmup` untimed steps, then `steps` timed steps",
    }

    runners: dict[tuple[str, str], Callable[[int], None]] = {}
    for precision in precisions:
        pythae_model = ref.build_model(args.seed)
        pythae_model.train()
        optimizer = torch.optim.Adam(pythae_model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(args.seed)

        def pythae_steps(n: int, model=pythae_model, opt=optimizer, gen=generator, p=precision) -> None:
            for _ in range(n):
                ref.train_step(model, opt, ref.random_batch(data.train, args.batch_size, gen), p)

        trainer = engine_trainer_for_adapter(
            throughput_run_config(args.work_dir, args.data_dir, precision, args.seed, args.batch_size), data, args.seed
        )
        runners[("pythae", precision)] = pythae_steps
        runners[("vaekit", precision)] = lambda n, t=trainer: engine_steps(t, n)

    order = [(lib, p) for p in precisions for lib in ("pythae", "vaekit")]
    for round_index in range(len(section["rounds"]), args.rounds):
        samples_per_s = {}
        for lib, precision in order:
            runners[(lib, precision)](args.warmup)
            start = time.perf_counter()
            runners[(lib, precision)](args.steps)
            elapsed = time.perf_counter() - start
            samples_per_s[f"{lib}_{precision}"] = args.steps * args.batch_size / elapsed
        section["rounds"].append({"round": round_index, "samples_per_s": samples_per_s, "loadavg": os.getloadavg()})
        print(f"throughput round {round_index}: " + "  ".join(f"{k} {v:.1f}/s" for k, v in samples_per_s.items()), flush=True)
        summarise_throughput(section, flops, args.batch_size)
        save()
    section["complete"] = True
    save()


def summarise_throughput(section: dict, flops: dict[str, int], batch_size: int) -> None:
    summary: dict[str, Any] = {}
    for precision in section["settings"]["precisions"]:
        row = {}
        for lib in ("pythae", "vaekit"):
            values = [r["samples_per_s"][f"{lib}_{precision}"] for r in section["rounds"]]
            median = statistics.median(values)
            row[lib] = {"samples_per_s": median, "samples_per_s_rounds": values,
                        "gflop_per_s": flops[lib] / 1e9 * median / batch_size}
        row["ratio_vaekit_over_pythae"] = row["vaekit"]["samples_per_s"] / row["pythae"]["samples_per_s"]
        summary[precision] = row
    section["summary"] = summary


# ---------------------------------------------------------------------------------------- NLL


def vaekit_nll(
    model: VaekitVAE, images: Tensor, *, num_samples: int, samples_per_chunk: int, images_per_chunk: int,
    seed: int, precision: str, partial: dict | None, on_chunk: Callable[[dict], None], until: int | None = None,
) -> dict:
    """vaekit's importance-sampled NLL (nats/image) of `images`, `images_per_chunk` images per call.

    Each image chunk draws from its own generator seeded (seed, chunk), so a run stopped between
    chunks resumes from `partial` with the same numbers; `until` stops after that many images.
    """
    settings = {"num_images": len(images), "num_samples": num_samples, "samples_per_chunk": samples_per_chunk,
                "images_per_chunk": images_per_chunk, "seed": seed, "precision": precision}
    if partial and all(partial.get(k) == v for k, v in settings.items()):
        nll, elbo, walls = list(partial["nll_per_image"]), list(partial["elbo_per_image"]), list(partial["chunk_wall_s"])
    else:
        nll, elbo, walls = [], [], []
    model.eval()
    result = dict(partial) if partial and len(nll) == len(partial["nll_per_image"]) else {}
    for first in range(len(nll), min(len(images), until or len(images)), images_per_chunk):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + first // images_per_chunk)
        start = time.perf_counter()
        with ref.autocast(precision):
            log_px, lower = importance_sampled_log_px(
                model, images[first : first + images_per_chunk], num_samples=num_samples,
                samples_per_chunk=samples_per_chunk, generator=generator,
            )
        walls.append(time.perf_counter() - start)
        nll += (-log_px.double()).tolist()
        elbo += lower.double().tolist()
        wall = sum(walls)
        result = {
            **settings,
            "complete": len(nll) == len(images),
            "nll_nats": statistics.fmean(nll),
            "nll_stderr_over_images": statistics.stdev(nll) / math.sqrt(len(nll)) if len(nll) > 1 else float("nan"),
            "elbo_nats": statistics.fmean(elbo),
            "bits_per_dim": statistics.fmean(nll) / (math.log(2) * images[0].numel()),
            "wall_s": wall,
            "seconds_per_image": wall / len(nll),
            "chunk_wall_s": walls,
            "nll_per_image": nll,
            "elbo_per_image": elbo,
        }
        on_chunk(result)
    return result


def paired_agreement(pythae_nll: list[float], vaekit_nll: list[float]) -> dict[str, Any]:
    """Mean of vaekit - pythae over the shared first images, its standard error, and |z| < 3."""
    n = min(len(pythae_nll), len(vaekit_nll))
    diffs = [v - p for p, v in zip(pythae_nll[:n], vaekit_nll[:n])]
    mean = statistics.fmean(diffs)
    stderr = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan")
    z = mean / stderr if stderr > 0 else float("inf")
    return {"num_images": n, "mean_diff_vaekit_minus_pythae": mean, "stderr_of_diff": stderr,
            "z": z, "agree_within_3_stderr": abs(z) < 3}


def nll_source_model(args: argparse.Namespace, data: ImageData) -> tuple[nn.Module, str]:
    """pythae's model with the trained weights both sides evaluate, and a description of where they came from."""
    model = ref.build_model(args.seed)
    if args.nll_checkpoint is not None:
        ref.load_model_weights(args.nll_checkpoint, model)
        return model, f"pythae_vae.py checkpoint {args.nll_checkpoint}"
    source = f"pythae, {args.nll_train_steps} fp32 Adam steps of batch {args.batch_size} from seed {args.seed}"
    saved = args.work_dir / "nll-model"
    if args.resume and (saved / "state.json").exists() and json.loads((saved / "source.json").read_text()) == source:
        ref.load_model_weights(saved, model)
        return model, source
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(args.nll_train_steps):
        loss = ref.train_step(model, optimizer, ref.random_batch(data.train, args.batch_size, generator), "fp32")
        if (step + 1) % 100 == 0 or step + 1 == args.nll_train_steps:
            print(f"nll model: step {step + 1}/{args.nll_train_steps} loss {float(loss):.1f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
    ref.save_checkpoint(saved, model, optimizer, epoch=0)
    ref._atomic_write_text(saved / "source.json", json.dumps(source))
    return model, source


def run_nll(args: argparse.Namespace, results: dict, data: ImageData, save: Callable[[], None]) -> None:
    pythae_model, source = nll_source_model(args, data)
    section = results.get("nll", {})
    if not (args.resume and section.get("model") == source):
        section = {"model": source}
    results["nll"] = section
    section["loss_check_trained_weights"] = loss_agreement(
        pythae_model, ref.random_batch(data.train, args.batch_size, torch.Generator().manual_seed(args.seed + 1)),
        args.seed + 1,
    )
    check = section["loss_check_trained_weights"]
    print(f"loss check (trained): train-mode rel diff {check['train']['rel_diff']:.2e} "
          f"(pythae clamp error {check['train']['pythae_fp32_sigmoid_clamp_error_per_image']:.3f} nats/image), "
          f"agree {check['agree']}, after clamp correction {check['agree_after_clamp_correction']}", flush=True)
    vaekit_model = vaekit_adapter(pythae_model)  # shares pythae_model's modules: the same weights
    pythae_model.eval()
    vaekit_model.eval()
    test = data.test
    section["decoder_saturation_first_images"] = decoder_saturation(
        vaekit_model, test[: max([args.nll_pythae_n, *args.nll_vaekit_n])])
    save()

    def record_pythae(partial_result: dict) -> None:
        section["pythae"] = partial_result
        save()

    def record_vaekit(key: str) -> Callable[[dict], None]:
        def record(partial_result: dict) -> None:
            section["vaekit"][key] = partial_result
            save()
        return record

    # Both libraries advance block by block (pythae's images, then vaekit's in each precision), so a
    # machine whose speed drifts over the hour this takes slows both sides alike.
    section.setdefault("vaekit", {})
    section["interleave_images"] = args.nll_interleave
    total = max([args.nll_pythae_n, *args.nll_vaekit_n])
    for until in range(args.nll_interleave, total + args.nll_interleave, args.nll_interleave):
        if args.nll_pythae_n > 0 and until - args.nll_interleave < args.nll_pythae_n:
            pythae = ref.pythae_nll(
                pythae_model, test[: args.nll_pythae_n], num_samples=args.nll_k, batch_size=args.nll_batch_size,
                seed=args.seed, chunk=args.nll_chunk, partial=section.get("pythae"), on_chunk=record_pythae,
                until=until,
            )
            print(f"pythae get_nll {len(pythae['nll_per_image'])}/{args.nll_pythae_n} images K={args.nll_k}: "
                  f"{pythae['nll_nats']:.2f} ± {pythae['nll_stderr_over_images']:.2f} nats, "
                  f"{pythae['seconds_per_image']:.3f} s/image", flush=True)
        for precision in args.nll_precisions:
            for n in args.nll_vaekit_n:
                if until - args.nll_interleave >= n:
                    continue
                key = f"{precision}_n{n}"
                vk = vaekit_nll(
                    vaekit_model, test[:n], num_samples=args.nll_k, samples_per_chunk=args.samples_per_chunk,
                    images_per_chunk=args.images_per_chunk, seed=args.seed, precision=precision,
                    partial=section["vaekit"].get(key), on_chunk=record_vaekit(key), until=until,
                )
                print(f"vaekit importance_sampled_log_px {precision} {len(vk['nll_per_image'])}/{n} images "
                      f"K={args.nll_k}: {vk['nll_nats']:.2f} ± {vk['nll_stderr_over_images']:.2f} nats, "
                      f"{vk['seconds_per_image']:.3f} s/image", flush=True)
    summarise_nll(section)
    save()


def summarise_nll(section: dict) -> None:
    pythae = section.get("pythae")
    if not pythae or not pythae.get("complete"):
        return
    comparison = {}
    for key, vk in section.get("vaekit", {}).items():
        if not vk.get("complete"):
            continue
        row = {
            "pythae_nll": pythae["nll_nats"], "pythae_stderr": pythae["nll_stderr_over_images"],
            "vaekit_nll": vk["nll_nats"], "vaekit_stderr": vk["nll_stderr_over_images"],
            "pythae_seconds_per_image": pythae["seconds_per_image"],
            "vaekit_seconds_per_image": vk["seconds_per_image"],
            "speedup_per_image": pythae["seconds_per_image"] / vk["seconds_per_image"],
            "paired_agreement": paired_agreement(pythae["nll_per_image"], vk["nll_per_image"]),
        }
        if vk["num_images"] == pythae["num_images"]:
            row["wall_ratio_pythae_over_vaekit_same_n"] = pythae["wall_s"] / vk["wall_s"]
        comparison[key] = row
    section["comparison"] = comparison


# --------------------------------------------------------------------------- time to quality


def load_target(args: argparse.Namespace) -> dict[str, Any]:
    """pythae's NLL after E epochs and its training time to it, from pythae_vae.py's JSON or the flags."""
    if args.target_from is not None:
        training = json.loads(args.target_from.read_text())["training"]
        epochs = training["epochs"]
        if not epochs:
            raise SystemExit(f"{args.target_from}: no completed epochs under training.epochs")
        chosen = epochs[-1] if args.target_epoch is None else next(
            (e for e in epochs if e["epoch"] == args.target_epoch), None)
        if chosen is None:
            raise SystemExit(f"{args.target_from}: epoch {args.target_epoch} not in training.epochs "
                             f"(have {[e['epoch'] for e in epochs]})")
        return {"nll_nats": chosen["test_nll_nats"], "pythae_train_s": chosen["train_wall_s_cumulative"],
                "epoch": chosen["epoch"], "source": str(args.target_from),
                "pythae_eval_images": training.get("eval_images"), "pythae_eval_samples": training.get("eval_samples"),
                "pythae_precision": training.get("precision"), "pythae_steps_per_epoch": training.get("steps_per_epoch")}
    if args.target is None:
        raise SystemExit("section ttq needs --target-from PYTHAE_JSON or --target NATS (with --pythae-train-s)")
    return {"nll_nats": args.target, "pythae_train_s": args.pythae_train_s, "source": "command line"}


def ttq_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """The preset's overrides for one seed: evaluation protocol, eval/checkpoint period, run name; then the user's."""
    return [
        f"name={args.run_prefix}-seed{seed}",
        f"out_dir={args.work_dir / 'ttq-runs'}",
        f"data.path={args.data_dir}",
        "eval.num_importance_samples=100",
        "eval.num_images=1000",
        f"train.eval_every={args.eval_every}",
        f"train.checkpoint_every={args.eval_every}",
        f"train.seed={seed}",
        *args.overrides,
    ]


def timed_engine_run(config: RunConfig, data: ImageData, entry: dict, save: Callable[[], None], resume: bool) -> None:
    """Train `config` with vaekit's Trainer, timing every evaluation and checkpoint from outside.

    The same steps as `vaekit.train` (load data, resolve config, check data, Trainer, run dir, run),
    with the Trainer's `_evaluate` and `_save` wrapped on the instance to timestamp them: the
    training wall time of an evaluation point excludes all evaluation and checkpoint time before
    it (data loading and model building are outside too). On resume the time accumulated up to
    the restored checkpoint is taken from `entry["checkpoints"]`.
    """
    config = resolve_config(config, data)
    _check_data(config, data)
    trainer = Trainer(config, data, init_distributed(config.train.device), quiet=True)
    run_dir = trainer.open_run_dir(resume=resume, force=not resume)
    base_wall = 0.0
    if resume:
        recorded = {c["step"]: c for c in entry["checkpoints"]}
        base_wall = recorded[trainer.step]["train_wall_s"] if trainer.step else 0.0
        entry["evals"] = [e for e in entry["evals"] if e["step"] <= trainer.step]
        entry["checkpoints"] = [c for c in entry["checkpoints"] if c["step"] <= trainer.step]
        entry["resumed_at_steps"] = entry.get("resumed_at_steps", []) + [trainer.step]
    excluded = 0.0
    start = time.perf_counter()
    metrics_file = run_dir / "metrics.jsonl"
    original_evaluate, original_save = trainer._evaluate, trainer._save

    def train_wall(now: float) -> float:
        return base_wall + (now - start) - excluded

    def evaluate() -> None:
        nonlocal excluded
        begin = time.perf_counter()
        original_evaluate()
        end = time.perf_counter()
        record = _last_test_record(metrics_file, trainer.step)
        entry["evals"].append({
            "step": trainer.step, "train_wall_s": train_wall(begin), "eval_wall_s": end - begin,
            "engine_train_seconds": record.get("train_seconds"),  # the engine's own step-time sum, a cross-check
            "nll": record.get("nll"), "nll_stderr": record.get("nll_stderr"), "elbo": record.get("elbo"),
            "loadavg": os.getloadavg(),
        })
        excluded += end - begin
        save()

    def save_checkpoint() -> None:
        nonlocal excluded
        begin = time.perf_counter()
        original_save()
        end = time.perf_counter()
        entry["checkpoints"].append({"step": trainer.step, "train_wall_s": train_wall(begin), "save_wall_s": end - begin})
        excluded += end - begin
        save()

    trainer._evaluate, trainer._save = evaluate, save_checkpoint
    trainer.run()
    entry["steps"] = trainer.step
    entry["complete"] = True
    save()


def _last_test_record(metrics_file: Path, step: int) -> dict[str, Any]:
    for line in reversed(metrics_file.read_text().splitlines()):
        record = json.loads(line)
        if record.get("split") == "test" and record.get("step") == step:
            return record
    return {}


def summarise_seed(entry: dict, target: dict, budget_s: float) -> None:
    evals = [e for e in entry["evals"] if e["nll"] is not None]
    reached = next((e for e in evals if e["nll"] <= target["nll_nats"]), None)
    within = [e for e in evals if e["train_wall_s"] <= budget_s]
    best = min(within, key=lambda e: e["nll"]) if within else None
    entry["summary"] = {
        "time_to_target_s": reached["train_wall_s"] if reached else None,
        "step_at_target": reached["step"] if reached else None,
        "nll_at_target_eval": reached["nll"] if reached else None,
        "speedup_vs_pythae": (target["pythae_train_s"] / reached["train_wall_s"])
        if reached and target.get("pythae_train_s") else None,
        "best_nll_within_budget": best["nll"] if best else None,
        "best_nll_within_budget_step": best["step"] if best else None,
        "best_nll_within_budget_train_s": best["train_wall_s"] if best else None,
        "final_nll": evals[-1]["nll"] if evals else None,
        "final_train_wall_s": evals[-1]["train_wall_s"] if evals else None,
    }


def run_ttq(args: argparse.Namespace, results: dict, save: Callable[[], None]) -> None:
    target = load_target(args)
    settings = {"preset": args.preset, "overrides": args.overrides, "eval_every": args.eval_every,
                "run_prefix": args.run_prefix}
    section = results.get("ttq", {})
    if not (args.resume and section.get("settings") == settings):
        section = {"settings": settings, "seeds": {}}
    section["target"] = target
    section["budget_s"] = args.budget_s
    section["timing"] = ("train_wall_s = wall time of vaekit's Trainer.run up to the evaluation, minus every "
                         "evaluation (test NLL K=100 on the first 1000 test images, latent scores, image grids) "
                         "and checkpoint before it; data loading and model building not counted (logging is). "
                         "engine_train_seconds is the engine's own sum of step times (logged with each evaluation). "
                         "time_to_target_s is the first evaluation at or below the target (an upper bound at "
                         "eval_every granularity).")
    results["ttq"] = section
    if target.get("pythae_eval_images") is not None:
        eval_config = load_config(args.preset, ttq_overrides(args, args.seeds[0])).eval
        target["protocol_matches_vaekit_eval"] = (
            target["pythae_eval_images"] == eval_config.num_images
            and target["pythae_eval_samples"] == eval_config.num_importance_samples
        )
    data_cache: dict[str, ImageData] = {}
    for seed in args.seeds:
        config = load_config(args.preset, ttq_overrides(args, seed))
        key = str(seed)
        entry = section["seeds"].get(key)
        if entry and entry.get("complete"):
            print(f"ttq seed {seed}: complete in the JSON, skipped", flush=True)
            continue
        run_dir = Path(config.out_dir) / config.name
        newest = list_checkpoints(run_dir / "checkpoints") if run_dir.exists() else []
        resume = False
        if args.resume and entry and newest:
            step = int(read_state(newest[-1])["step"])
            if any(c["step"] == step for c in entry["checkpoints"]):
                resume = True
            else:
                print(f"ttq seed {seed}: checkpoint step {step} has no recorded wall time; restarting the seed",
                      flush=True)
        if not resume:
            entry = {"seed": seed, "run_dir": str(run_dir), "evals": [], "checkpoints": [], "complete": False}
        section["seeds"][key] = entry
        data_key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
        if data_key not in data_cache:
            data_cache[data_key] = load_image_data(config.data)
        data = data_cache[data_key]
        entry["config"] = config.model_dump(mode="json")
        if args.ttq_pythae_steps and "pythae_samples_per_s" not in entry:
            entry["pythae_samples_per_s"] = ref.measure_throughput(  # pythae's fp32 training, here and now
                data.train, batch_size=args.batch_size, steps=args.ttq_pythae_steps, warmup=args.warmup, rounds=1,
                precisions=["fp32"], seed=seed, flops=0)["fp32"]["samples_per_s"]
            print(f"ttq seed {seed}: pythae trains at {entry['pythae_samples_per_s']:.1f} samples/s (fp32) now",
                  flush=True)

        def save_all(entry=entry) -> None:
            summarise_seed(entry, target, args.budget_s)
            summarise_ttq(section)
            save()

        print(f"ttq seed {seed}: {'resuming' if resume else 'training'} {config.name} "
              f"({config.train.steps} steps, eval every {config.train.eval_every})", flush=True)
        timed_engine_run(config, data, entry, save_all, resume)
        summarise_seed(entry, target, args.budget_s)
        s = entry["summary"]
        print(f"ttq seed {seed}: time to {target['nll_nats']:.2f} nats: {s['time_to_target_s']} s; "
              f"best within {args.budget_s:.0f}s: {s['best_nll_within_budget']}; final {s['final_nll']}", flush=True)
    for entry in section["seeds"].values():  # the target or budget may differ from an earlier, resumed call
        summarise_seed(entry, target, args.budget_s)
    summarise_ttq(section)
    save()


def summarise_ttq(section: dict) -> None:
    summaries = [e["summary"] for e in section["seeds"].values() if "summary" in e]
    times = [s["time_to_target_s"] for s in summaries if s["time_to_target_s"] is not None]
    bests = [s["best_nll_within_budget"] for s in summaries if s["best_nll_within_budget"] is not None]
    pythae_s = section["target"].get("pythae_train_s")
    rates = [e["pythae_samples_per_s"] for e in section["seeds"].values() if "pythae_samples_per_s" in e]
    # pythae's epochs to the target (the issue's: 10 of 60,000 images) at the throughput measured beside vaekit's runs
    samples = section["target"].get("epoch", PYTHAE_TARGET_EPOCHS) * FASHION_TRAIN_IMAGES
    pythae_s_here = samples / statistics.median(rates) if rates else None
    section["summary"] = {
        "seeds": len(summaries),
        "seeds_reaching_target": len(times),
        "time_to_target_s_median": statistics.median(times) if times else None,
        "time_to_target_s_max": max(times) if times else None,
        "speedup_vs_pythae_median": pythae_s / statistics.median(times) if times and pythae_s else None,
        "speedup_vs_pythae_min": pythae_s / max(times) if times and pythae_s else None,
        "pythae_samples_per_s_here": rates,
        "pythae_target_train_s_here": pythae_s_here,
        "speedup_vs_pythae_here_median": pythae_s_here / statistics.median(times) if times and rates else None,
        "speedup_vs_pythae_here_min": pythae_s_here / max(times) if times and rates else None,
        "best_nll_within_budget_mean": statistics.fmean(bests) if bests else None,
        "best_nll_within_budget_per_seed": bests,
    }


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (written atomically after each unit)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                   help="run directories and checkpoints (default benchmarks/results/partial/vae_vs_pythae, git-ignored)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sections run from --out and the checkpoints in --work-dir (same settings); "
                        "without it they start afresh (other sections' results in --out are kept either way)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--data-dir", type=Path, default=ref.DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=0, help="initialisation and draws of sections throughput and nll")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=100)
    g = p.add_argument_group("throughput")
    g.add_argument("--steps", type=int, default=20, help="timed steps per round, library and precision")
    g.add_argument("--warmup", type=int, default=3, help="untimed steps before each timed block")
    g.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    g.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (CPU autocast)")
    g = p.add_argument_group("nll")
    g.add_argument("--nll-k", type=int, default=1000, help="importance samples K per image (both sides)")
    g.add_argument("--nll-pythae-n", type=int, default=100, help="first N test images for pythae's get_nll (0 skips)")
    g.add_argument("--nll-vaekit-n", default="100,1000", help="comma list of N for vaekit")
    g.add_argument("--nll-precisions", default="fp32", help="comma list of precisions for vaekit's NLL (fp32, bf16)")
    g.add_argument("--nll-batch-size", type=int, default=100, help="pythae get_nll batch_size (min(K, this))")
    g.add_argument("--nll-interleave", type=int, default=50,
                   help="images per block: both libraries finish a block before either starts the next")
    g.add_argument("--nll-chunk", type=int, default=10, help="pythae images per seeded chunk (partial JSON after each)")
    g.add_argument("--samples-per-chunk", type=int, default=100, help="vaekit: importance samples decoded per call")
    g.add_argument("--images-per-chunk", type=int, default=10, help="vaekit: images per call (partial JSON after each)")
    g.add_argument("--nll-train-steps", type=int, default=600, help="fp32 steps of pythae's model before the NLL")
    g.add_argument("--nll-checkpoint", type=Path, default=None,
                   help="use the weights of a pythae_vae.py --train-epochs checkpoint folder instead of training")
    g = p.add_argument_group("ttq (time to quality)")
    g.add_argument("--preset", default="fashion-mnist-vae", help="vaekit preset name or YAML file")
    g.add_argument("--overrides", nargs="*", default=[], help="key=value overrides applied last")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g.add_argument("--eval-every", type=int, default=1000, help="train.eval_every = train.checkpoint_every")
    g.add_argument("--run-prefix", default="ttq", help="run directories WORK_DIR/ttq-runs/PREFIX-seedS")
    g.add_argument("--target-from", type=Path, default=None, help="pythae_vae.py JSON with training.epochs")
    g.add_argument("--target-epoch", type=int, default=None, help="epoch of --target-from (default: its last)")
    g.add_argument("--target", type=float, default=None, help="target test NLL in nats (instead of --target-from)")
    g.add_argument("--pythae-train-s", type=float, default=None, help="pythae's training seconds to --target")
    g.add_argument("--ttq-pythae-steps", type=int, default=20,
                   help="before each seed, time this many fp32 steps of pythae's training (0: skip); its 10 "
                        "epochs at that rate give a same-machine reference beside --pythae-train-s")
    g.add_argument("--budget-s", type=float, default=600.0, help="report the best NLL within this much training")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    args.nll_precisions = [s.strip() for s in args.nll_precisions.split(",") if s.strip()]
    for precision in args.precisions + args.nll_precisions:
        ref.autocast(precision)  # validates the name
    args.nll_vaekit_n = [int(n) for n in args.nll_vaekit_n.split(",") if n.strip()]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Sections not run in this call keep their results; a section that runs starts afresh unless
    # --resume is given and its settings match what the JSON holds.
    results: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["environment"] = {**ref.environment(args.threads), "vaekit": vaekit.__version__,
                              "vaekit_git": git_hash()}
    results.setdefault("calls", []).append({"argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                            "loadavg_start": os.getloadavg()})

    def save() -> None:
        ref.write_json(args.out, results)

    data = load_image_data(DataConfig(name="fashion_mnist", path=str(args.data_dir), binarize="dynamic"))
    pythae_test = ref.binarized_test_set(args.data_dir)
    results["protocol"] = {
        "data": "Fashion-MNIST pixels/255; training batches binarised afresh (pythae: pythae_vae.random_batch; "
                "vaekit: the engine's per-step generator)",
        "test_set_sha256_vaekit": ref.tensor_sha256(data.test),
        "test_set_sha256_pythae_vae": ref.tensor_sha256(pythae_test),
        "test_sets_identical": bool(torch.equal(data.test, pythae_test)),
        "nll_units": "nats per image, Bernoulli log-likelihood summed over 784 pixels",
    }
    save()

    if "check" in args.sections:
        x = ref.random_batch(data.train, args.batch_size, torch.Generator().manual_seed(args.seed))
        results["loss_check_init"] = loss_agreement(ref.build_model(args.seed), x, args.seed)
        r = results["loss_check_init"]
        print(f"loss check (init): pythae {r['train']['pythae_loss']:.4f} vaekit {r['train']['vaekit_loss']:.4f} "
              f"(train mode), eval mode rel diff {r['eval']['rel_diff']:.2e}, agree {r['agree']}, "
              f"after pythae's clamp error {r['agree_after_clamp_correction']}", flush=True)
        save()
    if "throughput" in args.sections:
        run_throughput(args, results, data, save)
    if "nll" in args.sections:
        run_nll(args, results, data, save)
    if "ttq" in args.sections:
        run_ttq(args, results, save)
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["calls"][-1]["loadavg_end"] = os.getloadavg()
    save()


if __name__ == "__main__":
    sys.exit(main())
