"""The Python API: `vaekit.train(config)`, `vaekit.load(run_dir)`, `vaekit.info(path)`, `convert(source, out)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaekit.config import RunConfig, load_config, validate_config
from vaekit.engine.checkpoint import load_tensor_file, read_state
from vaekit.engine.runs import find_checkpoint, load
from vaekit.engine.train import train as run_training

__all__ = ["compress", "convert", "decompress", "find_checkpoint", "info", "load", "train"]


def train(
    config: RunConfig | dict[str, Any] | str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Train a run and return its directory. `config`: a RunConfig, a mapping, a YAML path or a preset name."""
    if isinstance(config, dict):
        config = validate_config(config)
    elif not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    return run_training(config, resume=resume, force=force, quiet=quiet)


def info(path: str | Path) -> dict[str, Any]:
    """What a run directory or checkpoint holds (model, step, parameter count, files, versions), or what a .vqz file's
    header says (count, image shape, batch, threads, payload length and whether the file holds it, its CRC; no model
    is built, so the CRC, which covers the decoded codes, is checked by decompressing)."""
    if Path(path).is_file():
        from vaekit.coding.container import describe

        return describe(Path(path))
    checkpoint = find_checkpoint(path)
    state = read_state(checkpoint)
    tensors = load_tensor_file(checkpoint, "model.safetensors", state)
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "model": state["model_name"],
        "step": state["step"],
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "files": state["files"],
        "config": state["config"],
    }
    run_dir = checkpoint.parent.parent
    versions = run_dir / "versions.json"
    if versions.is_file():
        import json

        summary["versions"] = json.loads(versions.read_text())
    return summary


def _codec(run_dir: str | Path, *, lossless: bool, bucket_bits: int | None = None, chains: int | None = None,
           threads: int | None = None, rate_weight: float | None = None) -> Any:
    """A run's codec: bits-back coding with a VAE or hierarchical-VAE run when `lossless`, else a code-prior run's
    VQ-VAE codes."""
    model = load(run_dir)
    if lossless:
        if rate_weight is not None:
            from vaekit.errors import ConfigError

            raise ConfigError("rate_weight chooses a lossy codec's codes; lossless compression has none to choose")
        from vaekit.coding.bitsback import DEFAULT_BUCKET_BITS, BitsBackCodec

        return BitsBackCodec(model, bucket_bits=DEFAULT_BUCKET_BITS if bucket_bits is None else bucket_bits,
                             chains=chains or 1, threads=threads)
    if bucket_bits is not None or chains is not None:
        from vaekit.errors import ConfigError

        raise ConfigError("bucket_bits and chains set lossless (bits-back) compression; pass lossless=True")
    from vaekit.coding.vq_codec import VQCodec

    return VQCodec(model, threads=threads, rate_weight=rate_weight or 0.0)


def compress(run_dir: str | Path, images: list[str | Path], out: str | Path, *, lossless: bool = False,
             bucket_bits: int | None = None, chains: int | None = None, threads: int | None = None,
             rate_weight: float | None = None) -> Path:
    """Compress PNG files, folders of PNGs or .npy/.npz arrays into one .vqz file: lossy with a code-prior run
    (`rate_weight`: lambda of the codes' choice, argmin ||z_e - e_k||^2 - lambda ln p(k | earlier codes); default
    0, the nearest codes; larger: smaller files, lower quality), or `lossless` with a VAE or hierarchical-VAE run
    (bits-back coding; `bucket_bits`: 2^b buckets per latent dimension, default 12; `chains`: stacks coded in
    lock-step with batched networks, default 1, each with its own initial bits)."""
    from vaekit.data.images import read_images
    from vaekit.io import atomic_write_bytes

    codec = _codec(run_dir, lossless=lossless, bucket_bits=bucket_bits, chains=chains, threads=threads,
                   rate_weight=rate_weight)
    pixels = read_images([Path(p) for p in images], channels=codec.image_shape[0])
    out = Path(out)
    atomic_write_bytes(out, codec.compress(pixels))
    return out


def decompress(file: str | Path, run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """The images of a .vqz file, lossy or lossless (told by its header), as PNGs out_dir/000000.png, ... (the run
    must be the one that wrote it)."""
    import io

    from PIL import Image

    from vaekit.coding.container import read_header
    from vaekit.errors import DataError
    from vaekit.io import atomic_write_bytes

    file = Path(file)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    data = file.read_bytes()
    codec = _codec(run_dir, lossless=read_header(data, str(file))[0].kind == "bits-back")
    images = codec.decompress(data, source=str(file))  # (N, C, H, W) uint8
    written = []
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
        written.append(Path(out_dir) / f"{index:06d}.png")
        atomic_write_bytes(written[-1], buffer.getvalue())
    return written


def convert(source: str | Path, out: str | Path, *, test_fraction: float = 0.2, split_seed: int = 0,
            progress: bool = True) -> Path:
    """A folder of PNG files or of IDX files as a dataset folder `out` for `data.path` with `data.lazy`."""
    from vaekit.data.convert import convert as convert_to_folder

    return convert_to_folder(source, out, test_fraction=test_fraction, split_seed=split_seed, progress=progress)
