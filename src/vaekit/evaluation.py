"""What `vaekit eval` and the training loop's periodic evaluation compute and draw, by model capability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaekit.config import EvalConfig
from vaekit.data import ImageData, PointCloudData
from vaekit.engine.distributed import ONE_PROCESS, Shard
from vaekit.errors import CapabilityError, ConfigError
from vaekit.latent_paths import slerp, traversal
from vaekit.metrics.images import (
    encoded_posterior,
    latent_scores,
    likelihood_scores,
    reconstruction_scores,
)
from vaekit.metrics.latent import kl_per_dimension
from vaekit.metrics.pointclouds import linear_svm_accuracy
from vaekit.metrics.pointclouds import reconstruction_scores as point_cloud_scores
from vaekit.models import GenerativeModel
from vaekit.models.base import Capability
from vaekit.viz import save_image_grid, save_point_cloud_grid, save_posterior_plot


def test_images(model: GenerativeModel, data: ImageData | PointCloudData, config: EvalConfig) -> torch.Tensor:
    """The first eval.num_images test examples (images or clouds), on the model's device."""
    x = data.test if config.num_images is None else data.test[: config.num_images]
    return x.to(model.device)


@torch.inference_mode()
def evaluate(model: GenerativeModel, data: ImageData | PointCloudData, config: EvalConfig, *,
             progress: bool = False, shard: Shard = ONE_PROCESS) -> dict[str, Any]:
    """Scores of `model` on the test split: likelihood (latent-variable models), latents, reconstructions.

    `progress` shows a bar over the importance-sampled NLL, the long part. Under torchrun every
    process calls this with its `shard` (`DistContext.shard`): each scores its share of the test
    examples (NLL images, encodings, reconstructions, features) and every process returns the
    gathered scores, the 1-process numbers. What is not shared (a model's `extra_scores`, drawing
    samples, fitting the SVM) runs on every process alike.
    """
    was_training = model.training
    model.eval()
    x = test_images(model, data, config)
    results: dict[str, Any] = {}
    if isinstance(data, PointCloudData):
        results |= point_cloud_scores(model, x, config.images_per_chunk, emd=config.point_cloud_emd, shard=shard)
        if model.can(Capability.FLAT_CODES) and len(data.categories) > 1:
            results["svm_accuracy"] = representation_test(model, data, config.images_per_chunk, shard=shard)
        results |= model.extra_scores(x)
        model.train(was_training)
        return results
    if model.can(Capability.LIKELIHOOD):
        def nll_scores(num_samples: int) -> dict[str, float]:
            other = config.model_copy(update={"num_importance_samples": num_samples})
            return likelihood_scores(model, x, other, is_discrete=model.likelihood.is_discrete,
                                     num_levels=data.num_levels, progress=progress, shard=shard)

        results |= nll_scores(config.num_importance_samples)
        for k in config.extra_importance_samples:  # the gap between K's shows whether the estimate converged
            results[f"nll_k{k}"] = nll_scores(k)["nll"]
    if model.can(Capability.GAUSSIAN_POSTERIOR):
        results |= latent_scores(model, x, config, shard=shard)
        if "elbo" in results:
            results["reconstruction_nll"] = -(results["elbo"] + results["kl"])
    results |= reconstruction_scores(model, x, config.images_per_chunk, shard=shard)
    results |= model.extra_scores(x)
    if config.sample_quality_samples and model.can(Capability.SAMPLE):
        results |= sample_quality(model, data, config.sample_quality_samples, seed=config.seed, shard=shard)
    model.train(was_training)
    return results


@torch.inference_mode()
def representation_test(model: GenerativeModel, data: PointCloudData, chunk: int, *,
                        shard: Shard = ONE_PROCESS) -> float:
    """Linear-SVM category accuracy on the test split's latent codes, trained on the train split's."""
    def codes(clouds: torch.Tensor) -> torch.Tensor:
        return shard.map_rows(lambda rows, _: model.latent_codes(rows.to(model.device)).float().cpu(), clouds, chunk)

    return linear_svm_accuracy(codes(data.train), data.train_labels, codes(data.test), data.test_labels)


