"""The training engine: run directories, checkpoints, deterministic resume, NaN handling, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import vaekit
from vaekit.config import TrainConfig
from vaekit.engine.checkpoint import list_checkpoints
from vaekit.engine.train import lr_factor
from vaekit.errors import CheckpointError, ConfigError, RunDirError, TrainingDivergedError
from vaekit.models.vae import VAE


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run_dir / "checkpoints")[-1] / "model.safetensors")


def test_run_directory_holds_config_versions_metrics_grids_and_checkpoints(tmp_path):
    run_dir = vaekit.train(tiny_config(tmp_path), quiet=True)
    for name in ["config.yaml", "versions.json", "metrics.jsonl", "samples/step-30.png",
                 "reconstructions/step-30.png", "traversals/step-30.png", "interpolations/step-30.png",
                 "checkpoints/step-30/model.safetensors", "checkpoints/step-30/optimizer.safetensors",
                 "checkpoints/step-30/state.json"]:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-20", "step-30"]  # keep=2
    versions = json.loads((run_dir / "versions.json").read_text())
    assert versions["torch"] == torch.__version__ and versions["seed"] == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "reconstruction", "kl", "elbo", "lr"} <= set(train_records[0])
    test_record = next(r for r in records if r["split"] == "test")
    assert test_record["nll"] > 0 and test_record["elbo"] <= -test_record["nll"] + 1e-6
    assert len(test_record["kl_per_dim"]) == 4


def test_existing_run_directory_is_never_overwritten(tmp_path):
    config = tiny_config(tmp_path, "train.steps=5", "train.checkpoint_every=5")
    run_dir = vaekit.train(config, quiet=True)
    before = (run_dir / "checkpoints/step-5/model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="--resume .* --force"):
        vaekit.train(config, quiet=True)
    assert (run_dir / "checkpoints/step-5/model.safetensors").read_bytes() == before
    vaekit.train(config.model_copy(update={"train": config.train.model_copy(update={"seed": 1})}), force=True, quiet=True)
    assert (run_dir / "checkpoints/step-5/model.safetensors").read_bytes() != before


@pytest.mark.parametrize("extra", [[], ["train.ema_decay=0.9", "train.grad_clip=1.0", "model.kl_warmup_steps=15"]])
def test_resume_is_bit_exact(tmp_path, extra):
    uninterrupted = vaekit.train(tiny_config(tmp_path, *extra, name="full"), quiet=True)
    vaekit.train(tiny_config(tmp_path, *extra, "train.steps=17", name="split"), quiet=True)  # stops mid-epoch
    resumed = vaekit.train(tiny_config(tmp_path, *extra, name="split"), resume=True, quiet=True)
    a, b = _weights(uninterrupted), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = load_file(uninterrupted / "checkpoints/step-30/ema.safetensors") if extra else None
    if ema_a is not None:
        ema_b = load_file(resumed / "checkpoints/step-30/ema.safetensors")
        assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    steps = [json.loads(l)["step"] for l in (resumed / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "train"]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def _turn_loss_nan_from(monkeypatch, first_bad_step: int) -> list[int]:
    """Make VAE.loss's total NaN from step index `first_bad_step` on; returns the steps it saw."""
    original, seen = VAE.loss, []

    def loss_turning_nan(self, batch, *, group="model", step=0):
        seen.append(step)
        losses = original(self, batch, group=group, step=step)
        if step >= first_bad_step:
            return type(losses)(total=losses.total * float("nan"), terms=losses.terms)
        return losses

    monkeypatch.setattr(VAE, "loss", loss_turning_nan)
    return seen


