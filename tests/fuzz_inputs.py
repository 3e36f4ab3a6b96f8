"""Inputs for fuzzing vaekit's loaders, and the oracles that judge what a loader did with each one.

One `Boundary` per kind of untrusted input: configs, IDX files, image arrays (.npy/.npz), PNG
folders, point and mesh files, checkpoints, .vqz files. Each is a hypothesis strategy of inputs
(mostly valid files with random damage: flipped, cut, inserted bytes, rewritten header fields,
sizes that lie) and a `check` that feeds one input to vaekit. A check returns ACCEPTED (the
result was verified: the declared shape, the original values where nothing was damaged) or
REJECTED (the loader's documented error type, with a message). It raises `OracleViolation` when
vaekit accepted what it must refuse ("silent acceptance") or gave a wrong result; any other
exception escaping a check is a bug of the loader.

Shared by tests/test_fuzz.py (a fast slice by default, a long one under -m slow) and
benchmarks/fuzz_campaign.py (10,000 inputs per boundary, counted).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

import vaekit
from vaekit.coding.vq_codec import VQCodec
from vaekit.config import (
    DataConfig,
    EvalConfig,
    PointCloudDataConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from vaekit.data import load_image_data, load_point_folder, open_npy, read_idx
from vaekit.data.images import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from vaekit.errors import CodecError, ConfigError, DataError, VaekitError
from vaekit.models.registry import lookup, model_names

ACCEPTED, REJECTED = "accepted", "rejected"
DELETE = "<delete>"  # an edit that removes a key instead of setting it


class OracleViolation(AssertionError):
    """vaekit accepted an input it must refuse, or its result is not what the input declares."""


@dataclass(frozen=True)
class Fixtures:
    """What the checks compare with: tiny trained runs and a .vqz file, and a scratch folder."""

    work: Path  # each input is written into a fresh folder under it, removed afterwards
    vae_run: Path  # a digits VAE (model, optimizer and EMA weight files)
    prior_run: Path  # a code prior over a digits VQ-VAE: what .vqz files are decoded with
    vqz: bytes  # 3 digits compressed with prior_run
    vqz_images: np.ndarray  # (3, 8, 8) uint8: what `vaekit.decompress` gives for `vqz`
    vqz_codes: bytes  # its code indices, int32 little endian: what its CRC covers after header and payload
    lossless: bytes  # 3 binarised digits coded losslessly (bits back) with vae_run
    lossless_images: np.ndarray  # (3, 8, 8) uint8: those digits, 0 or 255


@dataclass(frozen=True)
class Boundary:
    """One kind of untrusted input: its generator and the check that judges vaekit's answer."""

    inputs: st.SearchStrategy[Any]
    check: Callable[[Any, Fixtures], str]


TINY_VQVAE = "model={name: vqvae, channels: 8, downsamples: 1, residual_cells: 0, num_codes: 16, code_dim: 4}"


def make_fixtures(folder: Path) -> Fixtures:
    """Train the tiny runs (2 steps each: a few seconds) and compress 3 digits with the code prior."""
    from sklearn.datasets import load_digits

    runs = folder / "runs"
    common = [f"out_dir={runs}", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
              "train.num_threads=1", "eval.num_importance_samples=5", "eval.num_images=20", "eval.num_grid_images=4"]
    vae = vaekit.train("digits-vae", overrides=[*common, "name=vae", "model.hidden_dims=[16]", "model.latent_dim=2",
                                                "train.ema_decay=0.9"], quiet=True)
    vq = vaekit.train("digits-vqvae", overrides=[*common, "name=vq", TINY_VQVAE], quiet=True)
    prior = vaekit.train("digits-code-prior", overrides=[
        *common, "name=prior", f"parent={vq}", "model.width=8", "model.layers=1", "model.heads=1"], quiet=True)
    digits = folder / "digits.npy"
    np.save(digits, np.round(load_digits().images[:3] * 255 / 16).astype(np.uint8))
    compressed = vaekit.compress(prior, [digits], folder / "digits.vqz").read_bytes()
    decoded = vaekit.decompress(folder / "digits.vqz", prior, folder / "decoded")
    codes = VQCodec(vaekit.load(prior)).decode_codes(compressed)[1].numpy().astype("<i4").tobytes()
    binary = folder / "binary.npy"
    np.save(binary, np.where(load_digits().images[:3] >= 8, 255, 0).astype(np.uint8))
    lossless = vaekit.compress(vae, [binary], folder / "binary.vqz", lossless=True).read_bytes()
    work = folder / "work"
    work.mkdir()
    return Fixtures(work, vae, prior, compressed, np.stack([_png_pixels(path) for path in decoded]), codes, lossless,
                    np.load(binary))


def run_property(boundary: Boundary, fixtures: Fixtures, *, max_examples: int,
                 test: Callable[[Any], object] | None = None) -> None:
    """Feed `max_examples` inputs of `boundary` to its check, or to `test` (which then judges them), with hypothesis.

    No example database and no health checks (loading takes milliseconds, and the inputs are large on purpose);
    with `test` only the generation phase runs (a campaign counts every input and fails none).
    """
    judge = test or (lambda case: boundary.check(case, fixtures))

    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=(Phase.generate,) if test is not None else tuple(Phase))
    @given(boundary.inputs)
    def run(case: Any) -> None:
        judge(case)

    run()


@contextmanager
def scratch(fixtures: Fixtures) -> Iterator[Path]:
    """A fresh folder for one input, removed afterwards."""
    folder = Path(tempfile.mkdtemp(dir=fixtures.work))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rejected(error: Exception) -> str:
    """REJECTED and the error's type, once the refusal says something."""
    if not str(error).strip():
        raise OracleViolation(f"{type(error).__name__} without a message")
    return f"{REJECTED} ({type(error).__name__})"


# --- byte-level damage, shared by every file format ----------------------------------------------

