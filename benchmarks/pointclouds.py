"""Point-cloud distances, metric suites and the paper's per-category table, each section in one run.

    .venv/bin/python benchmarks/pointclouds.py --sections chamfer cd_suite emd_suite per_category

Sections (results merged into --out after every unit of work; finished units are skipped on a
rerun, and the EMD search resumes from its state file):
  chamfer       batch 32 of 2048 vs 2048 points: plain `torch.cdist(x, y).pow(2)` + min against
                `vaekit.divergences.chamfer_distance`, forward and forward+backward, interleaved
                rounds, medians; the forward's GFLOP/s (8 flops per squared distance, useful and as
                executed by the fused kernels) against an fp32 matmul measured in the same run.
  cd_suite      JSD, MMD-CD, COV-CD, 1-NNA-CD on 500 vs 500 procedural clouds of 2048 points
                (all three matrices, ~500k distinct pairs) with the process's peak RSS; pairs/s
                against the plain cdist Chamfer on a sample of pairs.
  emd_suite     MMD-EMD, COV-EMD, 1-NNA-EMD, exact, on the same 500 vs 500 (resumable), with exact
                solves vs pairs; brute force on a 15 vs 15 subset must give identical values; the
                auction's time and error against POT's exact EMD on 16 pairs of different shapes
                and on 16 shapes against jittered (sigma 0.01), shuffled copies, the situation of
                an AE's loss late in training.
  emd_loss      the EMD training losses on 16 pairs (different shapes; jittered, shuffled copies):
                forward + backward seconds per pair and relative error against the exact EMD of
                the exact matching, the auction (epsilon 1e-3) and the sliced W1 (128 directions).
  per_category  the paper's tables on the procedural data: one AE (preset pointcloud-ae, all five
                categories, 200 shapes each, --ae-steps steps), then per category an l-GMM (4 full-covariance
                components, fixed), an l-GAN (the
                paper's GAN loss, 5000 steps) and an l-WGAN (WGAN-GP, 2000 steps) on that category's
                codes (two-stage runs); per category the AE's test reconstruction CD and
                exact EMD, the linear-SVM accuracy, and for each generator JSD, MMD-CD, COV-CD and
                1-NNA-CD (with --per-category-emd also MMD-EMD and COV-EMD) of |R| samples against the category's test clouds R (JSD on the
                clouds halved: unit-sphere clouds then fit PointFlow's [-0.5, 0.5]^3 grid);
                sample renders.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import vaekit
from vaekit.config import load_config
from vaekit.data.pointclouds import load_procedural
from vaekit.divergences import chamfer_distance
from vaekit.emd import (
    auction_assignment,
    earth_movers_distance,
    euclidean_cost,
    matched_emd,
    random_directions,
    sliced_wasserstein,
)
from vaekit.errors import VaekitError
from vaekit.evaluation import evaluate
from vaekit.io import atomic_write_json
from vaekit.metrics.emd_search import emd_set_metrics
from vaekit.metrics.pointclouds import (
    chamfer_set_metrics,
    jensen_shannon_divergence,
    reconstruction_scores,
)
from vaekit.nearest import resolve_backend
from vaekit.viz import save_point_cloud_grid

HERE = Path(__file__).resolve().parent
SECTIONS = ("chamfer", "cd_suite", "emd_suite", "emd_loss", "per_category")
CATEGORIES = ("airplane", "chair", "lamp", "mug", "table")


def plain_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference: full squared-distance matrix by cdist, min both ways: (B,)."""
    squared = torch.cdist(x, y).pow(2)
    return squared.min(2).values.mean(1) + squared.min(1).values.mean(1)


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size**3 * repeats / timed(lambda: [a @ b for _ in range(repeats)]) / 1e9


