"""VQ-VAE: code grids, decoding, a short training run with a healthy codebook, and the EMA codebook's place."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import colour_stripes, tiny_config
from safetensors.torch import load_file

import vaekit
from vaekit.errors import ConfigError
from vaekit.models.vqvae import VQVAE, VQVAEConfig
from vaekit.quantize import nearest_codes


def test_codes_are_an_integer_grid_and_decoding_them_is_the_reconstruction():
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_shape=(1, 8, 8), channels=8, downsamples=1, num_codes=5, code_dim=3)).eval()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        codes = model.latent_codes(x)
        assert codes.shape == (4, 4, 4) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 5
        torch.testing.assert_close(model.decode_mean(codes), model.reconstruct(x), rtol=0, atol=0)
    assert model.code_spec().shape == (4, 4) and model.code_spec().num_symbols == 5


def test_a_short_run_learns_to_reconstruct_and_uses_its_codebook(tmp_path):
    config = tiny_config(tmp_path, "data.binarize=none", "model={name: vqvae, channels: 16, downsamples: 1, "
                         "residual_cells: 1, num_codes: 16, code_dim: 4}", "train.steps=300", "train.batch_size=64",
                         "train.lr=0.003", "train.eval_every=300", "train.checkpoint_every=300", "train.log_every=50",
                         "train.ema_decay=0.9", name="vq")
    run_dir = vaekit.train(config, quiet=True)
    records = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if '"test"' in r][-1]
    scores = json.loads(test)
    assert scores["codes_in_use"] >= 0.75  # k-means initialisation and restarts keep the codebook alive
    assert scores["psnr"] > 17.0  # the training mean image scores 11.4 dB on the test digits
    train = [json.loads(r) for r in records if '"train"' in r]
    assert train[-1]["reconstruction"] < 0.5 * train[0]["reconstruction"]
    ema = load_file(run_dir / "checkpoints/step-300/ema.safetensors")
    assert not any(key.startswith("quantizer.") for key in ema)  # the EMA codebook is not averaged again


def test_the_colour_preset_trains_on_generated_32x32_images_and_its_codes_compress_and_come_back(tmp_path):
    """A user's colour array file (N, 32, 32, 3) uint8 with the images-vqvae preset (8x8 codes), then its prior
    and a .vqz round trip of odd-sized colour images."""
    import numpy as np

    from vaekit.coding.vq_codec import VQCodec
    from vaekit.config import load_config

    images = colour_stripes(64, 32, 16)  # (64, 32, 32, 3)
    np.save(tmp_path / "colour.npy", images)
    small = ["model.channels=16", "model.num_codes=32", "model.code_dim=8", "model.residual_cells=1"]
    vq = vaekit.train(load_config("images-vqvae", [
        f"out_dir={tmp_path}", "name=vq", f"data.path={tmp_path / 'colour.npy'}", *small, "train.steps=6",
        "train.batch_size=16", "train.eval_every=6", "train.checkpoint_every=6", "eval.num_images=8",
        "eval.num_grid_images=4"]), quiet=True)
    assert vaekit.load(vq).code_spec().shape == (8, 8)
    prior = vaekit.train(load_config("digits-code-prior", [
        f"out_dir={tmp_path}", "name=prior", f"parent={vq}", "model.width=16", "model.layers=1", "train.steps=4",
        "train.batch_size=16",
        "train.eval_every=4", "train.checkpoint_every=4", "eval.num_images=8", "eval.num_grid_images=4"]),
        quiet=True)
    codec = VQCodec(vaekit.load(prior))
    odd = torch.from_numpy(images[:3, :30, :27]).permute(0, 3, 1, 2).float().div(255)  # (3, 3, 30, 27)
    data = codec.compress(odd)
    _, codes = codec.decode_codes(data)
    decoded = codec.decompress(data)
    assert decoded.shape == (3, 3, 30, 27) and decoded.dtype == torch.uint8
    with torch.inference_mode():
        padded = torch.nn.functional.pad(odd, (0, 5, 0, 2), mode="replicate")
        vectors = codec.encoder_vectors(padded).flatten(0, 1)
        assert torch.equal(codes.flatten(), nearest_codes(vectors, codec.vq.quantizer.codebook))


def test_a_rate_weight_without_the_ema_codebook_is_one_config_error():
    with pytest.raises(ConfigError, match="model.rate_weight needs model.ema=true"):
        VQVAE(VQVAEConfig(image_shape=(1, 8, 8), ema=False, rate_weight=0.5))