POSITIONS = st.one_of(st.integers(0, 96), st.integers(0, 2**20))  # header bytes half of the time
MUTATIONS = st.one_of(st.just([]), st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete", "word"]),
                                                      POSITIONS, st.integers(0, 2**64 - 1)), min_size=1, max_size=4))


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    """`data` with each mutation applied: flip a bit, set a byte, cut the tail, insert or delete bytes, overwrite
    8 bytes with a number."""
    out = bytearray(data)
    for operation, position, argument in mutations:
        at = position % (len(out) + 1)
        if operation == "flip" and out:
            out[at % len(out)] ^= 1 << (argument % 8)
        elif operation == "set" and out:
            out[at % len(out)] = argument % 256
        elif operation == "cut":
            del out[at:]
        elif operation == "insert":
            out[at:at] = argument.to_bytes(8, "little")[: 1 + argument % 8]
        elif operation == "delete":
            del out[at : at + 1 + argument % 16]
        elif operation == "word":
            out[at : at + 8] = argument.to_bytes(8, "little")
    return bytes(out)


def _seeded_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


# --- configs ------------------------------------------------------------------------------------

EDGE_NUMBERS = [0, -1, 1, 2, -(2**31), 2**31, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 0.5, 0.999, 1.0, -0.0, 1e-300,
                5e-324, 1e308, -1e308, math.nan, math.inf, -math.inf]
NUMBERS = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.sampled_from(EDGE_NUMBERS), st.floats())
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
NASTY_YAML = ["[" * 5000 + "]" * 5000, "{a: " * 3000 + "1" + "}" * 3000, "!!python/object/apply:os.system ['true']",
              "&a [*a]", "{a: &x 1, b: *x}", "1e400", "-.inf", ".nan", "0x7fffffffffffffffffffff", "~", "2001-12-14",
              "!!binary aGVsbG8=", "? [a]\n: b", "!!set {a, b}", "'unterminated", "{", "- a\n- b", "\0", "\ufeff"]


def _config_keys() -> list[str]:
    """Every key of the config models: the top level, the data, train and eval sections, every registered model."""
    sections = {"data": [DataConfig, PointCloudDataConfig], "train": [TrainConfig], "eval": [EvalConfig],
                "model": [lookup(name)[0] for name in model_names()]}
    keys = set(RunConfig.model_fields)
    keys |= {f"{section}.{field}" for section, classes in sections.items() for c in classes for field in c.model_fields}
    return sorted(keys | {"model.codes.shape", "model.codes.dtype", "model.codes.num_symbols"})


CONFIG_KEYS = _config_keys()
KEYS = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(st.sampled_from("abcdemnorst._ =["), max_size=16))


def flow_yaml(value: Any) -> str:
    """`value` as one line of flow-style YAML (what a user types after `key=`)."""
    return yaml.safe_dump([value], default_flow_style=True, width=2**31).strip()[1:-1]


SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from(EDGE_NUMBERS), st.floats(-2, 2), st.booleans(), st.none())
PLAUSIBLE = st.builds(lambda key, value: f"{key}={flow_yaml(value)}", st.sampled_from(CONFIG_KEYS),
                      SCALARS | st.lists(SCALARS, max_size=3))
OVERRIDES = st.one_of(
    PLAUSIBLE, PLAUSIBLE, PLAUSIBLE,  # half of them: a real key and a plausible value
    st.builds(lambda key, value: f"{key}={flow_yaml(value)}", KEYS, JSON_VALUES),
    st.builds(lambda key, text: f"{key}={text}", KEYS, st.text(max_size=20) | st.sampled_from(NASTY_YAML)),
    st.builds(lambda name: f"model={{name: {name}}}", st.sampled_from(model_names())),  # switch to another model
    st.builds(lambda name: f"data={{name: {name}}}", st.sampled_from(["digits", "images", "procedural", "point_folder"])),
    st.text(max_size=20),  # no `=`, or one in the wrong place
)


def _document(pairs: list[tuple[str, Any]]) -> bytes:
    """A YAML document setting each dotted key of `pairs` to its value."""
    document: dict[str, Any] = {}
    for key, value in pairs:
        set_path(document, key.split("."), value)
    return yaml.safe_dump(document, sort_keys=False).encode()


@dataclass(frozen=True)
class ConfigInput:
    """A config file's bytes (None: a preset) and `key=value` overrides."""

    document: bytes | None
    preset: str | None
    overrides: list[str]


CONFIG_INPUTS = st.builds(
    ConfigInput,
    document=st.one_of(
        st.none(), st.none(), st.none(),  # three in four: a preset and overrides
        st.builds(_document, st.lists(st.tuples(KEYS, JSON_VALUES), max_size=8)),
        st.text(max_size=200).map(str.encode),
        st.binary(max_size=200),
        st.sampled_from(NASTY_YAML).map(str.encode),
    ),
    preset=st.sampled_from([None, "digits-vae", "digits-vqvae", "digits-code-prior", "pointcloud-ae", "digits-hvae",
                            "fashion-mnist-wae-gan", "pointcloud-latent-gmm"]),
    overrides=st.lists(OVERRIDES, max_size=4),
)

# The ranges the config documents (README, the comments of config.py and the model configs), written out here
# independently of the pydantic fields: an accepted config holding a value outside one is a silent acceptance.
SIZE = ("a size, at least 1", lambda v: v >= 1)
COUNT = ("a count, at least 0", lambda v: v >= 0)
POSITIVE = ("positive", lambda v: v > 0)
PROBABILITY = ("in [0, 1)", lambda v: 0 <= v < 1)
OPEN_UNIT = ("in (0, 1)", lambda v: 0 < v < 1)
SEED = ("a seed in [0, 2^63)", lambda v: 0 <= v < 2**63)
DOCUMENTED_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **dict.fromkeys([
        "train.steps", "train.batch_size", "train.log_every", "train.eval_every", "train.checkpoint_every",
        "train.keep_checkpoints", "train.num_threads", "eval.num_importance_samples", "eval.extra_importance_samples",
        "eval.num_images", "eval.samples_per_chunk", "eval.images_per_chunk", "eval.num_grid_images",
        "data.max_train", "data.max_test", "model.latent_dim", "model.hidden_dims", "model.conv_channels",
        "model.channels", "model.code_dim", "model.layers", "model.heads", "model.width", "model.num_mixtures",
        "model.noise_dim", "model.generator_hidden_dims", "model.discriminator_hidden_dims", "model.critic_updates",
        "model.encoder_channels", "model.decoder_hidden_dims", "model.sliced_directions", "model.max_iter",
        "model.codes_per_chunk", "model.latent_channels", "model.groups_per_scale", "model.image_shape",
        "model.num_points", "model.iwae_samples", "model.component_grid", "model.num_components",
        "model.codes.shape"], SIZE),
    **dict.fromkeys(["model.num_codes", "model.num_bins", "model.codes.num_symbols", "data.shapes_per_category"],
                    ("at least 2", lambda v: v >= 2)),
    "data.num_points": ("at least 16 points", lambda v: v >= 16),
    **dict.fromkeys([
        "train.lr_warmup_steps", "data.validation", "eval.sample_quality_samples", "model.kl_warmup_steps",
        "model.downsamples", "model.residual_cells", "model.restart_after", "model.cells_per_group",
        "train.weight_decay", "train.group_lr.*", "model.beta", "model.free_bits", "model.commitment_cost",
        "model.penalty_weight", "model.gradient_penalty", "model.spectral_regularisation"], COUNT),
    **dict.fromkeys([
        "train.lr", "train.grad_clip", "train.skip_grad_norm", "eval.sample_temperatures", "model.gaussian_std",
        "model.gaussian_min_std", "model.prior_std", "model.reconstruction_scale", "model.noise_std", "model.reg_covar",
        "model.emd_epsilon", "model.rbf_bandwidth", "model.soft_clamp", "model.overfit_gap_per_dim"], POSITIVE),
    **dict.fromkeys(["train.betas", "model.dropout"], PROBABILITY),
    **dict.fromkeys(["train.ema_decay", "model.ema_decay", "data.test_fraction", "model.held_out_fraction"], OPEN_UNIT),
    **dict.fromkeys(["train.seed", "eval.seed", "data.split_seed", "data.test_binarize_seed"], SEED),
    "model.seed": ("a seed of scikit-learn's EM, in [0, 2^32)", lambda v: 0 <= v < 2**32),
}