def test_nan_loss_stops_at_the_next_log_and_leaves_the_last_good_checkpoint_intact(tmp_path,
                                                                                     monkeypatch):
    clean = vaekit.train(tiny_config(tmp_path, name="clean"), quiet=True)  # same seed, never NaN
    # log every 5 steps, checkpoint every 10: NaN from step index 23 (the 24th step) is caught at
    # the log of step 25, after the step-20 checkpoint and before steps 26-30 and their checkpoint
    seen = _turn_loss_nan_from(monkeypatch, 23)
    with pytest.raises(TrainingDivergedError,
                       match=r"NaN or infinite at or before step 25\b.*step-20"):
        vaekit.train(tiny_config(tmp_path), quiet=True)
    assert seen == list(range(25))  # one loss per step, none after the logging step that caught it
    run_dir = tmp_path / "tiny"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-10", "step-20"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the means holding the NaN are not logged
    assert [r["step"] for r in records if r["split"] == "train"] == [5, 10, 15, 20]
    # step 20 ran before the NaN: its checkpoint is the clean run's, tensor for tensor
    for name in ("model.safetensors", "optimizer.safetensors"):
        kept = load_file(run_dir / f"checkpoints/step-20/{name}")
        reference = load_file(clean / f"checkpoints/step-20/{name}")
        assert kept.keys() == reference.keys(), name
        assert all(torch.equal(kept[k], reference[k]) for k in reference), name
    model, reference_model = vaekit.load(run_dir), vaekit.load(clean / "checkpoints/step-20")
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.reconstruct(x), reference_model.reconstruct(x), rtol=0, atol=0)