@torch.inference_mode()
def sample_quality(model: GenerativeModel, data: ImageData, num_samples: int, *, seed: int,
                   shard: Shard = ONE_PROCESS) -> dict[str, float]:
    """FD and KID between decoder-mean samples and the grey-level test split, in vaekit's Fashion-MNIST
    classifier features ("FD in vaekit's Fashion-MNIST classifier features", not Inception FID).

    Every process draws every sample (one generator); each computes the features of its share."""
    if data.name != "fashion_mnist":
        raise ConfigError("eval.sample_quality_samples scores Fashion-MNIST runs only (its classifier's features)")
    from vaekit.metrics.features import (
        FEATURE_CHUNK,
        classifier_features,
        frechet_distance,
        kernel_inception_distance,
        load_classifier,
    )

    generator = torch.Generator().manual_seed(seed)
    samples = torch.cat([model.sample(min(1000, num_samples - done), generator=generator).cpu()
                         for done in range(0, num_samples, 1000)])
    reference = data.test_grey if data.test_grey is not None else data.test
    classifier = load_classifier()

    def features(images: torch.Tensor) -> torch.Tensor:
        return shard.map_rows(lambda rows, _: classifier_features(rows, classifier), images, FEATURE_CHUNK)

    fake, real = features(samples), features(reference.cpu())
    kid, kid_std = kernel_inception_distance(fake, real, seed=seed)
    return {"fd_classifier": frechet_distance(fake, real), "kid_classifier": kid, "kid_classifier_std": kid_std,
            "sample_quality_samples": num_samples}


@torch.inference_mode()
def write_posterior_plot(model: GenerativeModel, data: ImageData, config: EvalConfig, path: Path) -> Path:
    """`vaekit eval --plots`: the distributions of the encoder's mean and log_var per latent dimension."""
    if not model.can(Capability.GAUSSIAN_POSTERIOR):
        raise CapabilityError(f"model {model.config.name!r} has no Gaussian encoder: --plots draws the mean and "
                              "log_var of q(z|x)")
    posterior = encoded_posterior(model, test_images(model, data, config), config.images_per_chunk)
    return save_posterior_plot(posterior.mean, posterior.log_var, kl_per_dimension(posterior), path)


@torch.inference_mode()
def write_pictures(model: GenerativeModel, data: ImageData | PointCloudData, run_dir: Path, step: int,
                   config: EvalConfig) -> list[Path]:
    """PNG pictures of the model at `step`: image grids or point-cloud renders."""
    if isinstance(data, PointCloudData):
        return write_point_cloud_renders(model, data, run_dir, step, config)
    return write_image_grids(model, data, run_dir, step, config)


@torch.inference_mode()
def write_point_cloud_renders(model: GenerativeModel, data: PointCloudData, run_dir: Path, step: int,
                              config: EvalConfig) -> list[Path]:
    """reconstructions/ (5 test shapes above their reconstructions), interpolations/, samples/ if it samples."""
    x = test_images(model, data, config)
    picks = x[torch.linspace(0, len(x) - 1, 5).long()]  # spread over the (category-ordered) test split
    written = [save_point_cloud_grid(torch.cat([picks, model.reconstruct(picks)]),
                                     run_dir / "reconstructions" / f"step-{step}.png")]
    if model.can(Capability.FLAT_CODES):
        written.append(save_point_cloud_grid(linear_interpolation(model, picks[0], picks[-1]),
                                             run_dir / "interpolations" / f"step-{step}.png"))
    if model.can(Capability.SAMPLE):
        for temperature in config.sample_temperatures:
            samples = model.sample(10, generator=torch.Generator().manual_seed(config.seed), temperature=temperature)
            written.append(save_point_cloud_grid(samples, run_dir / "samples" / sample_file_name(step, temperature)))
    return written