def out_of_documented_range(config: RunConfig) -> list[str]:
    """The values of an accepted config that its documentation rules out: outside a key's range, not finite,
    a run name that is not one plain folder name, an empty list of procedural categories."""
    problems = []
    for key, value in _leaves(config.model_dump(), ""):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key}={value!r} (numbers must be finite)")
        rule = DOCUMENTED_RANGES.get(key) or DOCUMENTED_RANGES.get(key.rpartition(".")[0] + ".*")
        if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[1](value):
            problems.append(f"{key}={value!r} (documented: {rule[0]})")
    if config.name in ("", ".", "..") or any(sep in config.name for sep in "/\\\0"):
        problems.append(f"name={config.name!r} (one plain folder name)")
    if isinstance(config.data, PointCloudDataConfig) and not config.data.categories:
        problems.append("data.categories=() (the procedural data set needs a category)")
    return problems


def _leaves(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; list items under their list's key, mapping values under key.NAME."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _leaves(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item, key)
    else:
        yield key, value


def check_config(case: ConfigInput, fixtures: Fixtures) -> str:
    """`load_config` gives a RunConfig within every documented range, or a ConfigError."""
    with scratch(fixtures) as folder:
        source: str | Path | None = case.preset
        if case.document is not None:
            source = folder / "config.yaml"
            source.write_bytes(case.document)
        try:
            config = load_config(source, case.overrides)
        except ConfigError as error:
            return rejected(error)
    if not isinstance(config, RunConfig):
        raise OracleViolation(f"load_config returned {type(config).__name__}")
    problems = out_of_documented_range(config)
    if problems:
        raise OracleViolation(f"silent acceptance: {'; '.join(problems)}")
    return ACCEPTED


# --- IDX files ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdxInput:
    """An IDX file's (uncompressed) bytes, whether it is gzipped (and damaged after compression), its magic."""

    raw: bytes
    magic: int
    gz: bool
    gz_mutations: list[tuple[str, int, int]]


@st.composite
def _idx_bytes(draw: st.DrawFn, magic: int) -> bytes:
    """A valid IDX file of `magic` (small dimensions, seeded values), damaged or not, sometimes with megabytes of
    zeros after it (a decompression bomb once gzipped)."""
    ndim = magic % 256  # the magic's last byte: 3 dimensions for images, 1 for labels
    dims = draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim))
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    raw = mutate(header + _seeded_bytes(draw(st.integers(0, 2**32)), math.prod(dims)), draw(MUTATIONS))
    return raw + bytes(draw(st.sampled_from([0] * 19 + [8 * 2**20])))


IDX_INPUTS = st.sampled_from([IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC]).flatmap(
    lambda magic: st.builds(IdxInput, _idx_bytes(magic), st.just(magic), st.booleans(), MUTATIONS))


def idx_array(raw: bytes, magic: int) -> np.ndarray | None:
    """The array an IDX file of `magic` holds by the format's definition, or None if it holds none."""
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    values = raw[4 + 4 * ndim :]
    if len(values) != math.prod(shape):
        return None
    return np.frombuffer(values, np.uint8).reshape(shape)


def check_idx(case: IdxInput, fixtures: Fixtures) -> str:
    """`read_idx` gives the array the file declares, or a DataError."""
    data = mutate(gzip.compress(case.raw, compresslevel=1), case.gz_mutations) if case.gz else case.raw
    with scratch(fixtures) as folder:
        path = folder / ("images.gz" if case.gz else "images")
        path.write_bytes(data)
        try:
            array = read_idx(path, magic=case.magic)
        except DataError as error:
            return rejected(error)
    try:
        raw = gzip.decompress(data) if case.gz else data
    except (OSError, EOFError, zlib.error):
        raise OracleViolation("accepted a damaged gzip stream") from None
    expected = idx_array(raw, case.magic)
    if expected is None:
        raise OracleViolation(f"accepted an invalid IDX file as an array of shape {array.shape}")
    if array.dtype != np.uint8 or array.shape != expected.shape or not np.array_equal(array, expected):
        raise OracleViolation(f"read {array.dtype} {array.shape}, the file declares uint8 {expected.shape}")
    return ACCEPTED


# --- image arrays (.npy, .npz) ----------------------------------------------------------------------

NPY_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
DESCRS = ["'|u1'", "'<f4'", "'<f8'", "'>f4'", "'<f2'", "'|b1'", "'<i8'", "'<u2'", "'|O'", "'<U3'", "'|S2'", "'|V0'",
          "'|V4'", "'<c8'", "'<M8[s]'", "[('a', '<f4')]", "'bogus'", "5", "None", "'<f4' + 'x'", "'<V99999999999999999999'",
          "[('a', '<f4', (1099511627776,))]", "[('a', '<f4', (-1,))]", "[('a', 'O')]", "'" + "(" * 300 + "'"]
