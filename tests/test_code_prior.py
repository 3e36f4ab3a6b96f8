"""The autoregressive prior over code grids: causality, a normalised distribution, sampling that follows
it, and the two-stage run over a VQ-VAE's integer codes."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from conftest import tiny_config

import vaekit
from vaekit.config import load_config
from vaekit.priors import CodeTransformer


def _prior(num_symbols: int, positions: int, seed: int = 0, kv_heads: int | None = None) -> CodeTransformer:
    torch.manual_seed(seed)
    prior = CodeTransformer(num_symbols, positions, width=16, layers=2, heads=4 if kv_heads else 2, kv_heads=kv_heads)
    with torch.no_grad():  # away from the near-uniform initialisation
        for parameter in prior.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return prior.eval()


KV_HEADS = pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["multi-head", "grouped", "multi-query"])


@KV_HEADS
def test_the_logits_of_a_position_do_not_depend_on_it_or_on_later_codes(kv_heads):
    prior = _prior(5, 6, kv_heads=kv_heads)
    codes = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(2))
    logits = prior(codes)
    for position in range(6):
        changed = codes.clone()
        changed[:, position:] = (changed[:, position:] + 1) % 5
        torch.testing.assert_close(prior(changed)[:, : position + 1], logits[:, : position + 1])
    earlier = codes.clone()
    earlier[:, 0] = (earlier[:, 0] + 1) % 5
    assert not torch.allclose(prior(earlier)[:, -1], logits[:, -1])  # while earlier codes do matter


@KV_HEADS
def test_the_cached_step_path_gives_the_logits_of_the_whole_sequence_path(kv_heads):
    prior = _prior(5, 6, kv_heads=kv_heads)
    codes = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(3))
    cache = prior.new_cache(4)
    stepped = torch.stack([prior.step(codes[:, i - 1], i, cache) for i in range(6)], 1)  # (4, 6, 5)
    torch.testing.assert_close(stepped, prior(codes), atol=1e-5, rtol=1e-5)


@KV_HEADS
def test_the_probabilities_of_all_grids_sum_to_one(kv_heads):
    prior = _prior(3, 4, kv_heads=kv_heads)
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2)  # all 81 grids
    assert torch.logsumexp(prior.log_prob(grids), 0).exp().item() == pytest.approx(1.0, abs=1e-5)


def test_key_value_heads_must_divide_the_query_heads():
    with pytest.raises(ValueError, match="key/value heads"):
        CodeTransformer(5, 6, width=16, layers=1, heads=4, kv_heads=3)


def test_query_heads_share_a_key_value_head_in_consecutive_groups():
    """Multi-query attention equals multi-head attention whose key and value projections repeat one head's."""
    shared = _prior(5, 6, kv_heads=1)
    plain = CodeTransformer(5, 6, width=16, layers=2, heads=4)
    depth = 16 // 4
    with torch.no_grad():
        for name, tensor in shared.state_dict().items():
            if name.endswith("attention.qkv.weight"):  # rows: 16 queries, 4 keys, 4 values -> 16 of each
                q, k, v = tensor.split([16, depth, depth])
                tensor = torch.cat([q, k.repeat(4, 1), v.repeat(4, 1)])
            plain.state_dict()[name].copy_(tensor)
    codes = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(plain.eval()(codes), shared(codes))
    assert shared.new_cache(3).shape[2] == 3 and plain.new_cache(3).shape[2] == 12  # B * kv_heads rows


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_follows_the_model_at_each_temperature(temperature):
    prior = _prior(3, 2, seed=3)
    grids = torch.tensor(list(itertools.product(range(3), repeat=2)))  # all 9
    samples = prior.sample(20000, torch.Generator().manual_seed(4), temperature=temperature)
    observed = torch.stack([(samples == grid).all(1).float().mean() for grid in grids])
    # the exact distribution of sequential draws at this temperature: each factor's softmax(logits / T)
    logits = prior(grids).float() / temperature  # (9, 2, 3)
    expected = (logits.log_softmax(-1).gather(2, grids[:, :, None]).squeeze(2)).sum(1).exp()
    torch.testing.assert_close(expected.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert (observed - expected).abs().max().item() < 0.015  # 3.5 standard errors at 20000 draws


def test_a_code_prior_run_learns_the_rate_of_a_vq_vaes_codes_and_samples_images(tmp_path):
    vq = vaekit.train(tiny_config(tmp_path, "data.binarize=none", "model={name: vqvae, channels: 16, downsamples: 1, "
                                  "residual_cells: 1, num_codes: 16, code_dim: 4}", "train.steps=200",
                                  "train.batch_size=64", "train.lr=0.003", "train.eval_every=200",
                                  "train.checkpoint_every=200", name="vq"), quiet=True)
    config = load_config("digits-code-prior", [f"out_dir={tmp_path}", "name=prior", f"parent={vq}", "model.width=32",
                                               "train.steps=300", "train.eval_every=300", "train.checkpoint_every=300",
                                               "train.log_every=100", "eval.num_grid_images=4"])
    run_dir = vaekit.train(config, quiet=True)
    saved = json.loads(json.dumps(vaekit.load(run_dir).run_config.model.codes.model_dump()))
    assert saved == {"shape": [4, 4], "dtype": "int64", "num_symbols": 16}
    test = json.loads([r for r in (run_dir / "metrics.jsonl").read_text().splitlines() if '"test"' in r][-1])
    assert test["code_bits_per_grid"] < 0.8 * test["uniform_bits_per_grid"]  # 16 positions x 4 bits = 64
    images = vaekit.load(run_dir).sample(3, torch.Generator().manual_seed(0), temperature=0.9)
    assert images.shape == (3, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert (run_dir / "samples/step-300.png").is_file()
