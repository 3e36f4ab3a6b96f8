"""Pictures, written atomically as PNG: image grids (Pillow), point-cloud renders and posterior plots (matplotlib)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.io import atomic_write_bytes


def image_grid(images: Tensor, nrow: int, padding: int = 1) -> np.ndarray:
    """Tile images (N, C, H, W) in [0, 1] into one uint8 array (rows*H', cols*W', C) with padding."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    images = images.detach().float().clamp(0, 1).cpu()
    count, channels, height, width = images.shape
    ncol = min(nrow, count)
    nrows = -(-count // ncol)
    cell_h, cell_w = height + padding, width + padding
    canvas = torch.ones(channels, nrows * cell_h + padding, ncol * cell_w + padding)
    for index in range(count):
        row, col = divmod(index, ncol)
        top, left = padding + row * cell_h, padding + col * cell_w
        canvas[:, top : top + height, left : left + width] = images[index]
    return (canvas.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def save_image_grid(images: Tensor, path: str | Path, nrow: int = 8, min_tile: int = 56) -> Path:
    """Write a PNG grid of images (N, C, H, W) in [0, 1]; small images are enlarged (nearest)."""
    grid = image_grid(images, nrow)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = max(1, -(-min_tile // images.shape[-1]))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_point_cloud_grid(clouds: Tensor, path: str | Path, ncols: int = 5, titles: list[str] | None = None,
                          point_size: float | None = None) -> Path:
    """Render clouds (N, P, 3) as a grid of 3-D scatter plots (matplotlib, Agg) into a PNG, atomically.

    `point_size` (marker area) defaults to one that keeps a cloud equally dark at any P: 1 at 2048 points.
    """
    plt = _pyplot()
    clouds = clouds.detach().float().cpu().numpy()
    count = len(clouds)
    point_size = point_size if point_size is not None else min(8.0, 2048 / max(1, clouds.shape[1]))
    nrows = -(-count // ncols)
    figure = plt.figure(figsize=(2.2 * ncols, 2.2 * nrows), dpi=100)
    limit = float(np.abs(clouds).max()) if count else 1.0
    for index, cloud in enumerate(clouds):
        axes = figure.add_subplot(nrows, ncols, index + 1, projection="3d")
        axes.scatter(cloud[:, 0], cloud[:, 1], cloud[:, 2], s=point_size, c=cloud[:, 2], cmap="viridis", linewidths=0)
        axes.set_xlim(-limit, limit), axes.set_ylim(-limit, limit), axes.set_zlim(-limit, limit)
        axes.view_init(elev=20, azim=-60)
        axes.set_axis_off()
        if titles:
            axes.set_title(titles[index], fontsize=8)
    figure.tight_layout(pad=0.1)
    return _save_figure(figure, path)


def _save_figure(figure: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def save_posterior_plot(mean: Tensor, log_var: Tensor, kl_per_dim: Tensor, path: str | Path) -> Path:
    """Per latent dimension, box plots of the encoder's `mean` and `log_var` over a dataset: (N, D) each.

    Dimensions are ordered by their KL to the prior, largest first. A dimension that matches
    N(0, 1) for every input (mean ~ 0, log_var ~ 0) carries no information (posterior collapse); an
    informative one has a spread of means and a tight posterior (log_var well below 0).
    """
    plt = _pyplot()
    order = torch.argsort(kl_per_dim, descending=True)
    labels = [str(int(d)) for d in order]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(order) + 2), 6), dpi=100, sharex=True)
    top.boxplot(mean[:, order].cpu().numpy(), showfliers=False)
    top.axhline(0.0, color="grey", linewidth=0.5)
    top.set_ylabel("mean")
    top.set_title("q(z|x) over the test set, per latent dimension (largest KL left)", fontsize=10)
    bottom.boxplot(log_var[:, order].cpu().numpy(), showfliers=False)
    bottom.axhline(0.0, color="grey", linewidth=0.5)
    bottom.set_ylabel("log_var")
    bottom.set_xticks(range(1, len(order) + 1), labels, fontsize=7)
    bottom.set_xlabel("latent dimension")
    figure.tight_layout()
    return _save_figure(figure, path)


def save_rate_distortion_plot(rates: list[float], distortions: list[float], labels: list[str], path: str | Path, *,
                              rate_label: str = "rate (nats)", distortion_label: str = "distortion (nats)") -> Path:
    """A rate-distortion curve (Alemi et al. 2018): one labelled point per model, joined in rate order."""
    plt = _pyplot()
    if not len(rates) == len(distortions) == len(labels):
        raise ValueError("rates, distortions and labels must have the same length")
    order = sorted(range(len(rates)), key=rates.__getitem__)
    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    axes.plot([rates[i] for i in order], [distortions[i] for i in order], "o-")
    for rate, distortion, label in zip(rates, distortions, labels):
        axes.annotate(label, (rate, distortion), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel(rate_label)
    axes.set_ylabel(distortion_label)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_codec_comparison_plot(curves: dict[str, list[tuple[float, float]]], path: str | Path) -> Path:
    """Rate-distortion of image codecs: per codec its (bytes per image, PSNR in dB) points, bytes on a log axis."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4), dpi=100)
    for name, points in curves.items():
        ordered = sorted(points)
        axes.plot([b for b, _ in ordered], [p for _, p in ordered], "o-" if len(points) < 8 else ".-", label=name)
    axes.set_xscale("log")
    axes.set_xlabel("bytes per image")
    axes.set_ylabel("PSNR (dB)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_kl_per_group_plot(kl_per_group: Mapping[str, Sequence[float]], path: str | Path, *,
                           group_labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Bars of the test mean KL(q(z_l | z_<l, x) || p(z_l | z_<l)) in nats per latent group z_1..z_L (coarsest
    first), one bar per run, its value above it; every run in `kl_per_group` (label -> L values) has the same L."""
    plt = _pyplot()
    runs = list(kl_per_group)
    sizes = {len(values) for values in kl_per_group.values()}
    if len(sizes) != 1:
        raise ValueError(f"every run needs the same number of latent groups, got {sorted(sizes)}")
    num_groups = sizes.pop()
    labels = list(group_labels) if group_labels is not None else [f"$z_{{{g + 1}}}$" for g in range(num_groups)]
    if len(labels) != num_groups:
        raise ValueError(f"{len(labels)} group labels for {num_groups} latent groups")
    width = 0.8 / len(runs)
    figure, axes = plt.subplots(figsize=(max(5.0, 1.2 * num_groups + 2.0), 3.6), dpi=100)
    for index, run in enumerate(runs):
        positions = [group - 0.4 + (index + 0.5) * width for group in range(num_groups)]
        axes.bar_label(axes.bar(positions, list(kl_per_group[run]), width, label=run), fmt="%.1f", fontsize=8,
                       padding=2)
    axes.set_xticks(range(num_groups), labels)
    axes.set_xlabel("latent group (coarsest first)")
    axes.set_ylabel("KL (nats, test mean)")
    axes.margins(y=0.15)
    if title:
        axes.set_title(title, fontsize=10)
    if len(runs) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save_figure(figure, path)


def save_lossless_rate_plot(bytes_per_image: Mapping[str, float], path: str | Path, *,
                            negative_elbo: Mapping[str, float] | None = None, title: str | None = None) -> Path:
    """Horizontal bars of lossless codecs' bytes per image (log axis), fewest first, each value at its bar's end; a codec in
    `negative_elbo` (label -> its model's -ELBO in bytes per image) is drawn in another colour with that bound
    marked, the rate bits-back coding reaches."""
    plt = _pyplot()
    bounds = dict(negative_elbo or {})
    unknown = sorted(set(bounds) - set(bytes_per_image))
    if unknown:
        raise ValueError(f"-ELBO given for codecs without a rate: {unknown}")
    labels = sorted(bytes_per_image, key=bytes_per_image.__getitem__, reverse=True)  # fewest bytes on top
    figure, axes = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.2), dpi=100)
    colours = ["tab:orange" if label in bounds else "tab:gray" for label in labels]
    bars = axes.barh(range(len(labels)), [bytes_per_image[label] for label in labels], color=colours)
    axes.bar_label(bars, fmt="%.1f", fontsize=8, padding=2)
    for row, label in enumerate(labels):
        if label in bounds:
            axes.plot([bounds[label]] * 2, [row - 0.4, row + 0.4], color="black", linewidth=1.5)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xscale("log")  # per-file codecs can cost 10-20x a model's stream
    axes.set_xlim(min(bytes_per_image.values()) / 2, max(bytes_per_image.values()) * 2.5)
    axes.set_xlabel("bytes per image, log scale" + (" (black tick: the model's -ELBO)" if bounds else ""))
    if title:
        axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save_figure(figure, path)
