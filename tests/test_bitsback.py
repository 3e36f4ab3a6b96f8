"""Lossless compression by bits-back ANS coding with a VAE (BB-ANS, Townsend et al. 2019): bit-exact round trips,
a rate at the negative ELBO, deterministic bytes, and one clear error for damaged or foreign files and for models
without a discrete likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

import vaekit
from vaekit.cli import main
from vaekit.coding.bitsback import BitsBackCodec, PriorBuckets, initial_words
from vaekit.coding.container import Header, pack, unpack
from vaekit.data import load_data
from vaekit.distributions import DiagonalGaussian, kl_divergence
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.models.registry import build_model, model_config_class

LIKELIHOODS = {
    "bernoulli": (),  # binarised digits
    "logistic": ("data.binarize=none", "model.likelihood=logistic", "model.num_bins=17"),  # the digits' 17 levels
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny digits VAEs (latent_dim 4) with each discrete likelihood, and one with the Gaussian likelihood."""
    out = tmp_path_factory.mktemp("bitsback")
    steps = ("train.steps=300", "train.eval_every=300", "train.checkpoint_every=300", "train.log_every=100")
    made = {name: vaekit.train(tiny_config(out, *steps, *extra, name=name), quiet=True)
            for name, extra in LIKELIHOODS.items()}
    made["gaussian"] = vaekit.train(tiny_config(out, "data.binarize=none", "model.likelihood=gaussian",
                                                "train.steps=2", name="gaussian"), quiet=True)
    return made


def digits_of(run, count: int = 200) -> torch.Tensor:
    """The first `count` test digits of a run's data (binarised for the Bernoulli VAE): (count, 1, 8, 8) in [0, 1]."""
    return load_data(vaekit.load(run).run_config.data).test[:count]