def test_nan_before_the_first_checkpoint_stops_the_run_before_anything_is_saved(tmp_path,
                                                                                monkeypatch):
    # NaN from step index 7: caught at the log of step 10, before that step's evaluation and save
    seen = _turn_loss_nan_from(monkeypatch, 7)
    with pytest.raises(TrainingDivergedError,
                       match=r"at or before step 10\b.*no checkpoint was written yet"):
        vaekit.train(tiny_config(tmp_path), quiet=True)
    assert seen == list(range(10))
    assert list_checkpoints(tmp_path / "tiny" / "checkpoints") == []
    lines = (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert [(r["split"], r["step"]) for r in map(json.loads, lines)] == [("train", 5)]


def test_unknown_config_key_lists_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.stepz'.*valid keys of train: .*steps"):
        tiny_config(tmp_path, "train.stepz=3")
    with pytest.raises(ConfigError, match=r"unknown key 'model.latent'.*latent_dim"):
        tiny_config(tmp_path, "model.latent=3")
    with pytest.raises(ConfigError, match="unknown model 'vea'"):
        tiny_config(tmp_path, "model.name=vea")


@pytest.mark.parametrize(("override", "section", "valid"), [("train={'0.': null}", "train", "steps"),
                                                            ("model={'name': 'vae', 'a.b': 1}", "model", "latent_dim")])
def test_an_unknown_key_holding_a_dot_lists_its_sections_keys(tmp_path, override, section, valid):
    """The section was cut from the joined location at its last dot: 'train.0.' gave 'train.0', a KeyError."""
    with pytest.raises(ConfigError, match=rf"unknown key '{section}\..*'; valid keys of {section}: .*{valid}"):
        vaekit.load_config(None, [override])


def test_model_shape_must_match_the_data(tmp_path):
    with pytest.raises(ConfigError, match=r"\(1, 28, 28\).*\(1, 8, 8\)"):
        vaekit.train(tiny_config(tmp_path, "model.image_shape=[1,28,28]"), quiet=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return vaekit.train(tiny_config(tmp_path_factory.mktemp("runs")), quiet=True)


def test_save_load_gives_the_same_outputs(trained_run):
    model = vaekit.load(trained_run)
    again = vaekit.load(trained_run / "checkpoints" / "step-30")
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.reconstruct(x), again.reconstruct(x), rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(model.sample(4, generator=g1), again.sample(4, generator=g2), rtol=0, atol=0)


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def test_truncated_weights_fail_with_one_clear_message(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    weights = run / "checkpoints/step-30/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        vaekit.load(run)


def test_corrupt_state_json_fails_with_one_clear_message(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    state = run / "checkpoints/step-30/state.json"
    state.write_text(state.read_text()[:50])
    with pytest.raises(CheckpointError, match="state.json: corrupt or truncated"):
        vaekit.load(run)


def test_flipped_byte_is_detected(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    weights = run / "checkpoints/step-30/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        vaekit.load(run)


def test_mismatched_checkpoint_names_the_tensors_that_differ(trained_run):
    from vaekit.engine.checkpoint import load_model_weights, load_tensor_file, read_state

    checkpoint = trained_run / "checkpoints/step-30"
    other = VAE(vaekit.load(trained_run).config.model_copy(update={"latent_dim": 6}))
    with pytest.raises(CheckpointError, match=r"weights do not match the model: .*\(8, 64\) vs model \(12, 64\)"):
        load_model_weights(other, load_tensor_file(checkpoint, "model.safetensors", read_state(checkpoint)), checkpoint)


def test_resume_with_a_different_model_config_is_refused(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    config = tiny_config(tmp_path, "model.latent_dim=5", name="copy")
    with pytest.raises(CheckpointError, match=r"model config differs .*latent_dim"):
        vaekit.train(config, resume=True, quiet=True)
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-30"


def test_missing_run_directory_message(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        vaekit.load(tmp_path / "nope")


@pytest.mark.filterwarnings("ignore:train.precision=bf16 on a CPU without:UserWarning")  # bf16 wherever it runs
def test_bf16_autocast_trains_with_fp32_likelihood_and_kl(tmp_path):
    from vaekit.batch import Batch

    run_dir = vaekit.train(tiny_config(tmp_path, "train.precision=bf16", "model.architecture=conv",
                                       "model.conv_channels=[4,8]"), quiet=True)
    model = vaekit.load(run_dir)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.loss(Batch.of(x, generator=g))
    assert all(v.dtype == torch.float32 for v in losses.terms.values())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if r["split"] == "train")  # no NaN


def test_fp16_on_cpu_is_refused_with_a_hint(tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        vaekit.train(tiny_config(tmp_path, "train.precision=fp16", "train.device=cpu"), quiet=True)
    assert not (tmp_path / "tiny").exists()  # refused before anything was written


def test_atomic_writes_leave_no_temp_files_and_usual_permissions(tmp_path):
    import os
    import stat

    from vaekit.io import atomic_write_text

    target = tmp_path / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_optimizer_is_fused_where_torch_has_it_and_steps_like_foreach():
    """make_optimizers picks torch's fused Adam (CPU: torch >= 2.4); it must step like the foreach one."""
    from vaekit.config import TrainConfig
    from vaekit.engine.train import make_optimizers

    torch.manual_seed(0)
    model = VAE(tiny_config("x").model.model_copy(update={"image_shape": (1, 8, 8)}))
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train = TrainConfig(lr=1e-2)
    optimizer = make_optimizers(model, train)["model"]
    cpu_fused = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 4)
    assert bool(optimizer.defaults.get("fused")) is cpu_fused

    twin = VAE(model.config)
    twin.load_state_dict(reference)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1e-2, foreach=True)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):
        for _ in range(5):
            opt.zero_grad()
            net.decode(net.encode(x).mean).logits.float().square().mean().backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(model.state_dict()["decoder.0.0.weight"], reference["decoder.0.0.weight"])


@pytest.mark.parametrize("schedule,halfway", [("constant", 1.0), ("cosine", 0.5), ("linear", 0.5)])
def test_lr_factor_warms_up_linearly_then_follows_its_schedule(schedule, halfway):
    train = TrainConfig(steps=110, lr_warmup_steps=10, lr_schedule=schedule)
    assert [lr_factor(step, train) for step in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, train) == pytest.approx(1.0)  # decay starts after the warm-up
    assert lr_factor(60, train) == pytest.approx(halfway)  # half-way through the 100 decay steps
    assert lr_factor(109, train) == pytest.approx({"constant": 1.0, "cosine": 0.000247, "linear": 0.01}[schedule],
                                                  abs=1e-6)