SHAPE_ITEMS = st.one_of(st.integers(0, 9), st.integers(-3, 3), st.sampled_from([2**31, 2**32, 2**62, 2**64, 10**20]))
SHAPES = st.one_of(st.lists(SHAPE_ITEMS, max_size=5).map(lambda dims: repr(tuple(dims))),
                   st.sampled_from(["(1.5,)", "[2, 3]", "'x'", "(True,)", "()", "(2, 2) + (2,)"]))


def npy_bytes(header: str, version: int, data: bytes) -> bytes:
    """A .npy file with a header dictionary written as given (format version 1, 2 or 3), then `data`."""
    text = header.encode("utf-8" if version == 3 else "latin1")
    length_size = 2 if version == 1 else 4
    padding = -(6 + 2 + length_size + len(text) + 1) % 64
    length = (len(text) + padding + 1).to_bytes(length_size, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + length + text + b" " * padding + b"\n" + data


@st.composite
def image_arrays(draw: st.DrawFn) -> np.ndarray:
    """A small array of images in one of the accepted layouts, of uint8 or floats (in [0, 1] or not)."""
    count, height, width = draw(st.sampled_from([2, 3, 5, 0, 1])), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    layout = draw(st.sampled_from([(count, height, width), (count, height, width, 1), (count, height, width, 3),
                                   (count, 3, height, width), (count, height), (count, height, width, 2)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "int16"]))
    if dtype == "uint8":
        return rng.integers(0, 256, layout, dtype=np.uint8)
    values = rng.random(layout) * draw(st.sampled_from([1.0, 1.0, 2.0, -1.0]))
    if values.size and draw(st.booleans()) and dtype != "int16":
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([math.nan, math.inf, -0.5]))
    return values.astype(dtype)


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """A .npy file: np.save of an image array, or a header written by hand (any dtype, shape and version) followed
    by as many bytes as it declares or not; then damaged or not."""
    if draw(st.integers(0, 2)):  # two in three: np.save's own file
        buffer = io.BytesIO()
        np.save(buffer, draw(image_arrays()), allow_pickle=False)
        raw = buffer.getvalue()
    else:
        header = (f"{{'descr': {draw(st.sampled_from(DESCRS))}, 'fortran_order': "
                  f"{draw(st.sampled_from(['False', 'True', '0', 'None']))}, 'shape': {draw(SHAPES)}, }}")
        raw = npy_bytes(header, draw(st.sampled_from([1, 1, 2, 3])), _seeded_bytes(draw(st.integers(0, 2**32)),
                                                                                     draw(st.integers(0, 600))))
    return mutate(raw, draw(MUTATIONS))


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    """A .npz file: a zip of .npy members (named train/test, one other name, or none), stored or deflated, damaged
    or not; sometimes a .npy file named .npz."""
    if draw(st.integers(0, 9)) == 0:
        return draw(npy_files())
    buffer = io.BytesIO()
    names = draw(st.sampled_from([["train.npy", "test.npy"], ["images.npy"], ["x.npy", "y.npy"], ["train"], []]))
    with zipfile.ZipFile(buffer, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as archive:
        for name in names:
            archive.writestr(name, draw(npy_files()))
    return mutate(buffer.getvalue(), draw(MUTATIONS))


@dataclass(frozen=True)
class ArrayInput:
    """An image array file (.npy or .npz) and whether the images loader reads it lazily."""

    data: bytes
    suffix: str
    lazy: bool


ARRAY_INPUTS = st.one_of(st.builds(ArrayInput, npy_files(), st.just(".npy"), st.booleans()),
                         st.builds(ArrayInput, npz_files(), st.just(".npz"), st.booleans()))


def check_arrays(case: ArrayInput, fixtures: Fixtures) -> str:
    """`open_npy` gives the array the header declares; the images loader (data.name=images) gives float images in
    [0, 1] holding the file's values; or each raises a DataError."""
    with scratch(fixtures) as folder:
        path = folder / f"images{case.suffix}"
        path.write_bytes(case.data)
        if case.suffix == ".npy":
            _check_open_npy(path)
        try:
            data = load_image_data(DataConfig(name="images", path=str(path), lazy=case.lazy))
            train = data.train.load() if case.lazy else data.train
        except DataError as error:
            return rejected(error)
        expected = _numpy_images(path)
    if expected is None:
        raise OracleViolation("accepted images that numpy itself cannot read")
    _check_images(train, data.test, None, expected)
    return ACCEPTED


def _check_open_npy(path: Path) -> None:
    """open_npy's array has the dtype, shape and bytes the file declares (read with numpy's header parser)."""
    try:
        array = open_npy(path)
    except DataError as error:
        rejected(error)
        return
    raw = path.read_bytes()
    with path.open("rb") as file:
        version = np.lib.format.read_magic(file)
        if version not in NPY_READERS:
            raise OracleViolation(f"open_npy read format version {version}; vaekit documents 1.0 and 2.0")
        shape, fortran, dtype = NPY_READERS[version](file)  # numpy's own reading of the header
        offset = file.tell()
    if (array.shape, array.dtype, fortran) != (tuple(shape), dtype, False) or dtype.hasobject:
        raise OracleViolation(f"open_npy gave {array.dtype} {array.shape}; the header declares {dtype} {shape}")
    if array.tobytes() != raw[offset:]:
        raise OracleViolation("open_npy's values are not the file's bytes")


def _numpy_images(path: Path) -> np.ndarray | None:
    """Every value of an array file as numpy reads it (the train and test arrays, or the one array), or None."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return np.array(loaded).reshape(-1)
        with loaded:
            keys = ["train", "test"] if "train" in loaded.files else loaded.files
            return np.concatenate([loaded[key].reshape(-1) for key in keys])
    except Exception:  # noqa: BLE001 - numpy cannot read it
        return None


def _check_images(train: torch.Tensor, test: torch.Tensor, count: int | None, values: np.ndarray | None) -> None:
    """Both splits are float32 (N, C, H, W) with C in {1, 3} and values in [0, 1], together `count` images (when
    given) holding `values` (uint8 scaled by 1/255, or floats as they are; when given)."""
    for split in (train, test):
        if split.dtype != torch.float32 or split.ndim != 4 or split.shape[1] not in (1, 3) or len(split) == 0:
            raise OracleViolation(f"a split of {split.dtype} {tuple(split.shape)}, not float32 (N, C, H, W)")
        if not bool(torch.isfinite(split).all()) or float(split.min()) < 0 or float(split.max()) > 1:
            raise OracleViolation("image values outside [0, 1] or not finite")
    if train.shape[1:] != test.shape[1:] or count not in (None, len(train) + len(test)):
        raise OracleViolation(f"splits {tuple(train.shape)} and {tuple(test.shape)} of {count} images")
    if values is not None:
        scaled = values.astype(np.float32) / 255 if values.dtype == np.uint8 else values.astype(np.float32)
        found = np.sort(torch.cat([train.reshape(-1), test.reshape(-1)]).numpy())
        if found.shape != np.sort(scaled.reshape(-1)).shape or not np.array_equal(found, np.sort(scaled.reshape(-1))):
            raise OracleViolation("the loaded images do not hold the file's values")


# --- PNG folders --------------------------------------------------------------------------------

PNG_MODES = ["L", "RGB", "RGBA", "P", "1", "LA", "I;16"]


@st.composite
def png_files(draw: st.DrawFn) -> bytes:
    """A small PNG image of any mode, damaged or not; sometimes one whose header declares 20000 x 20000 pixels."""
    mode, width, height = draw(st.sampled_from(PNG_MODES)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    if draw(st.integers(0, 19)) == 0:  # beyond Pillow's bomb limit, or between its warning and its error
        width = height = draw(st.sampled_from([20000, 12000]))
        image = Image.new(mode, (1, 1))
    else:
        image = Image.frombytes(mode, (width, height), _seeded_bytes(draw(st.integers(0, 2**32)),
                                                                    len(Image.new(mode, (width, height)).tobytes())))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if width >= 12000:  # rewrite IHDR's size and its CRC: the header lies, the data is tiny
        ihdr = bytearray(data[12:29])
        ihdr[4:12] = struct.pack(">II", width, height)
        data = data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]
    return mutate(data, draw(MUTATIONS))


@dataclass(frozen=True)
class PngInput:
    """The PNG files of a folder, and whether the images loader reads it lazily."""

    files: list[bytes]
    lazy: bool


PNG_INPUTS = st.builds(PngInput, st.lists(png_files(), min_size=1, max_size=4), st.booleans())


def check_pngs(case: PngInput, fixtures: Fixtures) -> str:
    """The images loader gives float images in [0, 1] of every file, or a DataError."""
    with scratch(fixtures) as folder:
        for index, data in enumerate(case.files):
            (folder / f"{index}.png").write_bytes(data)
        try:
            data = load_image_data(DataConfig(name="images", path=str(folder), lazy=case.lazy))
            train = data.train.load() if case.lazy else data.train
        except DataError as error:
            return rejected(error)
    _check_images(train, data.test, len(case.files), None)
    return ACCEPTED


# --- point and mesh files -------------------------------------------------------------------------

COORDINATES = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, 1e38, 3.4e38, 1e300, 0.0]))


@st.composite
def _points(draw: st.DrawFn) -> np.ndarray:
    """A cloud of 0..40 random points (P, 3), some of them NaN, infinite or huge at times."""
    count = draw(st.one_of(st.integers(16, 40), st.integers(0, 40)))
    points = np.random.default_rng(draw(st.integers(0, 2**32))).normal(size=(count, 3))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        if points.size:
            points.flat[draw(st.integers(0, points.size - 1))] = draw(COORDINATES)
    with np.errstate(all="ignore"):  # huge coordinates overflow float32 on purpose
        return points * draw(st.sampled_from([1.0, 1.0, 1.0, 0.0, 1e-30, 1e30]))


def _faces(draw: st.DrawFn, num_vertices: int) -> np.ndarray:
    """0..30 triangles of vertex indices, some out of range at times."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    faces = rng.integers(0, max(num_vertices, 1), (draw(st.integers(0, 30)), 3))
    if faces.size and draw(st.booleans()):
        faces.flat[draw(st.integers(0, faces.size - 1))] = draw(st.sampled_from([-1, num_vertices, 2**31 - 1]))
    return faces


def _text_rows(rows: np.ndarray, prefix: str = "") -> str:
    return "".join(prefix + " ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row.tolist()) + "\n"
                   for row in rows)


@st.composite
def point_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes) of a point or mesh file of each format vaekit reads, valid or with lying counts, damaged or not."""
    suffix = draw(st.sampled_from([".npy", ".npz", ".xyz", ".off", ".obj", ".ply", ".stl"]))
    points = draw(_points())
    declared = draw(st.sampled_from([None, None, 0, 2**31 - 1, 10**12]))  # a vertex/face count that lies
    if suffix in (".npy", ".npz"):
        buffer = io.BytesIO()
        with np.errstate(all="ignore"):
            np.save(buffer, points.astype(draw(st.sampled_from(["float32", "float64", "float16"]))), allow_pickle=False)
        data = buffer.getvalue() if draw(st.integers(0, 4)) else draw(npy_files())
        if suffix == ".npz":
            zipped = io.BytesIO()
            with zipfile.ZipFile(zipped, "w") as archive:
                archive.writestr("points.npy", data)
            data = zipped.getvalue()
    elif suffix == ".xyz":
        data = _text_rows(points).encode()
    else:
        faces = _faces(draw, len(points))
        count = len(points) if declared is None else declared
        if suffix == ".off":
            data = f"OFF\n{count} {len(faces)} 0\n{_text_rows(points)}{_text_rows(faces, '3 ')}".encode()
        elif suffix == ".obj":
            data = f"{_text_rows(points, 'v ')}{_text_rows(faces + 1, 'f ')}".encode()
        elif suffix == ".ply":
            data = _ply(points, faces, count, binary=draw(st.booleans()))
        else:
            in_range = (faces >= 0).all(1) & (faces < len(points)).all(1)
            triangles = points[faces[in_range]] if len(points) else np.zeros((0, 3, 3))
            with np.errstate(over="ignore"):  # float64 coordinates beyond float32 become infinities, on purpose
                data = (b"\0" * 80 + struct.pack("<I", len(triangles) if declared is None else declared % 2**32)
                        + b"".join(b"\0" * 12 + tri.astype("<f4").tobytes() + b"\0\0" for tri in triangles))
    return suffix, mutate(data, draw(MUTATIONS))


def _ply(points: np.ndarray, faces: np.ndarray, count: int, *, binary: bool) -> bytes:
    header = (f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\nelement vertex {count}\n"
              "property float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n").encode()
    if binary:
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 / int32 wrap or overflow, on purpose
            body = points.astype("<f4").tobytes() + b"".join(b"\3" + face.astype("<i4").tobytes() for face in faces)
    else:
        body = (_text_rows(points) + _text_rows(faces, "3 ")).encode()
    return header + body


@dataclass(frozen=True)
class PointInput:
    """A point or mesh file in a category folder beside `valid` good clouds, and the normalisation asked for."""

    suffix: str
    data: bytes
    valid: int
    normalization: str


POINT_INPUTS = st.builds(lambda file, valid, normalization: PointInput(*file, valid, normalization), point_files(),
                         st.sampled_from([1, 2, 0]), st.sampled_from(["unit_sphere", "unit_box", "none"]))
NUM_POINTS = 32


def check_points(case: PointInput, fixtures: Fixtures) -> str:
    """`load_point_folder` gives finite, normalised (N, 32, 3) clouds in non-empty splits, or a DataError."""
    with scratch(fixtures) as folder:
        category = folder / "shapes"
        category.mkdir()
        (category / f"fuzzed{case.suffix}").write_bytes(case.data)
        for index in range(case.valid):
            np.save(category / f"valid-{index}.npy", np.random.default_rng(index).normal(size=(64, 3)))
        try:
            data = load_point_folder(folder, num_points=NUM_POINTS, normalization=case.normalization)
        except DataError as error:
            return rejected(error)
    clouds = torch.cat([data.train, data.test])
    if len(data.train) == 0 or len(data.test) == 0:
        raise OracleViolation(f"silent acceptance: a split of {len(data.train)} training and {len(data.test)} test "
                              "clouds")
    if clouds.shape != (1 + case.valid, NUM_POINTS, 3) or clouds.dtype != torch.float32:
        raise OracleViolation(f"clouds of {clouds.dtype} {tuple(clouds.shape)} from {1 + case.valid} files")
    if not bool(torch.isfinite(clouds).all()):
        raise OracleViolation("accepted clouds with NaN or infinite coordinates")
    reach = {"unit_sphere": clouds.norm(dim=-1).amax(1), "unit_box": clouds.abs().amax((1, 2)) * 2}
    if case.normalization in reach and not bool((reach[case.normalization] <= 1 + 1e-4).all()):
        raise OracleViolation(f"clouds outside the {case.normalization} after normalisation")
    return ACCEPTED


# --- checkpoints ----------------------------------------------------------------------------------

STATE_PATHS = st.one_of(
    st.sampled_from([("step",), ("format_version",), ("model_name",), ("config",), ("config", "model"),
                     ("config", "model", "name"), ("config", "model", "hidden_dims"), ("config", "model", "latent_dim"),
                     ("config", "model", "image_shape"), ("config", "model", "likelihood"),
                     ("config", "model", "gaussian_std"), ("config", "parent"), ("config", "parent_sha256"),
                     ("config", "data"), ("config", "data", "name"), ("config", "train", "ema_decay"), ("files",),
                     ("files", "model.safetensors"), ("files", "model.safetensors", "bytes"),
                     ("files", "model.safetensors", "sha256"), ("files", "ema.safetensors"), ("optimizers",),
                     ("optimizers", "model", "param_groups"), ("extra",), ("extra", "train_seconds"),
                     ("extra", "grad_scaler"), ("extra", "world_size")]),
    st.lists(st.text(max_size=6), min_size=1, max_size=3).map(tuple),
)
NEAR_VALID = st.sampled_from([-1, 0, 1, 2, 2**63, 2**64, [1, 8, 8], [-1, 8, 8], [1, 8, -8], [0, 8, 8], [1, 2**40, 1],
                              [16], [16, 16], [2**40], [], {}, "vae", "vqvae", "code-prior", "gaussian", None, 1e308,
                              -0.5, "0" * 64, {"bytes": 8, "sha256": "0" * 64}, {"name": "vae"}])
STATE_EDITS = st.one_of(
    st.tuples(st.just("replace"), JSON_VALUES),
    st.tuples(st.just("edit"), st.lists(st.tuples(STATE_PATHS, st.one_of(JSON_VALUES, NEAR_VALID, st.just(DELETE))),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("nest"), st.integers(1, 200_000), st.sampled_from(["[", '{"a": '])),
    st.tuples(st.just("parent"), st.sampled_from(["self", "checkpoint", "cycle", "sibling", "missing", "", "\0", "long",
                                                  "/", "state-file"])),
    st.tuples(st.just("bytes"), MUTATIONS),
)
HEADER_VALUES = st.one_of(JSON_VALUES, st.sampled_from(
    ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X", [4, 4], [2**40, 2**40], [-1], [0, 8], [8, 0],
     [0, 2**63], list(range(20)), DELETE]))
TENSOR_EDITS = st.one_of(
    st.tuples(st.just("bytes"), MUTATIONS),
    st.tuples(st.just("header"), st.lists(st.tuples(st.integers(0, 100), st.sampled_from(["dtype", "shape",
                                                                                         "data_offsets", "extra"]),
                                                    HEADER_VALUES), min_size=1, max_size=3)),
    st.tuples(st.just("length"), st.sampled_from([0, 1, 2, 7, 2**31, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)),
    st.tuples(st.just("values"), st.integers(0, 2**32), st.sampled_from([math.nan, math.inf, -math.inf, 1e30])),
)


TENSOR_FILES = ("model.safetensors", "ema.safetensors")


@dataclass(frozen=True)
class CheckpointInput:
    """An edit of the VAE run's state.json or of one of its weight files; `careful`: the edited file's SHA-256 and
    size are recorded in state.json, as a careful forger would."""

    state_edit: tuple[Any, ...] | None
    tensor_edit: tuple[Any, ...] | None
    target: str  # the weight file the tensor edit changes
    careful: bool


CHECKPOINT_INPUTS = st.one_of(
    st.builds(CheckpointInput, STATE_EDITS, st.none(), st.just(TENSOR_FILES[0]), st.just(False)),
    st.builds(CheckpointInput, st.none(), TENSOR_EDITS, st.sampled_from(TENSOR_FILES), st.booleans()),
    st.builds(CheckpointInput, st.none(), st.none(), st.just(TENSOR_FILES[0]), st.just(False)),  # intact
)


def set_path(document: Any, path: list[str] | tuple[Any, ...], value: Any) -> None:
    """Set (or delete, for DELETE) `document[path[0]][path[1]]...`, making mappings where the path needs them."""
    node = document
    for key in path[:-1]:
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if isinstance(node, dict):
        if value == DELETE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value


def _edited_state(state: dict[str, Any], edit: tuple[Any, ...], checkpoint: Path) -> bytes:
    """The bytes of state.json after `edit` (checkpoint: the copied one, for edits naming parents)."""
    kind = edit[0]
    if kind == "replace":
        return json.dumps(edit[1]).encode()
    if kind == "edit":
        for path, value in edit[1]:
            set_path(state, path, value)
        return json.dumps(state).encode()
    if kind == "nest":
        return (b'{"format_version": 1, "config": ' + edit[2].encode() * edit[1] + b"1"
                + (b"]" if edit[2] == "[" else b"}") * edit[1] + b"}")
    if kind == "bytes":
        return mutate(json.dumps(state, indent=2).encode(), edit[1])
    state["config"]["parent"] = _parent(edit[1], checkpoint, state)
    return json.dumps(state).encode()


def _parent(kind: str, checkpoint: Path, state: dict[str, Any]) -> str:
    """A `parent` for the run of `checkpoint`: itself, a two-run cycle, a run without parent, or paths to nowhere."""
    run = checkpoint.parent.parent
    if kind in ("cycle", "sibling"):
        sibling = run.parent / "sibling"
        shutil.copytree(run, sibling)
        if kind == "cycle":
            other = json.loads(json.dumps(state))
            other["config"]["parent"] = str(run)
            (sibling / checkpoint.relative_to(run) / "state.json").write_text(json.dumps(other))
        return str(sibling)
    return {"self": str(run), "checkpoint": str(checkpoint), "missing": str(run.parent / "nowhere"), "long": "a" * 5000,
            "state-file": str(checkpoint / "state.json")}.get(kind, kind)


def _edited_tensors(data: bytes, edit: tuple[Any, ...]) -> bytes:
    """A safetensors file after `edit`: raw bytes, header entries, the header's length field, or one value."""
    length = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + length]), data[8 + length :]
    names = sorted(name for name in header if name != "__metadata__")
    if edit[0] == "bytes":
        return mutate(data, edit[1])
    if edit[0] == "length":
        return edit[1].to_bytes(8, "little") + data[8:]
    if edit[0] == "values":
        start, end = header[names[edit[1] % len(names)]]["data_offsets"]
        value = struct.pack("<f", edit[2])
        body = body[:start] + value + body[start + 4 :] if end - start >= 4 else body
        return data[: 8 + length] + body
    for index, field, value in edit[1]:
        set_path(header, (names[index % len(names)], field), value)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def check_checkpoint(case: CheckpointInput, fixtures: Fixtures) -> str:
    """`vaekit.info` and `vaekit.load` of an edited checkpoint give what its files hold (weights all finite, the
    averaged ones over the model's; the original ones where nothing was edited) or raise a vaekit error; a weight file
    changed behind state.json's back is refused."""
    from vaekit.engine.runs import find_checkpoint

    original = find_checkpoint(fixtures.vae_run)
    with scratch(fixtures) as folder:
        run = folder / "run"
        checkpoint = run / "checkpoints" / original.name
        shutil.copytree(original, checkpoint)
        state = json.loads((checkpoint / "state.json").read_text())
        if case.state_edit is not None:
            (checkpoint / "state.json").write_bytes(_edited_state(state, case.state_edit, checkpoint))
        if case.tensor_edit is not None:
            target = checkpoint / case.target
            target.write_bytes(_edited_tensors(target.read_bytes(), case.tensor_edit))
            if case.careful:
                data = target.read_bytes()
                state["files"][case.target] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                (checkpoint / "state.json").write_text(json.dumps(state))
        changed = {path.name for path in original.iterdir() if path.read_bytes() != (checkpoint / path.name).read_bytes()}
        forged = set() if case.careful else changed & set(TENSOR_FILES)
        _loaded(lambda: vaekit.info(run), checkpoint, intact=not changed, forged="model.safetensors" in forged)
        return _loaded(lambda: vaekit.load(run), checkpoint, intact=not changed, forged=bool(forged))


