"""`vaekit train | eval | sample | reconstruct | traverse | interpolate | compress | decompress | convert | info |
models | presets`: a thin skin over the Python API."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from vaekit.errors import CapabilityError, VaekitError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]  # key=value pairs given after an option
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args) or 0
    except (VaekitError, OSError) as error:  # every expected failure: one message, exit 2
        print(f"vaekit: error: {error}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """vaekit's own warnings as one line, as its errors; other packages' in Python's usual form."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"vaekit: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _leave_process_group() -> None:
    """Under torchrun: leave the process group before the interpreter exits (gloo's threads, still running at
    exit, can abort a process that has finished its work)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaekit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a config (default: the digits VAE preset)")
    train.add_argument("--config", help="YAML file or preset name (see `vaekit presets`)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500 model.latent_dim=4")
    train.add_argument("--resume", action="store_true", help="continue the run directory from its newest checkpoint")
    train.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="score a run on its test split (writes eval.json)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--importance-samples", type=int, help="K for log p(x) (default: the run's eval config)")
    evaluate.add_argument("--num-images", type=int, help="first N test images (default: the run's eval config)")
    evaluate.add_argument("--out", help="JSON file (default: RUN_DIR/eval.json)")
    evaluate.add_argument("--plots", action="store_true",
                          help="also draw the per-dimension distributions of the encoder's mean and log_var "
                               "(RUN_DIR/plots/posterior.png)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=_eval)

    sample = commands.add_parser("sample", help="draw samples from a trained model: a PNG grid of images, or a render "
                                                "of point clouds with the clouds as .npy and .ply")
    sample.add_argument("run_dir")
    sample.add_argument("--num", type=int, default=64)
    sample.add_argument("--out", default="samples.png")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--temperature", type=_positive_float, default=1.0,
                        help="spread of the latent draws (below 1: typical samples; above: diverse)")
    sample.set_defaults(handler=_sample)

    for name, help_text in [
        ("reconstruct", "test inputs (top) and their reconstructions (bottom): a PNG grid, or point-cloud renders + .npy/.ply"),
        ("traverse", "decode one latent dimension at a time swept over [-3, 3] (rows = dimensions; image models)"),
        ("interpolate", "between the codes of test inputs: slerp for images (rows = pairs), a line for point clouds"),
    ]:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("run_dir")
        sub.add_argument("--num", type=int, default=16, help="test images used")
        sub.add_argument("--out", default=f"{name}.png")
        sub.set_defaults(handler=_pictures, picture=name)

    compress = commands.add_parser("compress", help="compress images into a .vqz file with a code-prior run "
                                                    "(a learned prior over a VQ-VAE's codes), or losslessly with "
                                                    "a VAE or hierarchical-VAE run (--lossless)")
    compress.add_argument("run_dir", help="the code-prior run, or with --lossless a VAE or hierarchical VAE with a "
                               "discrete likelihood")
    compress.add_argument("images", nargs="+", help="PNG files, folders of PNGs, or .npy/.npz arrays")
    compress.add_argument("-o", "--out", required=True, help="the .vqz file to write")
    compress.add_argument("--lossless", action="store_true",
                          help="bits-back coding (BB-ANS; HiLLoC for a hierarchical VAE): the pixels come back "
                               "exactly, at about -ELBO bits each")
    compress.add_argument("--bucket-bits", type=int, default=None,
                          help="--lossless: 2^b buckets of equal prior mass per latent dimension (default 12)")
    compress.add_argument("--chains", type=int, default=None,
                          help="--lossless: stacks coded in lock-step, the networks batched over them (faster; "
                               "each adds its initial bits; default 1)")
    compress.add_argument("--threads", type=int, default=None,
                          help="CPUs to use: lossy files code that many batches at once, one thread each (any count "
                               "decodes them); lossless ones run torch on that many threads (written in the file); "
                               "default: torch's thread count")
    compress.add_argument("--rate-weight", type=float, default=None,
                          help="lossy: lambda of each code's choice, argmin ||z_e - e_k||^2 - lambda ln p(k | earlier "
                               "codes); 0 (default) the nearest codes, larger values smaller files of lower quality")
    compress.set_defaults(handler=_compress)

    decompress = commands.add_parser("decompress", help="the images of a .vqz file (lossy or lossless) as PNGs")
    decompress.add_argument("file")
    decompress.add_argument("--run", required=True, help="the run that wrote the file (code-prior, VAE or hierarchical VAE)")
    decompress.add_argument("-o", "--out", required=True, help="folder for the PNG files")
    decompress.set_defaults(handler=_decompress)

    convert = commands.add_parser("convert", help="a folder of PNG files or of (Fashion-)MNIST IDX files as a dataset "
                                                  "folder read from disk per batch (data.path=OUT data.lazy=true)")
    convert.add_argument("source", help="a folder of same-size PNG files, or of the four IDX files (each optionally .gz)")
    convert.add_argument("out", help="the dataset folder to create (must not exist)")
    convert.add_argument("--test-fraction", type=float, default=0.2,
                         help="PNG folders: share held out as the test split (IDX files keep their official split)")
    convert.add_argument("--split-seed", type=int, default=0, help="PNG folders: seed of the train/test split")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(handler=_convert)

    info = commands.add_parser("info", help="what a run directory, checkpoint or .vqz file holds")
    info.add_argument("path", help="a run directory, a checkpoint folder, or a .vqz file (its header, read without a "
                                   "model)")
    info.set_defaults(handler=_info)

    commands.add_parser("models", help="the registered model families and their config keys").set_defaults(handler=_models)
    commands.add_parser("presets", help="the config presets shipped with vaekit").set_defaults(handler=_presets)
    return parser


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _train(args: argparse.Namespace) -> int:
    from vaekit.api import train

    run_dir = train(args.config, overrides=args.overrides, resume=args.resume, force=args.force, quiet=args.quiet)
    print(f"run directory: {run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vaekit.api import load
    from vaekit.data import load_data
    from vaekit.engine.distributed import init_distributed
    from vaekit.evaluation import evaluate
    from vaekit.io import atomic_write_json

    model = load(args.run_dir)
    ctx = init_distributed(model.device.type)  # under torchrun each process scores its share of the test split
    config = model.run_config
    updates: dict[str, Any] = {}
    if args.importance_samples is not None:
        updates["num_importance_samples"] = args.importance_samples
    if args.num_images is not None:
        updates["num_images"] = args.num_images
    eval_config = config.eval.model_copy(update=updates)
    data = load_data(config.data)
    results = evaluate(model, data, eval_config, progress=not args.quiet and ctx.is_main, shard=ctx.shard)
    if not ctx.is_main:  # every process holds the gathered results; one writes them
        return 0
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval.json"
    atomic_write_json(out, results)
    print(json.dumps(results, indent=2))
    if args.plots:
        from vaekit.evaluation import write_posterior_plot

        print(write_posterior_plot(model, data, eval_config, Path(args.run_dir) / "plots" / "posterior.png"))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from vaekit.api import load

    model = load(args.run_dir)
    with torch.inference_mode():
        drawn = model.sample(args.num, generator=torch.Generator().manual_seed(args.seed), temperature=args.temperature)
    _write_outputs(model, drawn, Path(args.out), nrow=math.ceil(math.sqrt(args.num)))
    return 0


def _pictures(args: argparse.Namespace) -> int:
    import torch

    from vaekit.api import load
    from vaekit.data import PointCloudData, load_data
    from vaekit.evaluation import (
        interpolation_images,
        linear_interpolation,
        originals_over_reconstructions,
        traversal_images,
    )

    model = load(args.run_dir)
    data = load_data(model.run_config.data)
    x = data.test[: args.num].to(model.device)
    point_clouds = isinstance(data, PointCloudData)
    with torch.inference_mode():
        if args.picture == "reconstruct":
            picks = x[:5] if point_clouds else x
            out = torch.cat([picks, model.reconstruct(picks)]) if point_clouds else originals_over_reconstructions(model, x)
            _write_outputs(model, out, Path(args.out), nrow=len(picks) if point_clouds else 8)
        elif args.picture == "interpolate":
            if point_clouds:
                _write_outputs(model, linear_interpolation(model, x[0], x[-1]), Path(args.out), nrow=5)
            else:
                _write_outputs(model, interpolation_images(model, x, pairs=max(1, args.num // 2)), Path(args.out), nrow=10)
        elif point_clouds:
            raise CapabilityError("traverse sweeps the latent dimensions of image models; for point clouds use "
                                  "interpolate")
        else:
            _write_outputs(model, traversal_images(model, x[:1]), Path(args.out), nrow=11)
    return 0


def _write_outputs(model: Any, made: Any, out: Path, *, nrow: int) -> None:
    """What the model made, as it is: image grids for images; for point clouds a render, the raw clouds
    as OUT.npy (N, P, 3) and one OUT-i.ply per cloud. Prints each file written."""
    from vaekit.config import PointCloudDataConfig

    if isinstance(model.run_config.data, PointCloudDataConfig):
        from vaekit.data.pointclouds import write_clouds
        from vaekit.viz import save_point_cloud_grid

        print(save_point_cloud_grid(made, out, ncols=nrow))
        for path in write_clouds(made, out.with_suffix("")):
            print(path)
    else:
        from vaekit.viz import save_image_grid

        print(save_image_grid(made, out, nrow=nrow))


def _compress(args: argparse.Namespace) -> int:
    from vaekit.api import compress

    out = compress(args.run_dir, args.images, args.out, lossless=args.lossless, bucket_bits=args.bucket_bits,
                   chains=args.chains, threads=args.threads, rate_weight=args.rate_weight)
    print(f"{out}: {out.stat().st_size} bytes")
    return 0


def _decompress(args: argparse.Namespace) -> int:
    from vaekit.api import decompress

    written = decompress(args.file, args.run, args.out)
    print(f"{len(written)} images in {args.out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from vaekit.api import convert

    out = convert(args.source, args.out, test_fraction=args.test_fraction, split_seed=args.split_seed,
                  progress=not args.quiet)
    print(f"dataset folder: {out}; train on it with data.name=images data.path={out} data.lazy=true")
    return 0


def _info(args: argparse.Namespace) -> int:
    from vaekit.api import info

    print(json.dumps(info(args.path), indent=2))
    return 0


def _models(args: argparse.Namespace) -> int:
    from vaekit.models.registry import lookup, model_names

    for name in model_names():
        config_class, model_class = lookup(name)
        doc = (model_class.__doc__ or "").strip().splitlines()[0]
        print(f"{name}: {doc}\n  keys: {', '.join(sorted(config_class.model_fields))}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    from vaekit.config import PRESET_DIR, preset_names

    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name}: {first}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
