"""Point-cloud metrics with PointFlow's conventions (Yang et al. 2019, whose evaluation code later papers use).

Between a generated set S and a reference set R of clouds, from distance matrices computed once:
- minimum matching distance (the point-cloud "MMD", not the kernel MMD): mean over r of min_s d(s, r);
- coverage COV: the share of references that are the nearest reference of some sample;
- 1-NNA: leave-one-out accuracy of the 1-nearest-neighbour classifier telling S from R in S + R
  (50% is ideal, 100% means the sets are told apart);
- JSD (base 2) between the per-cell point counts of S and of R on a 28^3 grid over [-0.5, 0.5]^3,
  each point counted in the cell of its nearest grid point (clouds should fit the unit box).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import entropy
from torch import Tensor
from tqdm.auto import tqdm

from vaekit.divergences import chamfer_distance
from vaekit.emd import earth_movers_distance
from vaekit.engine.distributed import ONE_PROCESS, Shard
from vaekit.io import atomic_write_npz
from vaekit.nearest import nearest_squared_distances


@torch.inference_mode()
def reconstruction_scores(model: Any, clouds: Tensor, chunk: int, *, emd: bool = False,
                          shard: Shard = ONE_PROCESS) -> dict[str, float]:
    """Mean Chamfer distance (squared) and, if asked, mean exact EMD between test clouds and their reconstructions.

    Each process scores its share of the clouds (`shard`) and every process gets the means.
    """
    def per_cloud(batch: Tensor, _: Tensor) -> Tensor:
        reconstruction = model.reconstruct(batch).float()
        columns = [chamfer_distance(batch, reconstruction, reduction="none").double()]
        if emd:
            columns.append(torch.tensor([earth_movers_distance(a, b) for a, b in zip(batch, reconstruction)],
                                        dtype=torch.float64, device=columns[0].device))
        return torch.stack(columns, 1)  # (B, 1 or 2)

    chamfer, *exact = shard.map_rows(per_cloud, clouds, chunk).T.contiguous()  # (N,) each
    scores = {"reconstruction_chamfer": chamfer.mean().item(), "num_clouds": len(clouds)}
    if emd:
        scores["reconstruction_emd"] = float(np.mean(exact[0].cpu().numpy()))
    return scores


@torch.inference_mode()
def linear_svm_accuracy(train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor) -> float:
    """Test accuracy of a linear SVM on standardised latent codes (Achlioptas et al. 2018, sec. 5.1's representation test)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    classifier = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=20_000, random_state=0))
    classifier.fit(train_codes.double().cpu().numpy(), train_labels.cpu().numpy())
    return float(classifier.score(test_codes.double().cpu().numpy(), test_labels.cpu().numpy()))


@torch.inference_mode()
def chamfer_matrix(rows: Tensor, columns: Tensor | None = None, *, pairs_per_batch: int = 64,
                   progress: bool = False, state_path: Path | None = None, save_every_s: float = 60.0,
                   shard: Shard = ONE_PROCESS) -> Tensor:
    """Chamfer distance of every pair: rows (N, P, 3), columns (M, Q, 3) -> (N, M), float64.

    Without `columns`, the symmetric matrix of `rows` with itself: each pair i < j computed once.
    Values only (`nearest_squared_distances`, no neighbour indices), in the clouds' precision.
    Each process computes its share of the batches of pairs (`shard`) and every process gets the
    whole matrix. With `state_path`, the matrix computed so far is saved there (.npz, atomically;
    one file per process, `Shard.own_file`) every `save_every_s` seconds, and a later call with the
    same inputs and process count resumes from it.
    """
    symmetric = columns is None
    columns = rows if columns is None else columns
    if symmetric:
        pairs = torch.triu_indices(len(rows), len(rows), offset=1).T  # (N(N-1)/2, 2)
    else:
        row_index, column_index = torch.meshgrid(torch.arange(len(rows)), torch.arange(len(columns)), indexing="ij")
        pairs = torch.stack([row_index.flatten(), column_index.flatten()], 1)  # (N*M, 2)
    batches = pairs.split(pairs_per_batch)
    own = shard.indices(len(batches))
    state_path = shard.own_file(state_path)
    out, done = _load_matrix_state(state_path, (len(rows), len(columns)), len(own))
    last_save = time.monotonic()
    for position in tqdm(range(done, len(own)), disable=not progress, desc="chamfer pairs", initial=done,
                         total=len(own)):
        batch = batches[own[position]]
        to_column, to_row = nearest_squared_distances(rows[batch[:, 0]], columns[batch[:, 1]])
        out[batch[:, 0], batch[:, 1]] = (to_column.mean(1) + to_row.mean(1)).double().cpu()  # Chamfer, values only
        if state_path is not None and (time.monotonic() - last_save > save_every_s or position + 1 == len(own)):
            _save_matrix_state(state_path, out, position + 1, len(own))
            last_save = time.monotonic()
    out = shard.sum(out)  # each process's entries, zero elsewhere
    if symmetric:
        out = out + out.T
    return out


def _save_matrix_state(path: Path, matrix: Tensor, batches_done: int, batches: int) -> None:
    atomic_write_npz(path, matrix=matrix.numpy(), progress=np.array([batches_done, batches]))


def _load_matrix_state(path: Path | None, shape: tuple[int, int], batches: int) -> tuple[Tensor, int]:
    """A saved partial matrix and the batches it holds, or zeros and 0; a state of other inputs is refused."""
    if path is None or not path.exists():
        return torch.zeros(shape, dtype=torch.float64), 0
    with np.load(path) as stored:
        done, total = stored["progress"].tolist()
        if stored["matrix"].shape != shape or total != batches:
            raise ValueError(f"{path} holds a Chamfer matrix of other inputs ({stored['matrix'].shape}, {total} batches); "
                             f"expected {shape} in {batches} batches: delete it to start afresh")
        return torch.from_numpy(stored["matrix"].copy()), int(done)


@dataclass(frozen=True)
class SetDistances:
    """The three matrices every set metric needs, each computed once: S-R, S-S, R-R."""

    sample_reference: Tensor  # (|S|, |R|)
    sample_sample: Tensor  # (|S|, |S|)
    reference_reference: Tensor  # (|R|, |R|)


def minimum_matching_distance(d: SetDistances) -> float:
    """Mean over references of the distance to the nearest sample (Achlioptas et al. 2018, "MMD")."""
    return d.sample_reference.min(0).values.mean().item()


def coverage(d: SetDistances) -> float:
    """Share of references that are the nearest reference of at least one sample (Achlioptas et al. 2018)."""
    matched = d.sample_reference.argmin(1).unique()
    return len(matched) / d.sample_reference.shape[1]


def one_nearest_neighbour_accuracy(d: SetDistances) -> float:
    """Leave-one-out 1-NN accuracy on S + R labelled by set (Lopez-Paz & Oquab 2017; PointFlow's 1-NNA)."""
    top = torch.cat([d.sample_sample, d.sample_reference], 1)  # (|S|, |S|+|R|)
    bottom = torch.cat([d.sample_reference.T, d.reference_reference], 1)  # (|R|, |S|+|R|)
    full = torch.cat([top, bottom]).clone()
    full.fill_diagonal_(float("inf"))  # leave one out
    num_samples = d.sample_sample.shape[0]
    nearest_is_sample = full.argmin(1) < num_samples
    is_sample = torch.arange(len(full)) < num_samples
    return (nearest_is_sample == is_sample).double().mean().item()


def occupancy_counts(clouds: Tensor, resolution: int = 28) -> np.ndarray:
    """Points per cell, each point in the cell of its nearest grid point on [-0.5, 0.5]^3: (resolution^3,)."""
    spacing = 1.0 / (resolution - 1)
    cells = torch.round((clouds.reshape(-1, 3).double() + 0.5) / spacing).long().clamp(0, resolution - 1)
    flat = (cells[:, 0] * resolution + cells[:, 1]) * resolution + cells[:, 2]
    return torch.bincount(flat, minlength=resolution**3).numpy()


def jensen_shannon_divergence(samples: Tensor, references: Tensor, resolution: int = 28) -> float:
    """JSD in bits between the occupancy distributions of two sets of clouds (PointFlow's JSD)."""
    p = occupancy_counts(samples, resolution).astype(np.float64)
    q = occupancy_counts(references, resolution).astype(np.float64)
    p, q = p / p.sum(), q / q.sum()
    return float(entropy((p + q) / 2, base=2) - (entropy(p, base=2) + entropy(q, base=2)) / 2)


def chamfer_set_metrics(samples: Tensor, references: Tensor, *, pairs_per_batch: int = 64, progress: bool = False,
                        state_dir: Path | None = None, shard: Shard = ONE_PROCESS) -> dict[str, float]:
    """JSD, MMD-CD, COV-CD and 1-NNA-CD between a generated set and a reference set, from one set of matrices.

    With `state_dir`, each matrix saves its progress there and a rerun resumes; each process computes
    its share of the batches of pairs of every matrix (`shard`) and every process gets the metrics
    (see `chamfer_matrix`).
    """
    def matrix(name: str, rows: Tensor, columns: Tensor | None = None) -> Tensor:
        state_path = None if state_dir is None else state_dir / f"chamfer_{name}.npz"
        return chamfer_matrix(rows, columns, pairs_per_batch=pairs_per_batch, progress=progress,
                              state_path=state_path, shard=shard)

    distances = SetDistances(
        sample_reference=matrix("sample_reference", samples, references),
        sample_sample=matrix("sample_sample", samples),
        reference_reference=matrix("reference_reference", references),
    )
    return {
        "jsd": jensen_shannon_divergence(samples, references),
        "mmd_cd": minimum_matching_distance(distances),
        "cov_cd": coverage(distances),
        "1nna_cd": one_nearest_neighbour_accuracy(distances),
    }
