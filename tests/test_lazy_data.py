"""Data larger than memory: training splits read from disk per batch (memory-mapped .npy, PNGs decoded on
demand), the dataset folder `vaekit convert` writes, and a two-stage child's codes in its run directory.

Memory is measured as RssAnon of the training process (tests/lazy_data_worker.py samples it): a split held
in memory is anonymous memory, while the resident pages of a read-only memory map are file-backed (RssFile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_data_images import write_fashion_folder
from torch.utils.data import DistributedSampler

import vaekit
from vaekit.api import convert
from vaekit.cli import main
from vaekit.config import DataConfig, RunConfig, dump_yaml, load_config
from vaekit.data import LazyImages, check_support, load_image_data, write_npy
from vaekit.data.folder import MANIFEST_FILE, read_dataset_folder
from vaekit.data.images import read_idx_folder, split_by_seed
from vaekit.engine.train import CODES_FILE, DataOrder
from vaekit.errors import ConfigError, DataError
from vaekit.io import TEMP_SUFFIX

TESTS = Path(__file__).resolve().parent
HEIGHT, WIDTH = 28, 28
BIG_DATASET_BYTES = 400 << 20  # larger than all the anonymous memory of the training process (~330 MB)
BLOCK_ROWS = 8192  # rows of random pixels, repeated with an offset to fill a big split quickly
ATOL = 5e-5  # 2 processes vs 1: summation order only (as tests/test_distributed.py)
TINY_VAE = "model={name: vae, architecture: mlp, hidden_dims: [16], latent_dim: 2, likelihood: bernoulli}"


def write_dataset_by_hand(folder: Path, num_train: int, num_test: int, *, height: int = HEIGHT,
                          width: int = WIDTH) -> Path:
    """A dataset folder written with numpy.lib.format.open_memmap and a JSON manifest, as docs/scale.md
    describes it; grey uint8 pixels, a block of random rows repeated with a different offset each time."""
    folder.mkdir(parents=True)
    block = np.random.default_rng(0).integers(0, 256, size=(BLOCK_ROWS, height, width, 1), dtype=np.uint8)
    for split, count in (("train", num_train), ("test", num_test)):
        array = np.lib.format.open_memmap(folder / f"{split}.npy", mode="w+", dtype=np.uint8,
                                          shape=(count, height, width, 1))
        for number, start in enumerate(range(0, count, BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, count - start)
            array[start : start + rows] = block[:rows] + np.uint8(number % 256)  # wraps around
        array.flush()
        del array
    manifest = {"format": "vaekit-images", "version": 1, "image_shape": [1, height, width], "train": num_train,
                "test": num_test, "labels": False, "source": "tests/test_lazy_data.py"}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return folder


def image_run(out_dir: Path, name: str, path: Path, *overrides: str) -> RunConfig:
    """A tiny Bernoulli VAE on the images at `path`, binarised afresh per batch, checkpointed every 3 steps."""
    return load_config("digits-vae", [
        f"out_dir={out_dir}", f"name={name}", "data.name=images", f"data.path={path}", "data.binarize=dynamic",
        TINY_VAE, "train.batch_size=32", "train.log_every=3", "train.eval_every=1000", "train.checkpoint_every=3",
        "eval.num_importance_samples=2", "eval.num_images=16", "eval.num_grid_images=4", *overrides,
    ])


def as_yaml(config: RunConfig, path: Path) -> Path:
    path.write_text(dump_yaml(config))
    return path


def run_worker(report: Path, *configs: Path, processes: int = 1) -> dict[str, int]:
    """Train the configs (the later ones resumed) in a fresh process, or in `processes` torchrun processes;
    rank 0's memory report."""
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, str(TESTS / "lazy_data_worker.py"), str(report), *map(str, configs)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads((report if processes == 1 else report.with_suffix(".rank0.json")).read_text())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(vaekit.find_checkpoint(run_dir) / "model.safetensors")


def leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders of writes under `folder`."""
    return list(folder.rglob(f"*{TEMP_SUFFIX}"))


# the data order and the lazy sources


def test_the_data_order_is_distributed_samplers_without_its_python_list():
    for num_examples, world_size, global_batch in [(10, 1, 2), (11, 2, 4), (37, 3, 6), (1000, 2, 16)]:
        for rank in range(world_size):
            order = DataOrder(num_examples=num_examples, global_batch=global_batch, rank=rank,
                              world_size=world_size, seed=5)
            sampler = DistributedSampler(range(num_examples), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=5, drop_last=True)
            for epoch in range(3):
                sampler.set_epoch(epoch)
                assert order.epoch_rows(epoch).tolist() == list(sampler)


def lazy_sources(folder: Path) -> dict[str, Path]:
    """The same 30 grey images as a dataset folder's train.npy copy (.npy) and as PNG files."""
    images = np.random.default_rng(3).integers(0, 256, size=(30, 6, 5), dtype=np.uint8)
    np.save(folder / "x.npy", images)
    (folder / "png").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / "png" / f"{index:03d}.png")
    return {"npy": folder / "x.npy", "png": folder / "png"}


