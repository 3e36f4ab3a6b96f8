"""The training loop every model runs through: optimisers per parameter group, LR schedule, gradient
clipping, EMA, mixed precision, DDP, periodic evaluation, image grids, metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from vaekit.batch import Batch, step_generator
from vaekit.config import RunConfig, TrainConfig, config_to_dict
from vaekit.data import (
    ArrayRows,
    ImageData,
    LazyImages,
    PointCloudData,
    binarize,
    check_support,
    load_data,
    open_npy,
    write_npy,
)
from vaekit.engine.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    last_finite_checkpoint,
    list_checkpoints,
    listed,
    load_model_weights,
    load_optimizers,
    load_tensor_file,
    nan_or_inf_tensors,
    read_state,
    save_checkpoint,
    tensor_specs,
)
from vaekit.engine.distributed import ONE_PROCESS, DistContext, Shard, init_distributed
from vaekit.engine.precision import Precision, autocast, resolve_precision
from vaekit.engine.rundir import (
    METRICS_FILE,
    MetricsLog,
    check_run_dir,
    collect_versions,
    prepare_run_dir,
    run_dir_of,
    write_run_files,
)
from vaekit.engine.runs import build_run_model, resolve_parent_run
from vaekit.errors import CheckpointError, ConfigError, RunDirError, TrainingDivergedError
from vaekit.evaluation import evaluate, write_pictures
from vaekit.models import GenerativeModel, Losses

CODES_FILE = Path("codes") / "train.npy"  # a two-stage run's codes of its training split, in its run directory
CODE_CHUNK = 4096  # training rows encoded at once: a multiple of parent_codes' 256, so the codes equal one pass's


def train(
    config: RunConfig, *, resume: bool = False, force: bool = False, quiet: bool = False
) -> Path:
    """Train `config` to `config.train.steps` and return its run directory.

    Under torchrun (WORLD_SIZE > 1) every process calls this; rank 0 writes.
    """
    config = resolve_parent_run(config)
    ctx = init_distributed(config.train.device)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    data = load_data(config.data)
    config = resolve_config(config, data)
    _check_data(config, data)
    trainer = Trainer(config, data, ctx, quiet=quiet)
    run_dir = trainer.open_run_dir(resume=resume, force=force)
    trainer.run()
    return run_dir


def resolve_config(config: RunConfig, data: ImageData | PointCloudData) -> RunConfig:
    """Fill what the data decides (image shape, points per cloud) and check what must agree with it."""
    model = config.model
    if isinstance(data, ImageData):
        key, value, other, kind = "image_shape", data.image_shape, "num_points", "images"
    else:
        key, value, other, kind = "num_points", data.train.shape[1], "image_shape", "point clouds"
    fields = type(model).model_fields
    if key not in fields and other in fields:
        raise ConfigError(f"model {model.name!r} does not work on {kind} ({data.source}); choose matching data")
    if key in fields:
        given = getattr(model, key)
        if given is None:
            model = model.model_copy(update={key: value})
        elif (tuple(given) if isinstance(given, (list, tuple)) else given) != value:
            raise ConfigError(f"model.{key} is {given} but the data ({data.source}) has {value}; "
                              f"remove model.{key} or choose matching data")
    return config.model_copy(update={"model": model})


def _check_data(config: RunConfig, data: ImageData | PointCloudData) -> None:
    """Training and test pixels must lie in the likelihood's support (fail before any step)."""
    likelihood = getattr(config.model, "likelihood", None)
    if likelihood is None or not isinstance(data, ImageData):
        return
    num_bins = getattr(config.model, "num_bins", 256)
    check_support(data.test, likelihood=likelihood, num_bins=num_bins, source=f"{data.source} (test split)")
    train_likelihood = "gaussian" if _binarize(config) == "dynamic" else likelihood
    check_support(data.train, likelihood=train_likelihood, num_bins=num_bins, source=f"{data.source} (train split)")