def _loaded(entry: Callable[[], Any], checkpoint: Path, *, intact: bool, forged: bool) -> str:
    """Judge one entry point (info or load) on one edited checkpoint."""
    try:
        result = entry()
    except VaekitError as error:
        if intact:
            raise OracleViolation(f"refused an intact checkpoint: {error}") from None
        return rejected(error)
    if forged:
        raise OracleViolation("silent acceptance: a weight file other than the one state.json records")
    stored = load_file(checkpoint / "model.safetensors")
    if isinstance(result, dict):  # info
        if result["parameters"] != sum(t.numel() for t in stored.values()):
            raise OracleViolation(f"info counts {result['parameters']} parameters; the file holds others")
        return ACCEPTED
    if "ema.safetensors" in json.loads((checkpoint / "state.json").read_text())["files"]:
        stored |= load_file(checkpoint / "ema.safetensors")
    weights = result.state_dict()
    for name, tensor in stored.items():
        if tensor.is_floating_point() and bool((torch.isnan(tensor) | torch.isposinf(tensor)).any()):
            raise OracleViolation(f"silent acceptance: NaN or +inf in {name}")
        if name not in weights or not torch.equal(weights[name], tensor):
            raise OracleViolation(f"loaded weights differ from the files' in {name}")
    return ACCEPTED