@pytest.mark.parametrize("kind", ["npy", "png", "dataset-folder"])
def test_a_lazy_split_reads_the_floats_of_the_in_memory_split(tmp_path, kind):
    sources = lazy_sources(tmp_path)
    path = write_dataset_by_hand(tmp_path / "ds", 40, 8, height=6, width=5) if kind == "dataset-folder" \
        else sources[kind]
    options = {"name": "images", "path": str(path), "test_fraction": 0.3, "split_seed": 4}
    memory = load_image_data(DataConfig(**options))
    lazy = load_image_data(DataConfig(**options, lazy=True))
    assert isinstance(lazy.train, LazyImages) and lazy.train.shape == memory.train.shape
    assert lazy.image_shape == memory.image_shape == (1, 6, 5)
    rows = torch.tensor([3, 0, 7, 7, len(memory.train) - 1])
    assert torch.equal(lazy.train[rows], memory.train[rows])
    assert torch.equal(lazy.train.load(), memory.train) and torch.equal(lazy.test, memory.test)
    first = load_image_data(DataConfig(**options, lazy=True, max_train=5)).train
    assert len(first) == 5 and torch.equal(first.load(), memory.train[:5])


def test_the_support_of_images_on_disk_is_checked_by_the_levels_they_hold(tmp_path, monkeypatch):
    np.save(tmp_path / "grey.npy", np.arange(120, dtype=np.uint8).reshape(10, 3, 4))
    np.save(tmp_path / "binary.npy", (np.arange(120).reshape(10, 3, 4) % 2 * 255).astype(np.uint8))
    grey, binary = (load_image_data(DataConfig(name="images", path=str(tmp_path / f"{n}.npy"), lazy=True)).train
                    for n in ("grey", "binary"))
    check_support(binary, likelihood="bernoulli", num_bins=256, source="binary")
    with pytest.raises(DataError, match=r"grey: the bernoulli likelihood needs values in \{0, 1\}"):
        check_support(grey, likelihood="bernoulli", num_bins=256, source="grey")
    with pytest.raises(DataError, match="logistic likelihood with num_bins=17"):
        check_support(grey, likelihood="logistic", num_bins=17, source="grey")
    monkeypatch.setattr(LazyImages, "levels", lambda self: pytest.fail("read the data for nothing"))
    for likelihood in ("gaussian", "logistic"):  # every 8-bit value is in the support: nothing is read
        check_support(grey, likelihood=likelihood, num_bins=256, source="grey")


def test_lazy_data_needs_image_files_and_no_static_binarisation():
    with pytest.raises(ConfigError, match="data.lazy reads data.name=images from disk, not fashion_mnist"):
        load_config("fashion-mnist-vae", ["data.lazy=true"])
    with pytest.raises(ConfigError, match="binarize=static .* use data.binarize=dynamic"):
        load_config("digits-vae", ["data.name=images", "data.path=x", "data.lazy=true", "data.binarize=static"])


# training on data larger than memory


def test_a_memory_mapped_dataset_larger_than_the_anonymous_memory_trains_resumes_and_matches_the_in_memory_run(
        tmp_path):
    folder = write_dataset_by_hand(tmp_path / "big", BIG_DATASET_BYTES // (HEIGHT * WIDTH) + 1, 64)
    size = (folder / "train.npy").stat().st_size
    lazy = [as_yaml(image_run(tmp_path, "lazy", folder, "data.lazy=true", f"train.steps={steps}"),
                    tmp_path / f"lazy-{steps}.yaml") for steps in (3, 6)]
    lazy_memory = run_worker(tmp_path / "lazy.json", *lazy)  # 3 steps, then resumed to 6
    memory = run_worker(tmp_path / "memory.json",
                        as_yaml(image_run(tmp_path, "memory", folder, "train.steps=6"), tmp_path / "memory.yaml"))
    a, b = final_weights(tmp_path / "lazy"), final_weights(tmp_path / "memory")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert vaekit.find_checkpoint(tmp_path / "lazy").name == "step-6"
    measured = f"train.npy {size} bytes; lazy run {lazy_memory}; in-memory run {memory}"
    lazy_growth = lazy_memory["peak_rss_anon"] - lazy_memory["start_rss_anon"]
    assert size > lazy_memory["peak_rss_anon"], measured  # the data outsizes every anonymous byte of the process
    assert size > 3 * lazy_growth, measured  # and what training added to the libraries' memory, several times
    assert memory["peak_rss_anon"] - memory["start_rss_anon"] > 3 * size, measured  # float32 copy: 4 bytes a pixel


def test_two_processes_on_a_lazy_dataset_match_one_process(tmp_path):
    folder = write_dataset_by_hand(tmp_path / "ds", 48, 16, height=6, width=5)
    config = image_run(tmp_path, "one", folder, "data.lazy=true", "train.steps=8", "train.batch_size=16",
                       "train.ema_decay=0.5")  # 3 steps an epoch: the order crosses two epochs
    one = vaekit.train(config, quiet=True)
    run_worker(tmp_path / "two.json", as_yaml(config.model_copy(update={"name": "two"}), tmp_path / "two.yaml"),
               processes=2)
    for filename in ("model.safetensors", "ema.safetensors"):
        a = load_file(vaekit.find_checkpoint(one) / filename)
        b = load_file(vaekit.find_checkpoint(tmp_path / "two") / filename)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=ATOL, msg=f"{filename}: {key}")


