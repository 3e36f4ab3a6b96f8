"""Run configuration: frozen pydantic models (extra="forbid") loaded from YAML, with `key=value` overrides.

The config is the single source of truth for a run: the model is built from it alone, and the
resolved config is saved beside every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from vaekit.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
Sizes = tuple[PositiveInt, ...]  # layer widths, channels, shapes: every entry at least 1
Probability = Annotated[float, Field(ge=0, lt=1)]
SEED_LIMIT = 2**63  # torch seeds are 64-bit
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
PositiveFloat = Annotated[float, Field(gt=0)]
ImageShape = tuple[PositiveInt, PositiveInt, PositiveInt]  # (C, H, W)


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class DataConfig(Section):
    """Which images to train and evaluate on, and how they are split and binarised."""

    name: Literal["digits", "fashion_mnist", "images"] = "digits"  # digits = sklearn 8x8 (embedded)
    path: str | None = None  # fashion_mnist: IDX folder; images: PNG folder, .npy/.npz file or `vaekit convert` folder
    test_fraction: float = Field(0.2, gt=0, lt=1)  # digits/images: share held out as the test split
    split_seed: Seed = 0  # fixes the train/test split of digits/images
    binarize: Literal["none", "dynamic", "static"] = "none"  # for a Bernoulli likelihood
    test_binarize_seed: Seed = 1  # the one fixed binarisation of the test split used for evaluation
    max_train: int | None = Field(None, ge=1)  # keep only the first N training images (quick runs)
    max_test: int | None = Field(None, ge=1)  # keep only the first N test images
    lazy: bool = False  # images: keep the training split on disk as uint8, read per batch (data larger than memory)
    validation: int = Field(0, ge=0)  # >0: the last N training images replace the test split (choosing settings)

    @model_validator(mode="after")
    def _lazy_reads_image_files(self) -> DataConfig:
        """data.lazy needs files it can read per image, and no binarisation of the whole split at once."""
        if self.lazy and self.name != "images":
            raise ValueError(f"data.lazy reads data.name=images from disk, not {self.name}; convert IDX files with "
                             "`vaekit convert SOURCE OUT` and set data.name=images data.path=OUT")
        if self.lazy and self.binarize == "static":
            raise ValueError("data.binarize=static binarises the whole training split once in memory; with data.lazy "
                             "use data.binarize=dynamic")
        if self.lazy and self.validation:
            raise ValueError("data.validation splits the training split in memory; with data.lazy convert a "
                             "validation split of its own and name it as the test split")
        return self


class PointCloudDataConfig(Section):
    """Which point clouds to train and evaluate on: the built-in procedural shapes or a user's folder."""

    name: Literal["procedural", "point_folder"] = "procedural"
    path: str | None = None  # point_folder: folder with one subfolder of shape files per category
    num_points: int = Field(2048, ge=16)  # points per cloud
    normalization: Literal["unit_sphere", "unit_box", "none"] = "unit_sphere"  # per cloud, recorded
    shapes_per_category: int = Field(100, ge=2)  # procedural: shapes generated per category
    categories: tuple[str, ...] = Field(("airplane", "chair", "lamp", "mug", "table"), min_length=1)  # procedural
    test_fraction: float = Field(0.2, gt=0, lt=1)  # share of each category held out as the test split
    split_seed: Seed = 0  # fixes the shapes (procedural) and the split
    cache_dir: str | None = None  # procedural cache; None = $VAEKIT_CACHE or ~/.cache/vaekit


class ModelConfig(Section):
    """Base of every registered model's config; `name` picks the model in the registry."""

    name: str


_MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}  # filled by vaekit.models.registry.register_model


def register_model_config(name: str, config_class: type[ModelConfig]) -> None:
    """Make `model: {name: ...}` validate with `config_class` (called by `register_model`)."""
    if name in _MODEL_CONFIGS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_CONFIGS[name] = config_class


def unregister_model_config(name: str) -> None:
    del _MODEL_CONFIGS[name]


def model_config_class(name: str) -> type[ModelConfig]:
    """The config class registered under a model name."""
    if name not in _MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODEL_CONFIGS))}")
    return _MODEL_CONFIGS[name]