# --- .vqz files ---------------------------------------------------------------------------------

VQZ_FIELDS = ["count", "channels", "height", "width", "layout", "length"]  # layout: threads - 1 + 1024 * batch
LOSSLESS_FIELDS = ["count", "channels", "height", "width", "layout", "bucket_bits", "length"]
VQZ_NUMBERS = st.one_of(st.integers(0, 20), st.sampled_from([1000, 10**5, 10**6, 10**7, 2**31, 2**40, 2**64, 2**70]))
VQZ_EDITS = st.one_of(
    st.tuples(st.just("bytes"), MUTATIONS),
    st.tuples(st.just("fields"), st.lists(st.tuples(st.sampled_from(VQZ_FIELDS), VQZ_NUMBERS), min_size=1, max_size=3)),
    st.tuples(st.just("random"), st.binary(max_size=64)),
)


@dataclass(frozen=True)
class VqzInput:
    """An edit of a valid .vqz file, lossy (VQ-VAE codes) or `lossless` (bits back); `careful`: the CRC is recomputed
    as a careful forger would who knows what the intact file decodes to."""

    edit: tuple[Any, ...]
    careful: bool
    lossless: bool = False


VQZ_INPUTS = st.builds(VqzInput, VQZ_EDITS, st.booleans())
LOSSLESS_INPUTS = st.builds(VqzInput, VQZ_EDITS, st.booleans(), st.just(True))