# two-stage runs


def test_a_two_stage_childs_codes_go_to_its_run_directory_and_equal_the_parents_codes(tmp_path):
    folder = write_dataset_by_hand(tmp_path / "ds", 40, 8, height=8, width=8)
    parent = vaekit.train(load_config("digits-vqvae", [
        f"out_dir={tmp_path}", "name=vqvae", "data.name=images", f"data.path={folder}", "data.lazy=true",
        "model={name: vqvae, channels: 8, downsamples: 1, residual_cells: 1, num_codes: 16, code_dim: 4}",
        "train.steps=4", "train.batch_size=8", "eval.num_images=8", "eval.num_grid_images=4"]), quiet=True)
    child = vaekit.train(load_config("digits-code-prior", [
        f"out_dir={tmp_path}", "name=prior", f"parent={parent}", "model={name: code-prior, width: 8, layers: 1, heads: 2}",
        "train.steps=4", "train.batch_size=8", "eval.num_images=8", "eval.num_grid_images=4"]), quiet=True)
    codes = np.load(child / CODES_FILE, allow_pickle=False)
    model = vaekit.load(child)
    assert model.run_config.data.lazy  # the parent's data, read from disk
    expected = model.training_inputs(load_image_data(model.run_config.data).train.load())
    assert codes.dtype == np.int64 and codes.shape == (40, 4, 4)
    assert np.array_equal(codes, expected.numpy())
    assert vaekit.find_checkpoint(child).name == "step-4" and not leftovers(tmp_path)


def test_a_latent_gmm_fits_on_a_lazy_parents_whole_training_split(tmp_path):
    folder = write_dataset_by_hand(tmp_path / "ds", 40, 8, height=6, width=5)
    parent = vaekit.train(image_run(tmp_path, "vae", folder, "data.lazy=true", "train.steps=3"), quiet=True)
    child = vaekit.train(load_config("digits-latent-gmm", [
        f"out_dir={tmp_path}", "name=gmm", f"parent={parent}", "model.num_components=2", "model.covariance_type=diag",
        "eval.num_images=8", "eval.num_grid_images=4"]), quiet=True)
    assert load_file(vaekit.find_checkpoint(child) / "model.safetensors")["mixture.means"].shape == (2, 2)


# vaekit convert


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_vaekit_convert_of_a_png_folder_round_trips_the_pixels(tmp_path, mode, capsys):
    shape = (10, 4, 5) if mode == "L" else (10, 4, 5, 3)
    images = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
    (tmp_path / "png").mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image, mode=mode).save(tmp_path / "png" / f"{index:02d}.png")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "png"), str(out), "--test-fraction", "0.3", "--split-seed", "2"]) == 0
    assert "10/10" in capsys.readouterr().err  # the progress bar
    folder = read_dataset_folder(out)
    channels_last = images.reshape(10, 4, 5, -1)
    train_index, test_index = split_by_seed(10, 0.3, 2, "png")
    assert np.array_equal(folder.images["train"], channels_last[train_index.numpy()])
    assert np.array_equal(folder.images["test"], channels_last[test_index.numpy()])
    assert folder.manifest.image_shape == (channels_last.shape[3], 4, 5) and folder.labels is None
    in_memory = load_image_data(DataConfig(name="images", path=str(tmp_path / "png"), test_fraction=0.3, split_seed=2))
    converted = load_image_data(DataConfig(name="images", path=str(out), lazy=True))
    assert torch.equal(converted.train.load(), in_memory.train) and torch.equal(converted.test, in_memory.test)
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_vaekit_convert_of_idx_files_round_trips_pixels_and_labels(tmp_path, gz):
    write_fashion_folder(tmp_path / "idx", gz=gz)
    out = convert(tmp_path / "idx", tmp_path / "out", progress=False)
    folder, raw = read_dataset_folder(out), read_idx_folder(tmp_path / "idx")
    for split in ("train", "test"):
        assert np.array_equal(folder.images[split][..., 0], raw[f"{split}_images"])
        assert np.array_equal(folder.labels[split], raw[f"{split}_labels"])
    idx = load_image_data(DataConfig(name="fashion_mnist", path=str(tmp_path / "idx")))
    converted = load_image_data(DataConfig(name="images", path=str(out)))
    assert torch.equal(converted.train, idx.train) and torch.equal(converted.test, idx.test)
    assert torch.equal(converted.train_labels, idx.train_labels) and torch.equal(converted.test_labels, idx.test_labels)