def sample_file_name(step: int, temperature: float) -> str:
    """samples/step-N.png at temperature 1, step-N-t0.7.png at another."""
    return f"step-{step}.png" if temperature == 1.0 else f"step-{step}-t{temperature:g}.png"


def linear_interpolation(model: GenerativeModel, start: torch.Tensor, end: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Decode codes on the segment between two inputs' codes (Achlioptas et al. 2018, fig. 3): (steps, ...)."""
    model.require(Capability.FLAT_CODES, "interpolate between continuous codes")
    codes = model.latent_codes(torch.stack([start, end]))
    t = torch.linspace(0, 1, steps, device=codes.device).unsqueeze(1)
    return model.decode_mean(codes[:1] + t * (codes[1:] - codes[:1]))


@torch.inference_mode()
def write_image_grids(model: GenerativeModel, data: ImageData, run_dir: Path, step: int, config: EvalConfig) -> list[Path]:
    """samples/ (models that sample), reconstructions/ (originals above, reconstructions below), and for
    flat continuous codes traversals/ and interpolations/."""
    n = config.num_grid_images
    x = test_images(model, data, config)[: min(n, 32)]
    written = [
        save_image_grid(originals_over_reconstructions(model, x), run_dir / "reconstructions" / f"step-{step}.png"),
    ]
    if model.can(Capability.SAMPLE):
        for temperature in config.sample_temperatures:
            samples = model.sample(n, generator=torch.Generator().manual_seed(config.seed), temperature=temperature)
            written.append(save_image_grid(samples, run_dir / "samples" / sample_file_name(step, temperature)))
    if model.can(Capability.FLAT_CODES):
        written.append(save_image_grid(traversal_images(model, x[:1]), run_dir / "traversals" / f"step-{step}.png", nrow=11))
        written.append(save_image_grid(interpolation_images(model, x), run_dir / "interpolations" / f"step-{step}.png", nrow=10))
    return written


def originals_over_reconstructions(model: GenerativeModel, x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of `per_row` test images, each followed by the row of their reconstructions."""
    x = x[: max(per_row, len(x) // per_row * per_row)]
    rows = -(-len(x) // per_row)
    pad = rows * per_row - len(x)
    x = torch.cat([x, x.new_ones(pad, *x.shape[1:])]) if pad else x
    pairs = torch.stack([x.view(rows, per_row, *x.shape[1:]), model.reconstruct(x).view(rows, per_row, *x.shape[1:])], 1)
    return pairs.reshape(-1, *x.shape[1:])  # (rows * 2 * per_row, C, H, W)


def traversal_images(model: GenerativeModel, x: torch.Tensor, max_dims: int = 16, span: float = 3.0) -> torch.Tensor:
    """Decode z with one dimension at a time swept over [-span, span] around x's code."""
    model.require(Capability.FLAT_CODES, "traverse continuous code dimensions")
    center = model.latent_codes(x)[0]
    dims = list(range(min(max_dims, center.numel())))
    z = traversal(center, dims, torch.linspace(-span, span, 11, device=center.device))  # (dims, 11, D)
    return model.decode_mean(z.reshape(-1, center.numel()))


def interpolation_images(model: GenerativeModel, x: torch.Tensor, pairs: int = 8, steps: int = 10) -> torch.Tensor:
    """Slerp between the codes of consecutive test images, decoded: (pairs*steps, C, H, W)."""
    model.require(Capability.FLAT_CODES, "interpolate between continuous codes")
    pairs = max(1, min(pairs, len(x) // 2))
    means = model.latent_codes(x[: 2 * pairs])
    path = slerp(means[0::2], means[1::2], torch.linspace(0, 1, steps, device=means.device))  # (P, T, D)
    return model.decode_mean(path.reshape(-1, means.shape[-1]))