def vqz_fields(data: bytes) -> tuple[list[int], int] | None:
    """The .vqz format by its definition: (the header numbers, offset of the CRC), or None if the bytes do not hold a
    complete header (magic VZ or VB, version 3, fingerprint, 6 LEB128 varints (VB: 7, with the bucket bits), a CRC)."""
    if data[:3] not in (b"VZ\x03", b"VB\x03") or len(data) < 7:
        return None
    numbers, offset = [], 7
    for _ in range(len(LOSSLESS_FIELDS) if data[:2] == b"VB" else len(VQZ_FIELDS)):
        value = shift = 0
        while True:
            if offset >= len(data) or shift > 63:
                return None
            value |= (data[offset] & 0x7F) << shift
            shift, offset = shift + 7, offset + 1
            if not data[offset - 1] & 0x80:
                break
        numbers.append(value)
    return (numbers, offset) if offset + 4 <= len(data) else None


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >> 7 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _edited_vqz(data: bytes, edit: tuple[Any, ...], careful: bool, decoded: bytes) -> bytes:
    """The .vqz bytes after `edit`, their CRC recomputed over header, payload and `decoded` if `careful`."""
    if edit[0] == "random":
        return edit[1]
    if edit[0] == "bytes":
        data = mutate(data, edit[1])
    else:
        numbers, offset = vqz_fields(data)
        names = LOSSLESS_FIELDS if data[:2] == b"VB" else VQZ_FIELDS
        for field, value in edit[1]:
            numbers[names.index(field)] = value
        data = data[:7] + b"".join(_leb128(n) for n in numbers) + data[offset:]
    fields = vqz_fields(data)
    if careful and fields is not None:
        offset = fields[1]
        crc = zlib.crc32(decoded, zlib.crc32(data[offset + 4 :], zlib.crc32(data[:offset])))
        data = data[:offset] + struct.pack("<I", crc) + data[offset + 4 :]
    return data