def test_write_npy_leaves_no_file_when_a_write_fails(tmp_path):
    def chunks():
        yield np.zeros((4, 3), np.float32)
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="the source failed"):
        write_npy(tmp_path / "codes.npy", chunks(), 8)
    assert list(tmp_path.iterdir()) == []


# bad inputs: one DataError naming the file


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


BAD_FOLDERS = {  # what is done to a good dataset folder -> the message
    "missing file": (lambda f: (f / "train.npy").unlink(), r"train.npy: no such file"),
    "truncated .npy": (lambda f: _truncate(f / "train.npy"),
                       r"train.npy: truncated or corrupt .npy file: its header declares shape \(40, 6, 5, 1\)"),
    "not a .npy": (lambda f: (f / "test.npy").write_bytes(b"pixels"), r"test.npy: not a .npy file"),
    "wrong shape": (lambda f: np.save(f / "train.npy", np.zeros((40, 5, 6, 1), np.uint8)),
                    r"train.npy: holds shape \(40, 5, 6, 1\) of uint8, but vaekit-dataset.json declares \(40, 6, 5, 1\)"),
    "wrong dtype": (lambda f: np.save(f / "test.npy", np.zeros((8, 6, 5, 1), np.float32)),
                    r"test.npy: holds shape \(8, 6, 5, 1\) of float32"),
    "objects": (lambda f: np.save(f / "test.npy", np.array([None] * 8, dtype=object), allow_pickle=True),
                r"test.npy: holds Python objects"),
    "bad manifest": (lambda f: (f / MANIFEST_FILE).write_text('{"format": "vaekit-images"}'),
                     r"vaekit-dataset.json: not a vaekit dataset manifest \(version: Field required"),
    "manifest not JSON": (lambda f: (f / MANIFEST_FILE).write_text("{"), r"vaekit-dataset.json: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
@pytest.mark.parametrize("lazy", [True, False])
def test_a_bad_dataset_folder_gives_one_data_error_naming_the_file(tmp_path, case, lazy):
    folder = write_dataset_by_hand(tmp_path / "ds", 40, 8, height=6, width=5)
    damage, message = BAD_FOLDERS[case]
    damage(folder)
    with pytest.raises(DataError, match=message):
        load_image_data(DataConfig(name="images", path=str(folder), lazy=lazy))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((10, 4, 4), np.float32), r"x.npy: data.lazy reads 8-bit images \(uint8, 0..255\), not float32"),
    (np.zeros((10, 2, 4, 4), np.uint8), r"x.npy: expected shape \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\)"),
    (np.zeros((10,), np.uint8), r"x.npy: expected shape"),
], ids=["float", "two-channels", "1d"])
def test_a_lazy_npy_of_the_wrong_kind_gives_one_data_error(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(DataError, match=message):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npy"), lazy=True))


def test_a_lazy_npz_or_truncated_npy_gives_one_data_error(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((10, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"x.npz: not a folder of PNG files nor an existing .npy file \(data.lazy memory-maps"):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npz"), lazy=True))
    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    _truncate(tmp_path / "x.npy")
    with pytest.raises(DataError, match=r"x.npy: truncated or corrupt .npy file"):
        load_image_data(DataConfig(name="images", path=str(tmp_path / "x.npy"), lazy=True))


def test_vaekit_convert_refuses_a_missing_source_an_empty_one_and_an_existing_output(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vaekit: error: {tmp_path / 'missing'}: no such folder; convert reads a folder of PNG files or of IDX files"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no .png files"):
        convert(tmp_path / "empty", tmp_path / "out", progress=False)
    write_fashion_folder(tmp_path / "idx")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="out already exists"):
        convert(tmp_path / "idx", tmp_path / "out", progress=False)
    assert not leftovers(tmp_path)