def run_chamfer(args: argparse.Namespace) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(32, 2048, 3, generator=generator)
    y = torch.rand(32, 2048, 3, generator=generator)

    def forward_backward(function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            leaf = x.clone().requires_grad_()
            function(leaf, y).sum().backward()
        return step

    cases = {
        "plain_forward": lambda: plain_chamfer(x, y),
        "plain_forward_backward": forward_backward(plain_chamfer),
        "vaekit_forward": lambda: chamfer_distance(x, y, reduction="none"),
        "vaekit_forward_backward": forward_backward(lambda a, b: chamfer_distance(a, b, reduction="none")),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for function in cases.values():
        function()  # warm-up
    for _ in range(args.rounds):
        for name, function in cases.items():
            times[name].append(timed(function))
    median = {name: statistics.median(values) for name, values in times.items()}
    evaluations = 32 * 2048 * 2048  # distinct (i, j) pairs of one forward
    return {
        "batch": 32, "points": 2048, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "nearest_backend": resolve_backend(), "median_s": median,
        "speedup_forward": median["plain_forward"] / median["vaekit_forward"],
        "speedup_forward_backward": median["plain_forward_backward"] / median["vaekit_forward_backward"],
        # 8 flops per squared distance (3 differences, 3 squares, 2 additions); the fused forward
        # evaluates each distance 4 times (minima, then first index, in both directions)
        "vaekit_forward_useful_gflops": 8 * evaluations / median["vaekit_forward"] / 1e9,
        "vaekit_forward_executed_gflops": 4 * 8 * evaluations / median["vaekit_forward"] / 1e9,
        "matmul_fp32_gflops_same_run": matmul_gflops(),
    }


def suite_sets(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """500 + 500 procedural clouds of 2048 points (all five categories), disjoint, in a fixed order."""
    data = load_procedural(shapes_per_category=200, num_points=2048)
    clouds = torch.cat([data.train, data.test])
    order = torch.randperm(len(clouds), generator=torch.Generator().manual_seed(0))
    return clouds[order[: args.set_size]], clouds[order[args.set_size : 2 * args.set_size]]


def run_cd_suite(args: argparse.Namespace) -> dict[str, Any]:
    samples, references = suite_sets(args)
    start = time.perf_counter()
    metrics = chamfer_set_metrics(samples, references, progress=not args.quiet)
    seconds = time.perf_counter() - start
    metrics["jsd"] = jensen_shannon_divergence(samples / 2, references / 2)  # unit-sphere clouds halved to fit the grid
    s, r = len(samples), len(references)
    pairs = s * r + s * (s - 1) // 2 + r * (r - 1) // 2  # each distinct pair computed once
    sample = torch.arange(64)
    plain_s = timed(lambda: [plain_chamfer(samples[i : i + 1], references[i : i + 1]) for i in sample]) / len(sample)
    return metrics | {
        "set_size": s, "threads": torch.get_num_threads(), "nearest_backend": resolve_backend(), "seconds": seconds, "distinct_pairs": pairs, "pairs_per_s": pairs / seconds,
        "plain_cdist_s_per_pair": plain_s, "plain_pairs_per_s": 1 / plain_s, "speedup_pairs_per_s": pairs / seconds * plain_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run_emd_suite(args: argparse.Namespace, section: dict[str, Any],
                  save_partial: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    samples, references = suite_sets(args)
    section["set_size"] = len(samples)
    if "subset_15_vs_15" not in section:  # parts already measured (a resumed run) are kept
        subset = emd_set_metrics(samples[:15], references[:15])
        brute = brute_force_emd_metrics(samples[:15], references[:15])
        section["subset_15_vs_15"] = {"pruned": subset, "brute_force": brute,
                                     "identical": all(subset[k] == brute[k] for k in brute)}
        save_partial(section)
    if "auction" not in section:
        jitter = 0.01 * torch.randn(samples[:16].shape, generator=torch.Generator().manual_seed(1))
        section["auction"] = {"different_shapes": auction_error(samples[:16], references[:16]),
                              "jittered_copies": auction_error(samples[:16], (samples[:16] + jitter)[:, torch.randperm(2048)])}
        save_partial(section)
    state_path = args.work_dir / "emd_suite_state.npz"
    start = time.perf_counter()
    metrics = emd_set_metrics(samples, references, state_path=state_path, workers=args.emd_workers,
                              progress=not args.quiet)
    section |= metrics | {"seconds_this_call": time.perf_counter() - start, "loadavg_end": os.getloadavg(),
                          "workers": args.emd_workers, "threads": torch.get_num_threads(),
                          "solved_share": metrics["emd_exact_solves"] / metrics["emd_pairs"]}
    return section


def run_emd_loss(args: argparse.Namespace) -> dict[str, Any]:
    """EMD training losses on batches of 16 pairs: forward + backward time per pair, and error against the exact EMD."""
    samples, references = suite_sets(args)
    x = samples[:16]
    jitter = 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    section: dict[str, Any] = {"pairs": len(x), "points": x.shape[1], "sliced_directions": 128,
                               "threads": torch.get_num_threads()}
    for name, y in {"different_shapes": references[:16], "jittered_copies": (x + jitter)[:, torch.randperm(2048)]}.items():
        exact = torch.tensor([earth_movers_distance(a, b) for a, b in zip(x, y)], dtype=torch.float64)
        directions = random_directions(128)
        losses = {
            "exact_matching": lambda leaf, y=y: matched_emd(leaf, y, solver="exact", reduction="none"),
            "auction_1e-3": lambda leaf, y=y: matched_emd(leaf, y, solver="auction", epsilon=1e-3, reduction="none"),
            "sliced_w1": lambda leaf, y=y, directions=directions: sliced_wasserstein(leaf, y, directions),
        }
        rows = {}
        for loss_name, loss in losses.items():
            leaf = x.clone().requires_grad_()
            start = time.perf_counter()
            value = loss(leaf)
            value.sum().backward()
            seconds = time.perf_counter() - start
            relative = (value.detach().double() - exact) / exact
            rows[loss_name] = {"s_per_pair": seconds / len(x), "relative_error_mean": relative.mean().item(),
                               "relative_error_min": relative.min().item(), "relative_error_max": relative.max().item()}
        section[name] = rows
    section["training"] = emd_loss_training(args)
    return section


def emd_loss_training(args: argparse.Namespace) -> dict[str, Any]:
    """The same AE trained with each loss (512-point clouds, all five categories): test EMD (exact) and CD, train time."""
    runs = args.work_dir / "emd_loss"
    scores: dict[str, Any] = {"points": 512, "steps": args.loss_steps, "shapes_per_category": 40}
    for loss in ("chamfer", "sliced", "emd"):
        run_dir = runs / f"ae-{loss}"
        train_once(["pointcloud-ae", f"out_dir={runs}", f"name={run_dir.name}", "data.shapes_per_category=40",
                    "data.num_points=512", f"model.loss={loss}", "train.precision=fp32", f"train.steps={args.loss_steps}",
                    f"train.eval_every={args.loss_steps}", f"train.checkpoint_every={args.loss_steps}",
                    "eval.point_cloud_emd=true"], run_dir, args.quiet)
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        scores[loss] = {key: last[key] for key in ("reconstruction_emd", "reconstruction_chamfer", "train_seconds")}
    return scores


def brute_force_emd_metrics(samples: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    from vaekit.metrics.pointclouds import (
        SetDistances,
        coverage,
        minimum_matching_distance,
        one_nearest_neighbour_accuracy,
    )

    clouds = torch.cat([samples, references]).double()
    matrix = torch.zeros(len(clouds), len(clouds), dtype=torch.float64)
    for i in range(len(clouds)):
        for j in range(i + 1, len(clouds)):
            matrix[i, j] = matrix[j, i] = earth_movers_distance(clouds[i], clouds[j])
    s = len(samples)
    d = SetDistances(matrix[:s, s:], matrix[:s, :s], matrix[s:, s:])
    return {"mmd_emd": minimum_matching_distance(d), "cov_emd": coverage(d), "1nna_emd": one_nearest_neighbour_accuracy(d)}


def auction_error(x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Auction (epsilon 1e-3, run to the end) against POT on the same pairs: time per pair and relative error."""
    exact_s = timed(lambda: [earth_movers_distance(a, b) for a, b in zip(x, y)]) / len(x)
    exact = torch.tensor([earth_movers_distance(a, b) for a, b in zip(x, y)], dtype=torch.float64)
    start = time.perf_counter()
    result = auction_assignment(euclidean_cost(x, y), epsilon=1e-3)
    auction_s = (time.perf_counter() - start) / len(x)
    relative = (result.upper - exact) / exact
    return {"pairs": len(x), "exact_s_per_pair": exact_s, "auction_s_per_pair": auction_s,
            "relative_error_mean": relative.mean().item(), "relative_error_max": relative.max().item(),
            "bracket_contains_exact": bool(torch.all((result.lower <= exact + 1e-9) & (exact <= result.upper + 1e-9)))}


def train_once(overrides: list[str], run_dir: Path, quiet: bool) -> Path:
    """Train a run unless a finished one is there (its last checkpoint at the final step) that this vaekit
    still loads: a run of an older model layout, or a child run whose parent was retrained since, is
    trained again."""
    config = load_config(overrides[0], overrides[1:])
    if (run_dir / "metrics.jsonl").is_file() and any(
            json.loads(line).get("step") == config.train.steps for line in (run_dir / "metrics.jsonl").read_text().splitlines()):
        try:
            vaekit.load(run_dir)
            return run_dir
        except VaekitError as error:  # CheckpointError (parent changed, weights of another layout), ConfigError
            print(f"{run_dir}: not reused ({type(error).__name__}: {error}); training it again", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return vaekit.train(config, quiet=quiet)


def run_per_category(args: argparse.Namespace, section: dict[str, Any], save_partial: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    runs = args.work_dir / "per_category"
    ae_dir = runs / "ae"
    start = time.perf_counter()
    section.setdefault("settings", {"ae_steps": args.ae_steps, "generators": args.generators,
                                    "per_category_emd": args.per_category_emd, "threads": torch.get_num_threads(),
                                    "emd_workers": args.emd_workers, "vaekit": vaekit.__version__,
                                    "vaekit_package": str(Path(vaekit.__file__).parent)})
    calls = section.setdefault("calls", [])  # wall time and load average of every call (a resumed run has several)
    calls.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_start": os.getloadavg()})
    train_once(["pointcloud-ae", f"out_dir={runs}", "name=ae", "data.shapes_per_category=200", "train.seed=0",
                f"train.steps={args.ae_steps}", f"train.eval_every={args.ae_steps}", f"train.checkpoint_every={args.ae_steps}"],
               ae_dir, args.quiet)
    section.setdefault("ae_train_wall_s", time.perf_counter() - start)  # includes its final evaluation
    section.setdefault("ae_train_seconds", json.loads((ae_dir / "metrics.jsonl").read_text().splitlines()[-1]).get("train_seconds"))
    if "ae_all_categories" not in section:
        ae = vaekit.load(ae_dir)
        section["ae_all_categories"] = evaluate(ae, load_procedural(shapes_per_category=200), ae.run_config.eval)
        save_partial(section)
    for category in CATEGORIES:  # what a category already has (AE scores, a generator's) is kept
        scores = section.setdefault("categories", {}).setdefault(category, {})
        category_scores(args, runs, ae_dir, category, scores, lambda: save_partial(section))
    calls[-1] |= {"wall_s": time.perf_counter() - start, "loadavg_end": os.getloadavg()}
    return section


def category_scores(args: argparse.Namespace, runs: Path, ae_dir: Path, category: str, scores: dict[str, Any],
                    save: Callable[[], None]) -> None:
    """Fill in what `scores` lacks for one category (the AE's, then each generator's), saving after each."""
    data_overrides = ["data.name=procedural", "data.shapes_per_category=200", f"data.categories=[{category}]"]
    reference = load_procedural(shapes_per_category=200, categories=(category,)).test
    if "ae" not in scores:
        scores["test_clouds"] = len(reference)
        scores["ae"] = reconstruction_scores(vaekit.load(ae_dir), reference, 50, emd=True)  # (inference mode inside)
        save()
    generators = {
        # fixed, not selected by held-out likelihood: 4 full-covariance components (~40 codes each)
        "l-gmm": ["pointcloud-latent-gmm", "model.num_components=4", "model.covariance_type=full"],
        # the preset as it ships: size and covariance type chosen by held-out log-likelihood
        "l-gmm-selected": ["pointcloud-latent-gmm"],
        "l-gan": ["pointcloud-latent-gan", "train.steps=5000", "train.eval_every=5000", "train.checkpoint_every=5000"],
        "l-wgan": ["pointcloud-latent-gan", "model.loss=wgan-gp", "train.steps=2000", "train.eval_every=2000",
                   "train.checkpoint_every=2000"],
    }
    for name, overrides in generators.items():
        if name not in args.generators or (name in scores and (not args.per_category_emd or "mmd_emd" in scores[name])):
            continue
        run_dir = runs / f"{name}-{category}"
        train_once([overrides[0], f"out_dir={runs}", f"name={run_dir.name}", f"parent={ae_dir}", *data_overrides,
                    *overrides[1:]], run_dir, args.quiet)
        model = vaekit.load(run_dir)
        with torch.inference_mode():
            samples = model.sample(len(reference), generator=torch.Generator().manual_seed(0)).float()
        save_point_cloud_grid(samples[:10], args.pictures / f"{name}-{category}.png")
        scores[name] = chamfer_set_metrics(samples, reference)
        if args.per_category_emd:
            scores[name] |= emd_set_metrics(samples, reference, metrics=("mmd", "cov"), workers=args.emd_workers)
        # the clouds fill the unit sphere; halved, they fit the [-0.5, 0.5]^3 grid of PointFlow's JSD
        scores[name]["jsd"] = jensen_shannon_divergence(samples / 2, reference / 2)
        scores[name]["train_wall_s"] = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1]).get("train_seconds")
        save()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pointclouds.json")
    parser.add_argument("--work-dir", type=Path, default=HERE / "results" / "partial" / "pointclouds")
    parser.add_argument("--pictures", type=Path, default=HERE.parent / "docs" / "images" / "pointclouds")
    parser.add_argument("--set-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ae-steps", type=int, default=1500, help="per_category: the AE's training steps")
    parser.add_argument("--generators", nargs="+", choices=("l-gmm", "l-gmm-selected", "l-gan", "l-wgan"), default=["l-gmm", "l-gan", "l-wgan"],
                        help="per_category: which latent generators to fit and score")
    parser.add_argument("--per-category-emd", action="store_true",
                        help="per_category: also MMD-EMD and COV-EMD of the generators (exact; slow: generated "
                             "clouds against real ones prune poorly, ~1000 exact solves per table cell)")
    parser.add_argument("--loss-steps", type=int, default=400, help="emd_loss: training steps of each AE")
    parser.add_argument("--emd-workers", type=int, default=2, help="threads answering EMD nearest-neighbour queries")
    parser.add_argument("--rerun", action="store_true", help="measure the named sections again even if finished")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["environment"] = {"torch": torch.__version__, "vaekit": vaekit.__version__,
                              "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}

    def save_partial(name: str) -> Callable[[dict[str, Any]], None]:
        def save(section: dict[str, Any]) -> None:
            results[name] = section | {"finished": False}
            atomic_write_json(args.out, results)
        return save

    for name in args.sections:
        if results.get(name, {}).get("finished") and not args.rerun:
            continue
        if name == "chamfer":
            section = run_chamfer(args)
        elif name == "cd_suite":
            section = run_cd_suite(args)
        elif name == "emd_loss":
            section = run_emd_loss(args)
        elif name == "emd_suite":
            section = run_emd_suite(args, {} if args.rerun else results.get(name, {}), save_partial(name))
        else:  # --rerun: a fresh table from a fresh AE (an interrupted rerun continues without --rerun)
            if args.rerun:
                shutil.rmtree(args.work_dir / "per_category", ignore_errors=True)
            section = run_per_category(args, {} if args.rerun else results.get(name, {}), save_partial(name))
        results[name] = section | {"finished": True}
        atomic_write_json(args.out, results)
        print(name, json.dumps(results[name], indent=1)[:2000], flush=True)


if __name__ == "__main__":
    main()