def negative_elbo_bits(model, images: torch.Tensor, samples: int = 256) -> float:
    """Mean -ELBO in bits per image: -E_q log p(x|z) (Monte Carlo) + KL(q || p) (analytic), continuous z."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q = model.encode(images)
        kl = kl_divergence(q, model.prior(q.mean)).sum(-1)  # (N,)
        noise = torch.randn(samples, *q.mean.shape, generator=generator)
        reconstruction = torch.stack([model.likelihood.log_likelihood(model.decode(q.rsample(eps)), images)
                                      for eps in noise]).mean(0)  # (N,)
    return float((kl - reconstruction).mean()) / math.log(2.0)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_a_round_trip_gives_back_the_pixels_bit_exactly(runs, likelihood):
    codec = BitsBackCodec(vaekit.load(runs[likelihood]))
    images = digits_of(runs[likelihood])
    expected = (images.double() * 255).round().to(torch.uint8)
    assert len(expected.unique()) == (2 if likelihood == "bernoulli" else 17)
    back = codec.decompress(codec.compress(images))
    assert back.dtype == torch.uint8 and torch.equal(back, expected)
    assert torch.equal(codec.decompress(codec.compress(expected)), expected)  # uint8 in, the same bytes


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_the_rate_is_the_negative_elbo_plus_the_initial_bits(runs, likelihood):
    """Payload bits per image within 1% of the mean -ELBO (continuous z, analytic KL) plus the initial words' bits
    spread over the images; the 4-byte words, the 2^-12 buckets and 24-bit probabilities cost the rest. The rate
    draws one z per image, so it scatters around the -ELBO: all 360 test digits keep that near 0.3% of it."""
    model = vaekit.load(runs[likelihood])
    images = digits_of(runs[likelihood], 360)
    codec = BitsBackCodec(model)
    _, payload = unpack(codec.compress(images))
    rate = 8 * len(payload) / len(images)
    bound = negative_elbo_bits(model, images) + 32 * len(initial_words(4)) / len(images)
    assert abs(rate - bound) < 0.01 * bound, (rate, bound)


def test_compressing_twice_gives_identical_bytes_and_each_set_decodes_alone(runs):
    codec = BitsBackCodec(vaekit.load(runs["logistic"]))
    images = digits_of(runs["logistic"])[:20]
    data = codec.compress(images)
    assert data == BitsBackCodec(vaekit.load(runs["logistic"])).compress(images)
    assert data != codec.compress(images[:19])
    assert torch.equal(codec.decompress(codec.compress(images[5:6])), codec.decompress(data)[5:6])


def test_more_bucket_bits_are_written_in_the_header_and_decode(runs):
    model = vaekit.load(runs["bernoulli"])
    images = digits_of(runs["bernoulli"])[:20]
    data = BitsBackCodec(model, bucket_bits=16).compress(images)
    header, _ = unpack(data)
    assert (header.kind, header.bucket_bits, header.batch) == ("bits-back", 16, 1)
    assert torch.equal(BitsBackCodec(model).decompress(data), BitsBackCodec(model).pixels(
        BitsBackCodec(model).levels(images)))
    with pytest.raises(ConfigError, match="bucket_bits=0"):
        BitsBackCodec(model, bucket_bits=0)


def test_chains_in_lock_step_give_back_the_same_pixels_with_their_initial_bits_each(runs):
    """7 stacks over 20 images (the last step codes 6): batched networks, one set of initial words per stack."""
    model = vaekit.load(runs["logistic"])
    images = digits_of(runs["logistic"], 20)
    one, seven = BitsBackCodec(model).compress(images), BitsBackCodec(model, chains=7).compress(images)
    assert unpack(seven)[0].batch == 7 and one != seven
    assert torch.equal(BitsBackCodec(model).decompress(seven), BitsBackCodec(model).decompress(one))
    words = len(initial_words(4))
    assert 4 * words * 6 < len(unpack(seven)[1]) - len(unpack(one)[1]) < 4 * (words + 2) * 6 + 7
    assert torch.equal(BitsBackCodec(model, chains=64).decompress(BitsBackCodec(model, chains=64).compress(images)),
                       BitsBackCodec(model).decompress(one))  # more chains than images: one image each


def test_prior_buckets_have_equal_prior_mass_and_pop_then_push_restores_the_stack():
    import constriction

    buckets = PriorBuckets(8)
    prior = buckets.masses(DiagonalGaussian(torch.zeros(3), torch.zeros(3)))  # (3, 256)
    assert prior.shape == (3, 256) and np.allclose(prior, 1 / 256)
    assert torch.equal(buckets.centres[:128], -buckets.centres.flip(0)[:128])  # medians, symmetric
    q = DiagonalGaussian(torch.tensor([0.3, -2.0, 1.0]), torch.tensor([-4.0, -1.0, 0.0]))
    assert np.allclose(buckets.masses(q).sum(-1), 1.0)
    coder = constriction.stream.stack.AnsCoder(initial_words(3))
    z = buckets.pop(coder, q)
    assert not np.array_equal(coder.get_compressed(), initial_words(3))
    buckets.push(coder, z, q)
    assert np.array_equal(coder.get_compressed(), initial_words(3))


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "payload bit flip", "forged payload", "forged count",
                                    "forged chains", "wrong model", "lossy kind"])
def test_a_damaged_or_foreign_file_is_one_clear_error(runs, damage):
    codec = BitsBackCodec(vaekit.load(runs["bernoulli"]))
    data = codec.compress(digits_of(runs["bernoulli"])[:10])
    header, payload = unpack(data)
    if damage == "truncated":
        data = data[:-3]
    elif damage == "bit flip":
        data = data[:10] + bytes([data[10] ^ 4]) + data[11:]
    elif damage == "payload bit flip":
        data = data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]
    elif damage == "forged payload":  # the CRC recomputed, as a forger would
        data = pack(header, bytes(byte ^ 0x5A for byte in payload[:-4]) + payload[-4:])
    elif damage in ("forged count", "forged chains"):  # more images than the payload holds: decoding must stop,
        # not run for ever; more stacks than images
        count, chains = (10**9, 1) if damage == "forged count" else (10, 11)
        forged = Header(header.fingerprint, count, *[getattr(header, name) for name in (
            "channels", "height", "width")], chains, *[getattr(header, name) for name in (
            "threads", "codes_crc", "kind", "bucket_bits")])
        data = pack(forged, payload)
    elif damage == "wrong model":
        codec = BitsBackCodec(vaekit.load(runs["logistic"]))
    else:  # the same numbers in a lossy (VQ codes) header
        data = pack(Header(*[getattr(header, name) for name in (
            "fingerprint", "count", "channels", "height", "width", "batch", "threads", "codes_crc")]), payload)
    with pytest.raises(CodecError) as error:
        codec.decompress(data)
    assert len(str(error.value).splitlines()) == 1


def test_only_a_vae_with_a_discrete_likelihood_compresses_losslessly(runs):
    with pytest.raises(CapabilityError, match="discrete likelihood"):
        BitsBackCodec(vaekit.load(runs["gaussian"]))
    wae = build_model(model_config_class("wae-mmd")(image_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8]))
    with pytest.raises(CapabilityError, match="needs a VAE"):
        BitsBackCodec(wae)
    with pytest.raises(DataError, match="17 levels"):
        BitsBackCodec(vaekit.load(runs["logistic"])).compress(torch.full((1, 1, 8, 8), 0.3))


def test_the_cli_compresses_losslessly_and_decompresses_either_kind(runs, tmp_path, capsys):
    from PIL import Image

    images = digits_of(runs["logistic"])[:6]
    np.save(tmp_path / "digits.npy", images.numpy())
    out = tmp_path / "digits.vqz"
    run = str(runs["logistic"])
    assert main(["compress", "--lossless", "--bucket-bits", "10", "--chains", "2", run, str(tmp_path / "digits.npy"),
                 "-o", str(out)]) == 0
    assert main(["decompress", str(out), "--run", run, "-o", str(tmp_path / "back")]) == 0
    back = np.stack([np.asarray(Image.open(tmp_path / "back" / f"{i:06d}.png")) for i in range(6)])
    assert np.array_equal(back, (images[:, 0].double().numpy() * 255).round().astype(np.uint8))
    assert main(["info", str(out)]) == 0
    assert '"kind": "bits-back"' in capsys.readouterr().out
    assert main(["compress", "--lossless", str(runs["gaussian"]), str(tmp_path / "digits.npy"),
                 "-o", str(tmp_path / "g.vqz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error:") and "discrete likelihood" in err and len(err.strip().splitlines()) == 1
    out.write_bytes(out.read_bytes()[:-1])
    assert main(["decompress", str(out), "--run", run, "-o", str(tmp_path / "again")]) == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "again").exists()