def check_vqz(case: VqzInput, fixtures: Fixtures) -> str:
    """`vaekit.decompress` gives the original images for the original bytes, refuses any change the CRC does not
    allow, and otherwise gives the images the header declares or a CodecError; `vaekit.info` describes the header."""
    intact, originals, decoded, run = (
        (fixtures.lossless, fixtures.lossless_images, fixtures.lossless_images.tobytes(), fixtures.vae_run)
        if case.lossless else (fixtures.vqz, fixtures.vqz_images, fixtures.vqz_codes, fixtures.prior_run))
    data = _edited_vqz(intact, case.edit, case.careful, decoded)
    with scratch(fixtures) as folder:
        path = folder / "images.vqz"
        path.write_bytes(data)
        _check_vqz_info(path, data, intact)
        try:
            written = vaekit.decompress(path, run, folder / "out")
        except CodecError as error:
            if data == intact:
                raise OracleViolation(f"refused the intact file: {error}") from None
            return rejected(error)
        images = [_png_pixels(file) for file in written]
    if data == intact:
        if not np.array_equal(np.stack(images), originals):
            raise OracleViolation("the intact file decoded to other images")
        return ACCEPTED
    if not case.careful:
        raise OracleViolation("silent acceptance: a changed file passed its CRC checks")
    numbers, _ = vqz_fields(data)
    if len(images) != numbers[0] or any(image.shape != (numbers[2], numbers[3]) for image in images):
        raise OracleViolation(f"{len(images)} images of {images[0].shape}; the header declares {numbers[:4]}")
    return ACCEPTED


def _check_vqz_info(path: Path, data: bytes, intact: bytes) -> None:
    """`vaekit.info` of a .vqz file gives its header's numbers and CRC and whether the payload's length holds, or refuses
    what has no header."""
    fields = vqz_fields(data)
    try:
        summary = vaekit.info(path)
    except CodecError as error:
        if fields is not None:
            raise OracleViolation(f"info refused a file with a complete header: {error}") from None
        rejected(error)
        return
    if fields is None:
        raise OracleViolation("info described a file without a complete header")
    numbers, offset = fields
    checksum = struct.unpack("<I", data[offset : offset + 4])[0]
    holds = len(data) - offset - 4 == numbers[-1]
    count, layout = numbers[0], numbers[4]
    declared = [summary["count"], *summary["image_shape"], summary["batch"], summary["threads"],
                *([summary["bucket_bits"]] if data[:2] == b"VB" else []), summary["payload_bytes"], summary["crc32"]]
    expected = [*numbers[:4], layout // 1024 or count, layout % 1024 + 1, *numbers[5:], f"{checksum:08x}"]
    if declared != expected or summary["checksum"].startswith("length ok") != holds or (data == intact and not holds):
        raise OracleViolation(f"info says {summary}; the header holds {numbers}, length {'ok' if holds else 'wrong'}")


def _png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


BOUNDARIES: dict[str, Boundary] = {
    "config": Boundary(CONFIG_INPUTS, check_config),
    "idx": Boundary(IDX_INPUTS, check_idx),
    "arrays": Boundary(ARRAY_INPUTS, check_arrays),
    "png": Boundary(PNG_INPUTS, check_pngs),
    "points": Boundary(POINT_INPUTS, check_points),
    "checkpoint": Boundary(CHECKPOINT_INPUTS, check_checkpoint),
    "vqz": Boundary(VQZ_INPUTS, check_vqz),
    "vqz-lossless": Boundary(LOSSLESS_INPUTS, check_vqz),
}