class CodeSpec(Section):
    """What a parent run's codes are, so a child run over them is rebuilt from its config alone."""

    shape: Sizes  # per example: (k,) flat codes, or e.g. (H, W) a grid of code indices
    dtype: Literal["float32", "int64"]  # continuous codes, or discrete symbols
    num_symbols: int | None = Field(None, ge=2)  # discrete codes: symbols 0..num_symbols-1; None if continuous

    @model_validator(mode="after")
    def _symbols_iff_discrete(self) -> CodeSpec:
        if (self.dtype == "int64") != (self.num_symbols is not None):
            raise ValueError("num_symbols is given for discrete (int64) codes and only for them")
        return self


class TwoStageConfig(ModelConfig):
    """Base config of a model over a parent run's codes (latent GMM/GAN, a prior over VQ codes)."""

    codes: CodeSpec | None = None  # the parent's codes; filled from the parent run at training time


class TrainConfig(Section):
    """The optimisation: one loop for every model."""

    steps: int = Field(3000, ge=1)  # optimiser steps (of every parameter group) in total
    batch_size: int = Field(128, ge=1)  # global batch, split evenly across processes
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)  # peak learning rate of every group unless overridden
    group_lr: dict[str, Annotated[float, Field(ge=0)]] = {}  # per-group learning rates (0 freezes a group)
    betas: tuple[Probability, Probability] = (0.9, 0.999)  # Adam betas, each in [0, 1)
    weight_decay: float = Field(0.0, ge=0)  # AdamW decoupled weight decay (Adam: L2)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # decay after warm-up
    lr_warmup_steps: int = Field(0, ge=0)  # linear learning-rate warm-up
    grad_clip: float | None = Field(None, gt=0)  # max global gradient norm per group; None = off
    skip_grad_norm: float | None = Field(None, gt=0)  # skip an update whose gradient norm is above this or non-finite
    ema_decay: float | None = Field(None, gt=0, lt=1)  # keep an EMA of weights (used for eval/sampling); None = off
    # autocast dtype, math stays fp32; auto: bf16 where the device has it in hardware, else fp32 (engine/precision.py)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")  # auto = cuda if available, else cpu
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)  # initialisation, data order and every per-step draw
    log_every: int = Field(50, ge=1)  # metrics.jsonl / TensorBoard / NaN check period
    eval_every: int = Field(1000, ge=1)  # test-split evaluation and image grids period
    checkpoint_every: int = Field(1000, ge=1)  # checkpoint period (also at the end)
    keep_checkpoints: int = Field(2, ge=1)  # most recent checkpoints kept on disk
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads; None = torch's default


class EvalConfig(Section):
    """How the test split is scored."""

    num_importance_samples: int = Field(1000, ge=1)  # K of the importance-sampled log p(x)
    extra_importance_samples: tuple[Annotated[int, Field(ge=1)], ...] = ()  # also nll_kK at these K (convergence)
    num_images: int | None = Field(1000, ge=1)  # first N test images scored; None = all
    samples_per_chunk: int = Field(100, ge=1)  # importance samples decoded at once (memory)
    images_per_chunk: int = Field(100, ge=1)  # test images per chunk
    active_unit_threshold: float = 0.01  # Burda et al. 2016: Cov_x(E_q[z_j]) > threshold
    seed: int = Field(1234, ge=0, lt=SEED_LIMIT)  # importance-sampling draws
    num_grid_images: int = Field(64, ge=1)  # samples / reconstructions per PNG grid
    sample_temperatures: tuple[Annotated[float, Field(gt=0)], ...] = Field((1.0,), min_length=1)  # a grid each
    sample_quality_samples: int = Field(0, ge=0)  # Fashion-MNIST: FD/KID of this many samples (10000); 0 = off
    point_cloud_emd: bool = False  # point clouds: also the exact EMD of each reconstruction (~0.3 s per 2048-point pair)


