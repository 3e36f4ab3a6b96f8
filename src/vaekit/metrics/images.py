"""Test-split scores of an image model: importance-sampled NLL, ELBO, KL, bits/dim, reconstruction
error, and the latent diagnostics of a Gaussian encoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaekit.batch import ExampleNoise
from vaekit.config import EvalConfig
from vaekit.distributions import DiagonalGaussian
from vaekit.engine.distributed import ONE_PROCESS, Shard
from vaekit.metrics.latent import (
    active_units,
    aggregate_kl_and_mutual_information,
    kl_per_dimension,
)
from vaekit.objectives import bits_per_dim, dequantised_bits_per_dim, importance_sampled_log_px


@torch.inference_mode()
def per_image_log_px(model: Any, x: Tensor, config: EvalConfig, *, shard: Shard = ONE_PROCESS,
                     progress: bool = False) -> tuple[Tensor, Tensor]:
    """Importance-sampled log p(x) (Burda et al. 2016 eq. (8)) and the ELBO of the same K draws, per image: (N,) each.

    The draws of image n come from its own generator, keyed by (eval.seed, n) and read
    `eval.samples_per_chunk` draws at a time, so its numbers do not depend on the chunk or the
    process that scores it; each process scores its share of the images (`shard`) and every process
    gets them all. `progress` shows a bar over this process's images with their running NLL.
    """
    scored: list[Tensor] = []  # this process's log p(x) so far, for the bar
    with tqdm(total=len(shard.indices(len(x))), disable=not progress, desc=f"NLL, K={config.num_importance_samples}",
              unit="image", leave=False, dynamic_ncols=True, mininterval=0) as bar:  # one redraw per chunk of images

        def score(images: Tensor, indices: Tensor) -> Tensor:
            noise = ExampleNoise.of(config.seed, indices.tolist(), device=x.device)
            lp, elbo = importance_sampled_log_px(model, images, num_samples=config.num_importance_samples,
                                                 samples_per_chunk=config.samples_per_chunk, generator=noise)
            if progress:  # the running NLL (a device sync, so only when shown)
                scored.append(lp)
                bar.set_postfix(nll=f"{-torch.cat(scored).double().mean().item():.4g}", refresh=False)
            bar.update(len(images))
            return torch.stack([lp, elbo], 1)  # (B, 2)

        log_px, elbo = shard.map_rows(score, x, config.images_per_chunk).T.contiguous()  # (N,) each
    return log_px, elbo


@torch.inference_mode()
def likelihood_scores(
    model: Any, x: Tensor, config: EvalConfig, *, is_discrete: bool, num_levels: int, progress: bool = False,
    shard: Shard = ONE_PROCESS,
) -> dict[str, float]:
    """NLL = -log p(x) with K importance samples, the ELBO from the same draws, and bits/dim.

    Bits/dim are exact for discrete likelihoods; for a density (Gaussian) they carry the
    bin-width correction of `dequantised_bits_per_dim`, reported under its own name. `progress`
    shows a bar over the images with the running NLL (K=1000 on 1000 images takes minutes on a CPU);
    `shard` shares the images among processes (`per_image_log_px`).
    """
    log_px, elbo = per_image_log_px(model, x, config, shard=shard, progress=progress)
    nll = -log_px.double().mean().item()
    num_dims = x[0].numel()
    scores = {
        "nll": nll,
        "nll_stderr": log_px.double().std().item() / len(x) ** 0.5,
        "elbo": elbo.double().mean().item(),
        "importance_samples": config.num_importance_samples,
        "num_images": len(x),
    }
    if is_discrete:
        scores["bits_per_dim"] = bits_per_dim(nll, num_dims)
    else:
        scores["bits_per_dim_dequantised"] = dequantised_bits_per_dim(nll, num_dims, num_levels)
    return scores


@torch.inference_mode()
def reconstruction_scores(model: Any, x: Tensor, chunk: int, *, shard: Shard = ONE_PROCESS) -> dict[str, float]:
    """Mean squared error per pixel of the deterministic reconstruction, and its PSNR (peak 1)."""
    squared = shard.map_rows(lambda rows, _: ((model.reconstruct(rows) - rows) ** 2).flatten(1).mean(1), x, chunk)
    mse = squared.double().mean().item()
    return {"reconstruction_mse": mse, "psnr": float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))))}


@torch.inference_mode()
def encoded_posterior(model: Any, x: Tensor, chunk: int, *, shard: Shard = ONE_PROCESS) -> DiagonalGaussian:
    """q(z|x_n) of every image, encoded `chunk` at a time, each process its share: mean, log_var (N, D) in fp32."""
    def moments(rows: Tensor, _: Tensor) -> Tensor:
        posterior = model.encode(rows)
        return torch.cat([posterior.mean, posterior.log_var], 1).float()  # (B, 2D)

    mean, log_var = shard.map_rows(moments, x, chunk).chunk(2, dim=1)
    return DiagonalGaussian(mean=mean.contiguous(), log_var=log_var.contiguous())


@torch.inference_mode()
def latent_scores(model: Any, x: Tensor, config: EvalConfig, *, shard: Shard = ONE_PROCESS) -> dict[str, Any]:
    """KL per dimension, active units, KL(q(z)||p(z)) and I(x; z) of a Gaussian encoder."""
    posterior = encoded_posterior(model, x, config.images_per_chunk, shard=shard)
    kl_dims = kl_per_dimension(posterior)
    active = active_units(posterior, config.active_unit_threshold)
    generator = torch.Generator().manual_seed(config.seed + 1)
    aggregate_kl, mutual_information = aggregate_kl_and_mutual_information(posterior, generator, shard=shard)
    return {
        "kl": kl_dims.sum().item(),
        "kl_per_dim": [round(v, 5) for v in kl_dims.tolist()],
        "active_units": int(active.sum()),
        "latent_dim": int(active.numel()),
        "aggregate_kl": aggregate_kl,
        "mutual_information": mutual_information,
    }
