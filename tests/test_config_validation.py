"""Config values that torch would reject late (or accept silently) are refused at load with one message."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from vaekit.engine.distributed import resolve_device
from vaekit.errors import ConfigError


@pytest.mark.parametrize("override,key", [
    ("train.betas=[2, 2]", "train.betas"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.device=tpu", "train.device"),
    ("train.num_threads=0", "train.num_threads"),
    ("train.seed=1e20", "train.seed"),
    ("train.seed=-1", "train.seed"),
    ("train.ema_decay=2", "train.ema_decay"),
    ("train.ema_decay=.nan", "train.ema_decay"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr_warmup_steps=-5", "train.lr_warmup_steps"),
    ("train.group_lr={model: -0.1}", "train.group_lr"),
    ("eval.num_images=0", "eval.num_images"),
    ("eval.num_images=-1", "eval.num_images"),
    ("model.hidden_dims=[-1]", "model.hidden_dims"),
    ("model.hidden_dims=[0]", "model.hidden_dims"),
    ("model.name=[1]", "model"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(tmp_path, override)


def test_a_device_this_machine_does_not_have_is_one_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device("cuda")


def test_yaml_aliases_are_refused_so_a_billion_laughs_config_cannot_expand(tmp_path):
    from vaekit.config import load_config
    from vaekit.errors import ConfigError

    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(laughs) + "\nname: laughs\n")  # 9^9 strings if expanded
    with pytest.raises(ConfigError, match="aliases"):
        load_config(path)
    path.write_text("name: anchored\nmodel: {name: vae}\ntrain: &t {steps: 5}\n")  # an anchor alone is harmless
    assert load_config(path).train.steps == 5