class RunConfig(Section):
    """A whole run: data, model, training and evaluation."""

    name: str = "run"  # run directory <out_dir>/<name>: one plain path component
    out_dir: str = "runs"  # parent folder of run directories
    parent: str | None = None  # run directory whose frozen model this run builds on
    parent_sha256: str | None = None  # SHA-256 of the parent's weights this run was trained on (filled in)
    data: Annotated[DataConfig | PointCloudDataConfig, Field(discriminator="name")] = DataConfig()
    model: SerializeAsAny[ModelConfig]
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @field_validator("name")
    @classmethod
    def _plain_run_name(cls, name: str) -> str:
        """A run name is one plain path component, so the run directory lies inside `out_dir`."""
        if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
            raise ValueError(f"run name {name!r} must be one plain folder name (not empty, not '.' or '..', "
                             "no '/' or '\\'), e.g. name=my-run")
        return name

    @field_validator("model", mode="before")
    @classmethod
    def _dispatch_model(cls, value: Any) -> ModelConfig:
        """Validate `model` with the config class registered under its `name`."""
        if isinstance(value, ModelConfig):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise ValueError("model must be a mapping with a `name` string (see `vaekit models`)")  # noqa: TRY004 (pydantic reports ValueError)
        return model_config_class(value["name"]).model_validate(value)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """RunConfig from a YAML file or preset name (default: the digits VAE) plus `key=value` overrides."""
    raw = _read_yaml(path if path is not None else DEFAULT_PRESET)
    for override in overrides:
        _apply_override(raw, override)
    return validate_config(raw, source=str(path or DEFAULT_PRESET))


def validate_config(raw: dict[str, Any], *, source: str = "config") -> RunConfig:
    """RunConfig from a plain mapping; every error names the key, the valid keys and the source.

    The model families register their configs when the vaekit package is imported.
    """
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_explain(error, raw, source)) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


PRESET_DIR = Path(__file__).parent / "presets"
_DATA_NAMES = ("digits", "fashion_mnist", "images", "procedural", "point_folder")
DEFAULT_PRESET = "digits-vae"


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses anchors' aliases: a config has no use for them, and nested aliases
    ("billion laughs") expand to exponentially large documents when anything walks them."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*name) are not allowed in a vaekit config{self.peek_event().start_mark}")
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    """YAML without Python objects (safe), without aliases, and nested less deep than PyYAML's recursion reaches."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: no Python objects
    except RecursionError:  # PyYAML composes nested lists and mappings recursively
        raise yaml.YAMLError("lists or mappings nested too deep") from None


def _read_yaml(path_or_preset: str | Path) -> dict[str, Any]:
    path = Path(path_or_preset)
    if not path.exists() and (PRESET_DIR / f"{path_or_preset}.yaml").exists():
        path = PRESET_DIR / f"{path_or_preset}.yaml"
    if not path.exists():
        raise ConfigError(
            f"config {str(path_or_preset)!r} is neither a file nor a preset; presets: {', '.join(preset_names())}"
        )
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it as a UTF-8 text file ({error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to the nested mapping `raw`."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. train.steps=500)")
    try:
        value = _load_yaml(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _explain(error: ValidationError, raw: dict[str, Any], source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for item in error.errors():
        loc = [str(p) for p in item["loc"] if not str(p).startswith("function-")]
        if len(loc) > 1 and loc[0] == "data" and loc[1] in _DATA_NAMES:
            del loc[1]  # the tag pydantic adds for the data union
        location = ".".join(loc)
        if item["type"] == "extra_forbidden":  # the section from loc: a key may itself hold a dot ("0.")
            section = ".".join(loc[:-1])
            lines.append(f"  unknown key {location!r}; valid keys of {section or 'the top level'}: "
                         f"{', '.join(_valid_keys(loc[:-1], raw))}")
        else:
            lines.append(f"  {location}: {item['msg']}")
    return "\n".join(lines)


def _valid_keys(section: list[str], raw: dict[str, Any]) -> list[str]:
    """The keys of the config section at `section` (its path of field names from the top level)."""
    model_class: type[BaseModel] = RunConfig
    for part in section:
        if part == "data" and model_class is RunConfig:
            name = raw.get("data", {}).get("name", "digits") if isinstance(raw.get("data"), dict) else "digits"
            model_class = PointCloudDataConfig if name in _DATA_NAMES[3:] else DataConfig
            continue
        if part == "model" and model_class is RunConfig:
            name = raw.get("model", {}).get("name", "") if isinstance(raw.get("model"), dict) else ""
            model_class = _MODEL_CONFIGS.get(name, ModelConfig)
            continue
        annotation = model_class.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model_class = annotation
    return sorted(model_class.model_fields)