@dataclass
class DataOrder:
    """Which training rows each step uses: DistributedSampler's seeded per-epoch permutation (shuffle, drop_last).

    Process `rank` of `world_size` holds rows rank::world_size of the global batch, so the union of
    the processes' batches equals the single-process batch of the same global size. The permutation is
    kept as one int64 tensor (DistributedSampler's own iterator makes a Python list of N ints per epoch).
    """

    num_examples: int
    global_batch: int
    rank: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ConfigError(
                f"train.batch_size={self.global_batch} must be divisible by the {self.world_size} processes"
            )
        if self.global_batch > self.num_examples:
            raise ConfigError(f"train.batch_size={self.global_batch} exceeds the {self.num_examples} training examples")
        self.local_batch = self.global_batch // self.world_size
        self.steps_per_epoch = self.num_examples // self.global_batch
        self._epoch = -1
        self._indices: Tensor | None = None

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._indices = self.epoch_rows(epoch)
            self._epoch = epoch
        assert self._indices is not None
        return self._indices[position * self.local_batch : (position + 1) * self.local_batch]

    def epoch_rows(self, epoch: int) -> Tensor:
        """This process's rows of `epoch` in order: DistributedSampler(shuffle=True, drop_last=True, seed)'s."""
        order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + epoch))
        return order[: self.num_examples // self.world_size * self.world_size][self.rank :: self.world_size]


def lr_factor(step: int, train: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then constant, cosine or linear decay to 0."""
    if step < train.lr_warmup_steps:
        return (step + 1) / train.lr_warmup_steps
    if train.lr_schedule == "constant":
        return 1.0
    progress = (step - train.lr_warmup_steps) / max(1, train.steps - train.lr_warmup_steps)
    if train.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if train.lr_schedule == "linear":
        return 1.0 - progress
    raise NotImplementedError(train.lr_schedule)


def make_optimizers(model: GenerativeModel, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    """One Adam/AdamW per parameter group, in the model's update order."""
    groups = model.parameter_groups()
    unknown = set(train.group_lr) - set(groups)
    if unknown:
        raise ConfigError(f"train.group_lr names unknown groups {sorted(unknown)}; groups: {sorted(groups)}")
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[train.optimizer]
    return {
        name: _fused_or_foreach(optimizer_class, params, lr=train.group_lr.get(name, train.lr), betas=train.betas,
                                weight_decay=train.weight_decay)
        for name, params in groups.items()
    }


def _fused_or_foreach(optimizer_class: type[torch.optim.Optimizer], params: list[nn.Parameter],
                      **options: Any) -> torch.optim.Optimizer:
    """The fused (one kernel per step) implementation where this torch and device have it (CPU: torch
    >= 2.4; ~10x faster than foreach there), else the foreach one."""
    try:
        return optimizer_class(params, fused=True, **options)
    except RuntimeError:
        return optimizer_class(params, foreach=True, **options)


class WeightEMA:
    """Exponential moving average of a model's parameters and of the buffers it opts into.

    Buffers that are themselves running statistics (an EMA codebook, batch-norm statistics) are
    not averaged again unless the model names them in `averaged_buffers()`; the live ones are used.
    """

    def __init__(self, model: GenerativeModel, decay: float) -> None:
        self.decay = decay
        names = [name for name, _ in model.named_parameters()] + list(model.averaged_buffers())
        state = model.state_dict()
        self.shadow = {k: state[k].detach().clone() for k in names if state[k].is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [current[k] for k in names], 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into `model`."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(saved, strict=False)


class Trainer:
    """Runs one RunConfig; holds the model, optimisers and the run directory."""

    def __init__(self, config: RunConfig, data: ImageData | PointCloudData, ctx: DistContext, *, quiet: bool) -> None:
        self.config, self.data, self.ctx, self.quiet = config, data, ctx, quiet
        self.train_cfg = config.train
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            torch.manual_seed(self.train_cfg.seed)  # initialisation; the caller's global RNG is left as it was
            self.model = build_run_model(config, device=ctx.device)
        self.optimizers = make_optimizers(self.model, self.train_cfg)
        self.ema = WeightEMA(self.model, self.train_cfg.ema_decay) if self.train_cfg.ema_decay else None
        self.precision = _agreed_precision(self.train_cfg.precision, ctx)  # `auto` decided for these devices
        self.autocast = autocast(self.precision, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.skipped_steps = 0  # steps whose update was skipped (train.skip_grad_norm), across resumes
        self.train_seconds = 0.0  # wall time spent in training steps (not evaluation or saving), across resumes
        self.run_dir: Path | None = None
        # the training rows: in memory on the device, or on disk (lazy images; a two-stage model's codes, see run)
        self.train_x: Tensor | LazyImages | ArrayRows = (
            data.train if isinstance(data.train, LazyImages) else data.train.to(ctx.device))
        self.dynamic_binarization = _binarize(config) == "dynamic"
        self.order = DataOrder(
            num_examples=len(self.train_x), global_batch=self.train_cfg.batch_size,
            rank=ctx.rank, world_size=ctx.world_size, seed=self.train_cfg.seed,
        ) if self.optimizers else None  # models fitted without gradients take the whole split at once

    def open_run_dir(self, *, resume: bool, force: bool) -> Path:
        path = run_dir_of(self.config)
        replace = check_run_dir(self.config, resume=resume, force=force)  # every process, before any write
        self.ctx.barrier()
        if self.ctx.is_main:
            prepare_run_dir(self.config, replace=replace)
            write_run_files(path, self.config, collect_versions(self.train_cfg.seed, self.precision))
        self.ctx.barrier()
        self.run_dir = path
        if resume:
            checkpoints = list_checkpoints(path / "checkpoints")
            if checkpoints:
                self.restore(checkpoints[-1])
        if self.ctx.is_main:
            self.metrics = MetricsLog(path / METRICS_FILE, resume_step=self.step if resume else None)
        return path

    def restore(self, checkpoint: Path) -> None:
        """Load model, optimisers, EMA, grad scaler and step; the data order and draws follow from step."""
        state = read_state(checkpoint)
        if state["model_name"] != self.config.model.name:
            raise CheckpointError(f"{checkpoint}: holds model {state['model_name']!r}, not {self.config.model.name!r}")
        saved_model_cfg = state["config"].get("model")
        current = config_to_dict(self.config)["model"]
        if saved_model_cfg != current:
            keys = sorted(k for k in set(saved_model_cfg) | set(current) if saved_model_cfg.get(k) != current.get(k))
            raise CheckpointError(f"{checkpoint}: model config differs from this run's in {keys}")
        if state["config"].get("parent_sha256") != self.config.parent_sha256:
            raise CheckpointError(f"{checkpoint}: the parent run changed since this run was trained "
                                  "(its checkpoint's SHA-256 differs); train this run again with --force")
        weights = load_tensor_file(checkpoint, MODEL_FILE, state, expected=tensor_specs(self.model.state_dict()))
        load_model_weights(self.model, weights, checkpoint)
        load_optimizers(checkpoint, state, self.optimizers)
        if self.ema is not None:
            averaged = load_tensor_file(checkpoint, EMA_FILE, state, expected=tensor_specs(self.ema.shadow))
            self.ema.shadow = {k: v.to(self.ctx.device) for k, v in averaged.items()}
        if state["extra"].get("grad_scaler"):
            self.scaler.load_state_dict(state["extra"]["grad_scaler"])
        self.step = int(state["step"])
        self.train_seconds = float(state["extra"].get("train_seconds", 0.0))
        self.skipped_steps = int(state["extra"].get("skipped_steps", 0))

    def run(self) -> None:
        if not self.optimizers:
            self._fit()
            return
        if self.model.requires_parent and not self.dynamic_binarization:
            self.train_x = self._training_codes()  # once per start; after a dynamic binarisation, per batch
        cfg = self.train_cfg
        model: nn.Module = self.model
        if self.ctx.distributed:
            # buffers are not broadcast from rank 0: every process updates them identically (global-batch
            # statistics, the post-step hook), and the 2-process test would see any drift
            model = DistributedDataParallel(
                self.model, find_unused_parameters=len(self.optimizers) > 1, broadcast_buffers=False,
            )
        progress = tqdm(total=cfg.steps, initial=self.step, disable=self.quiet or not self.ctx.is_main,
                        desc=self.config.name, dynamic_ncols=True)
        sums: dict[str, tuple[Tensor, int]] = {}  # term -> (running sum of batch means, count)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.ctx.device)
        while self.step < cfg.steps:
            step = self.step
            started = time.perf_counter()
            self.model.train()
            batch = self._batch(step)
            skipped = False
            for group in self.model.updates(step):
                losses, applied, grad_norm = self._update(model, group, batch, step)
                skipped |= not applied
                prefix = "" if len(self.optimizers) == 1 else f"{group}/"
                if grad_norm is not None:  # skipped updates too (it sets skip_grad_norm); no sync: a non-finite
                    finite = torch.isfinite(grad_norm)  # norm counts as neither value nor step
                    total, count = sums.get(prefix + "grad_norm", (0.0, 0))
                    sums[prefix + "grad_norm"] = (total + torch.where(finite, grad_norm.detach().float(), 0.0),
                                                  count + finite.float())
                if not applied:  # its loss may be non-finite (that is why it was skipped): not logged
                    continue
                nonfinite |= ~torch.isfinite(losses.total.detach())
                for name, value in {**losses.terms, "loss": losses.total}.items():
                    key = prefix + name
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + value.detach().float().mean(), count + 1)
            if skipped:
                self.skipped_steps += 1
            else:
                with torch.no_grad():
                    self.model.update_buffers(batch, step)  # once per step, after every optimiser step
                if self.ema is not None:
                    self.ema.update(self.model)
            self.step = step + 1
            self.train_seconds += time.perf_counter() - started
            progress.update(1)
            last = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or last:
                self._check_finite(nonfinite, step)
                means = self._reduce({k: total / count for k, (total, count) in sums.items()})
                progress.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
                self._log("train", means | {"lr": cfg.lr * lr_factor(step, cfg), "train_seconds": self.train_seconds,
                                            "skipped_steps": self.skipped_steps})
                sums = {}
            if self.step % cfg.eval_every == 0 or last:
                self._check_finite(nonfinite, step)
                self._evaluate(self.ctx.shard)
            if self.step % cfg.checkpoint_every == 0 or last:
                self._check_finite(nonfinite, step)
                self._save()
        progress.close()
        self.ctx.barrier()

    def _update(self, model: nn.Module, group: str, batch: Batch, step: int) -> tuple[Losses, bool, Tensor | None]:
        """One update of `group`: loss, backward, clipping, optimiser step. Returns (losses, applied, the gradient
        norm before clipping, or None without train.grad_clip and train.skip_grad_norm).

        With train.skip_grad_norm, an update whose gradient norm is non-finite or above it is not
        applied (Child 2021, VDVAE); the norm is of DDP's averaged gradients, so every process agrees.
        """
        cfg = self.train_cfg
        optimizer = self.optimizers[group]
        for param_group in optimizer.param_groups:
            param_group["lr"] = cfg.group_lr.get(group, cfg.lr) * lr_factor(step, cfg)
        for other in self.optimizers.values():
            other.zero_grad(set_to_none=True)
        with self.autocast:
            losses = model(batch, group=group, step=step)
        self.scaler.scale(losses.total).backward()
        applied, norm = True, None
        if cfg.grad_clip is not None or cfg.skip_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip is not None else math.inf)
            if cfg.skip_grad_norm is not None:
                applied = bool(torch.isfinite(norm) & (norm <= cfg.skip_grad_norm))  # one sync per update
        if applied:
            self.scaler.step(optimizer)
        self.scaler.update()
        return losses, applied, norm

    def _fit(self) -> None:
        """A model with no parameter groups is fitted once on the whole training split (step 1)."""
        if self.step > 0:
            return
        self.step = 1
        if self.ctx.is_main:  # one fit; the other processes only meet rank 0 at the barriers
            x = self.train_x.load().to(self.ctx.device) if isinstance(self.train_x, LazyImages) else self.train_x
            if _binarize(self.config) == "dynamic":
                x = binarize(x, step_generator(self.train_cfg.seed, 0, self.ctx.device))
            self._log("train", self.model.fit(x))
            self._evaluate(ONE_PROCESS)  # only this process holds the fitted model: it scores every example
        self._save()

    def _training_codes(self) -> ArrayRows:
        """A two-stage model's codes of the training split: written by rank 0 into RUN_DIR/codes/train.npy
        (atomically, CODE_CHUNK rows at a time) and memory-mapped by every process."""
        path = self.run_dir / CODES_FILE
        if self.ctx.is_main:
            count = len(self.train_x)
            chunks = (self.model.training_inputs(self._rows(torch.arange(start, min(start + CODE_CHUNK, count))))
                      .cpu().numpy() for start in range(0, count, CODE_CHUNK))
            write_npy(path, chunks, count)
        self.ctx.barrier()
        if not path.is_file():
            raise RunDirError(f"{path}: rank 0 wrote this run's training codes there, but process {self.ctx.rank} "
                              "does not see the file; put out_dir on storage every machine reads")
        return ArrayRows(open_npy(path))

    def _rows(self, indices: Tensor) -> Tensor:
        """Training rows `indices` on this process's device: indexed in memory, or read from disk."""
        if isinstance(self.train_x, Tensor):
            return self.train_x[indices.to(self.ctx.device)]
        return self.train_x[indices].to(self.ctx.device)

    def _batch(self, step: int) -> Batch:
        """This process's rows of the global batch of `step`, binarised afresh if the data asks."""
        x = self._rows(self.order.indices(step))
        generator = step_generator(self.train_cfg.seed, step, self.ctx.device)
        batch = Batch(x=x, generator=generator, rank=self.ctx.rank, world_size=self.ctx.world_size)
        if self.dynamic_binarization:
            x = (batch.rand(*x.shape) < x).to(x.dtype)  # Bernoulli(x), one draw per pixel per step
            x = self.model.training_inputs(x)
            batch = Batch(x=x, generator=generator, rank=self.ctx.rank, world_size=self.ctx.world_size)
        return batch

    def _check_finite(self, nonfinite: Tensor, step: int) -> None:
        if bool(nonfinite):
            raise TrainingDivergedError(
                f"the loss became NaN or infinite at or before step {step + 1}; training stopped and "
                f"{self._last_good_checkpoint()}. Try a lower train.lr, train.grad_clip, or train.precision=fp32"
            )

    def _check_finite_weights(self) -> None:
        """Weights (and their average) must hold no NaN or +inf before they are saved, even when the loss is finite."""
        bad = nan_or_inf_tensors(self.model.state_dict())
        bad += [f"{name} (weight average)" for name in nan_or_inf_tensors(self.ema.shadow if self.ema else {})]
        if bad:
            raise TrainingDivergedError(
                f"the weights became NaN or infinite ({listed(bad)}) at or before step {self.step}; training stopped and "
                f"{self._last_good_checkpoint()}. Try a lower train.lr, train.grad_clip, or train.precision=fp32"
            )

    def _last_good_checkpoint(self) -> str:
        """Where to resume from: the newest checkpoint whose weights are finite (the loss alone does not say)."""
        directory = self.run_dir / "checkpoints" if self.run_dir else None
        if directory is None or not list_checkpoints(directory):
            return "no checkpoint was written yet"
        good = last_finite_checkpoint(directory)
        return f"the last checkpoint with finite weights is {good}" if good else "no checkpoint holds finite weights"

    def _reduce(self, values: dict[str, Tensor]) -> dict[str, float]:
        """Mean of each logged value over processes (only at logging time)."""
        if not values:
            return {}
        names = sorted(values)
        stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float32, device=self.ctx.device) for k in names])
        if self.ctx.distributed:
            torch.distributed.all_reduce(stacked)
            stacked /= self.ctx.world_size
        return dict(zip(names, stacked.tolist()))

    def _log(self, split: str, values: dict[str, float]) -> None:
        if not self.ctx.is_main:
            return
        self.metrics.write({"step": self.step, "split": split, **values})
        writer = self._writer()
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"{split}/{name}", value, self.step)
        writer.flush()

    def _writer(self):
        if not hasattr(self, "_tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._tensorboard

    def _evaluate(self, shard: Shard) -> None:
        """Test scores, each process of `shard` computing its share (all of them call this); rank 0 draws and logs."""
        with self._eval_weights():
            results = evaluate(self.model, self.data, self.config.eval, progress=not self.quiet and self.ctx.is_main,
                               shard=shard)
            if self.ctx.is_main:
                write_pictures(self.model, self.data, self.run_dir, self.step, self.config.eval)
        if not self.ctx.is_main:
            return
        scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        if not self.quiet:
            tqdm.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        self._log("test", results | {"train_seconds": self.train_seconds})

    @contextlib.contextmanager
    def _eval_weights(self) -> Iterator[None]:
        self.model.eval()
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            yield

    def _save(self) -> None:
        self._check_finite_weights()
        if self.ctx.is_main:
            extra: dict[str, Any] = {"world_size": self.ctx.world_size, "train_seconds": self.train_seconds,
                                     "skipped_steps": self.skipped_steps}
            if self.scaler.is_enabled():
                extra["grad_scaler"] = self.scaler.state_dict()
            save_checkpoint(
                self.run_dir / "checkpoints", step=self.step, model=self.model, model_name=self.config.model.name,
                config=config_to_dict(self.config), optimizers=self.optimizers,
                ema=self.ema.shadow if self.ema else None, extra=extra, keep=self.train_cfg.keep_checkpoints,
            )
        self.ctx.barrier()


def _agreed_precision(requested: str, ctx: DistContext) -> Precision:
    """train.precision resolved for this process's device; `auto` on several processes is bf16 only where every
    process computes bf16 in hardware, so that all train in one precision."""
    precision = resolve_precision(requested, ctx.device)
    if requested != "auto" or not ctx.distributed:
        return precision
    any_fp32 = ctx.shard.maximum(torch.tensor([float(precision == "fp32")]))
    return "fp32" if any_fp32.item() else precision


def _binarize(config: RunConfig) -> str:
    """The data's binarisation mode ("none" for data that has none, such as point clouds)."""
    return getattr(config.data, "binarize", "none")

