"""Lossless compression by bits-back ANS coding with a VAE (BB-ANS, Townsend et al. 2019) and a hierarchical VAE
(HiLLoC, Townsend et al. 2020): bit-exact round trips (grey, binary, colour), a rate at the negative ELBO,
deterministic bytes, and one clear error for damaged or foreign files and for models without a discrete likelihood."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from conftest import colour_stripes, tiny_config

import vaekit
from vaekit.cli import main
from vaekit.coding.bitsback import BitsBackCodec, PriorBuckets, initial_count, initial_words
from vaekit.coding.container import Header, pack, unpack
from vaekit.config import load_config
from vaekit.data import load_data
from vaekit.distributions import DiagonalGaussian, kl_divergence
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.models.registry import build_model, model_config_class

LIKELIHOODS = {
    "bernoulli": (),  # binarised digits
    "logistic": ("data.binarize=none", "model.likelihood=logistic", "model.num_bins=17"),  # the digits' 17 levels
}


STEPS = ("train.steps=300", "train.eval_every=300", "train.checkpoint_every=300", "train.log_every=100")
TINY_HVAE = ("model.channels=8", "model.groups_per_scale=[1,1]", "model.latent_channels=2", "model.kl_warmup_steps=90",
             "train.batch_size=32", "eval.num_importance_samples=20", "eval.num_images=40", "eval.num_grid_images=16")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny digits VAEs (latent_dim 4) with each discrete likelihood, tiny hierarchical VAEs (groups at 2x2 and 4x4)
    with each, and a VAE with the Gaussian likelihood."""
    out = tmp_path_factory.mktemp("bitsback")
    made = {name: vaekit.train(tiny_config(out, *STEPS, *extra, name=name), quiet=True)
            for name, extra in LIKELIHOODS.items()}
    for name, extra in LIKELIHOODS.items():
        config = load_config("digits-hvae", [f"out_dir={out}", f"name=hvae-{name}", *TINY_HVAE, *STEPS, *extra])
        made[f"hvae-{name}"] = vaekit.train(config, quiet=True)
    made["gaussian"] = vaekit.train(tiny_config(out, "data.binarize=none", "model.likelihood=gaussian",
                                                "train.steps=2", name="gaussian"), quiet=True)
    return made


def digits_of(run, count: int = 200) -> torch.Tensor:
    """The first `count` test digits of a run's data (binarised for the Bernoulli VAE): (count, 1, 8, 8) in [0, 1]."""
    return load_data(vaekit.load(run).run_config.data).test[:count]


def negative_elbo_bits(model, images: torch.Tensor, samples: int = 256) -> float:
    """Mean -ELBO in bits per image, continuous z: -E_q log p(x|z) + sum_l KL(q(z_l|z_<l,x) || p(z_l|z_<l)), the
    KLs analytic (given the drawn z_<l), the expectation over `samples` draws."""
    generator = torch.Generator().manual_seed(0)
    total = torch.zeros(len(images))

    def draw(index, prior, posterior):
        total.add_(kl_divergence(posterior, prior).flatten(1).sum(1))
        return posterior.rsample(torch.randn(posterior.mean.shape, generator=generator))

    with torch.no_grad():
        for _ in range(samples):
            total.sub_(model.likelihood.log_likelihood(model.latent_pass(len(images), draw, images), images))
    return float(total.mean()) / samples / math.log(2.0)


ALL = [*LIKELIHOODS, *(f"hvae-{name}" for name in LIKELIHOODS)]


@pytest.mark.parametrize("likelihood", ALL)
def test_a_round_trip_gives_back_the_pixels_bit_exactly(runs, likelihood):
    codec = BitsBackCodec(vaekit.load(runs[likelihood]))
    images = digits_of(runs[likelihood])
    expected = (images.double() * 255).round().to(torch.uint8)
    assert len(expected.unique()) == (2 if likelihood.endswith("bernoulli") else 17)
    back = codec.decompress(codec.compress(images))
    assert back.dtype == torch.uint8 and torch.equal(back, expected)
    assert torch.equal(codec.decompress(codec.compress(expected)), expected)  # uint8 in, the same bytes


@pytest.mark.parametrize("likelihood", ALL)
def test_the_rate_is_the_negative_elbo_plus_the_initial_bits(runs, likelihood):
    """Payload bits per image within 1% of the mean -ELBO (continuous z, analytic KL) plus the initial words' bits
    spread over the images; the 4-byte words, the 2^-12 buckets and 24-bit probabilities cost the rest. The rate
    draws one z per image, so it scatters around the -ELBO: all 360 test digits keep that near 0.3% of it. The
    hierarchical VAEs' buckets follow each group's prior given the groups above (HiLLoC)."""
    model = vaekit.load(runs[likelihood])
    images = digits_of(runs[likelihood], 360)
    codec = BitsBackCodec(model)
    latent_dims = 4 if likelihood in LIKELIHOODS else 2 * 2 * 2 + 2 * 4 * 4
    assert sum(codec.group_dims) == latent_dims
    payload = unpack(codec.compress(images)).payload
    rate = 8 * len(payload) / len(images)
    bound = negative_elbo_bits(model, images) + 32 * initial_count(12, latent_dims) / len(images)
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
    header = unpack(data).header
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
    assert unpack(seven).header.batch == 7 and one != seven
    assert torch.equal(BitsBackCodec(model).decompress(seven), BitsBackCodec(model).decompress(one))
    words = initial_count(12, 4)
    assert 4 * words * 6 < len(unpack(seven).payload) - len(unpack(one).payload) < 4 * (words + 2) * 6 + 7
    assert torch.equal(BitsBackCodec(model, chains=64).decompress(BitsBackCodec(model, chains=64).compress(images)),
                       BitsBackCodec(model).decompress(one))  # more chains than images: one image each


def test_the_decoder_runs_the_networks_on_the_thread_count_written_in_the_header(runs, monkeypatch):
    """Determinism: kernels can round differently with the thread count, so a file records the encoder's and the
    decoder repeats it, whatever codec settings the decoding side was built with."""
    model = vaekit.load(runs["hvae-logistic"])
    images = digits_of(runs["hvae-logistic"], 6)
    data = BitsBackCodec(model, threads=1).compress(images)
    assert unpack(data).header.threads == 1
    requested = []
    monkeypatch.setattr(torch, "set_num_threads", lambda count, set_threads=torch.set_num_threads: (
        requested.append(count), set_threads(count)))
    back = BitsBackCodec(model, threads=2).decompress(data)
    assert requested[0] == 1 and torch.equal(back, BitsBackCodec(model).pixels(BitsBackCodec(model).levels(images)))


def test_prior_buckets_have_equal_mass_under_each_prior_and_pop_then_push_restores_the_stack():
    import constriction

    buckets = PriorBuckets(8)
    prior = DiagonalGaussian(torch.tensor([0.0, 1.5, -3.0]), torch.tensor([0.0, -2.0, 1.0]))
    assert buckets.masses(prior, prior).shape == (3, 256)
    assert np.allclose(buckets.masses(prior, prior), 1 / 256, rtol=1e-4)  # float32 masses
    assert torch.equal(buckets.medians[:128], -buckets.medians.flip(0)[:128])  # symmetric
    centres = buckets.centres(prior, np.array([[0, 128, 255]]))  # bucket medians of each prior, by hand:
    expected = [prior.mean[i] + prior.std[i] * float(NormalDist().inv_cdf((k + 0.5) / 256))
                for i, k in enumerate([0, 128, 255])]
    assert torch.allclose(centres, torch.tensor(expected).view(1, 3))
    q = DiagonalGaussian(torch.tensor([0.3, -2.0, 1.0]), torch.tensor([-4.0, -1.0, 0.0]))
    masses = buckets.masses(prior, q)
    assert np.allclose(masses.sum(-1), 1.0)
    edge = 1.5 + math.exp(-1.0) * NormalDist().inv_cdf(200 / 256)  # bucket 199..200 boundary of dimension 1
    assert math.isclose(masses[1, :200].sum(), NormalDist(-2.0, math.exp(-0.5)).cdf(edge), abs_tol=1e-6)
    coder = constriction.stream.stack.AnsCoder(initial_words(5))
    z = buckets.pop(coder, prior, q)
    assert not np.array_equal(coder.get_compressed(), initial_words(5))
    buckets.push(coder, z, prior, q)
    assert np.array_equal(coder.get_compressed(), initial_words(5))


def test_coding_the_channels_in_order_codes_the_joint_mixture():
    """A colour mixture shared by R, G, B: p(R) p(G | R) p(B | R, G) from `level_probs`, the weights updated by the
    channels already coded, equals the joint bin mass of `log_prob`; each channel's masses sum to one."""
    from vaekit.likelihoods import ImageLikelihood

    likelihood = ImageLikelihood(name="logistic_mixture", num_bins=8, num_mixtures=3)
    generator = torch.Generator().manual_seed(0)
    distribution = likelihood.distribution(torch.randn(2, likelihood.num_params(3), 2, 2, generator=generator), 3)
    x = torch.randint(0, 8, (2, 3, 2, 2), generator=generator).float() / 7
    chain = torch.zeros(2, 2, 2)
    for channel in range(3):
        probs = likelihood.level_probs(distribution, x[:, :channel])  # (2, 2, 2, 8)
        assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 2))
        chain += probs.gather(-1, (x[:, channel] * 7).round().long().unsqueeze(-1)).squeeze(-1).log()
    assert torch.allclose(chain, distribution.log_prob(x), atol=1e-5)
    assert not torch.allclose(likelihood.level_probs(distribution, x[:, :1]),  # G's masses do depend on R
                              likelihood.level_probs(distribution, 1 - x[:, :1]))


def test_a_colour_hierarchical_vae_codes_generated_colour_images_bit_exactly(tmp_path):
    """A user's colour array file (N, 8, 8, 3) uint8, a hierarchical VAE with a logistic mixture shared by the
    channels: R, then G | R, then B | R, G come back bit-exactly, with 3 chains."""
    images = colour_stripes(60, 8, 32)  # (60, 8, 8, 3)
    np.save(tmp_path / "colour.npy", images)
    config = load_config("digits-hvae", [
        f"out_dir={tmp_path}", "name=colour", "data={name: images, path: " + str(tmp_path / "colour.npy") + "}",
        "model.likelihood=logistic_mixture", "model.num_mixtures=2", *TINY_HVAE, "train.steps=20",
        "train.eval_every=20", "train.checkpoint_every=20", "train.log_every=10"])
    codec = BitsBackCodec(vaekit.load(vaekit.train(config, quiet=True)), chains=3)
    pixels = torch.from_numpy(images[:7]).permute(0, 3, 1, 2).contiguous()
    data = codec.compress(pixels)
    assert torch.equal(codec.decompress(data), pixels) and unpack(data).header.channels == 3


def test_a_hierarchical_vae_with_a_dense_first_group_codes_digits_bit_exactly(tmp_path):
    """HiLLoC over a dense z_1 (a vector) above spatial groups: the buckets of the vector's N(0, I) prior, then
    those of the maps' priors given it; the 8-level digits come back bit-exactly."""
    config = load_config("digits-hvae", [
        f"out_dir={tmp_path}", "name=dense-top", "data.binarize=none", "model.likelihood=logistic",
        "model.num_bins=17", *TINY_HVAE, "model.top_latent_dim=3", "model.top_hidden=8", "model.resampling=strided",
        "train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", "train.log_every=10"])
    run = vaekit.train(config, quiet=True)
    model = vaekit.load(run)
    assert model.latent_shapes()[0] == (3,)
    codec = BitsBackCodec(model, chains=2)
    images = digits_of(run, 6)
    expected = (images.double() * 255).round().to(torch.uint8)
    assert torch.equal(codec.decompress(codec.compress(images)), expected)


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "payload bit flip", "forged payload", "forged count",
                                    "forged chains", "wrong model", "lossy kind"])
def test_a_damaged_or_foreign_file_is_one_clear_error(runs, damage):
    codec = BitsBackCodec(vaekit.load(runs["bernoulli"]))
    data = codec.compress(digits_of(runs["bernoulli"])[:10])
    header, payload = unpack(data).header, unpack(data).payload
    pixels = codec.decompress(data).numpy().tobytes()  # what the CRC covers after header and payload
    if damage == "truncated":
        data = data[:-3]
    elif damage == "bit flip":
        data = data[:10] + bytes([data[10] ^ 4]) + data[11:]
    elif damage == "payload bit flip":
        data = data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]
    elif damage == "forged payload":  # the CRC recomputed, as a forger would
        data = pack(header, bytes(byte ^ 0x5A for byte in payload[:-4]) + payload[-4:], pixels)
    elif damage in ("forged count", "forged chains"):  # more images than the payload holds: decoding must stop,
        # not run for ever; more stacks than images
        count, chains = (10**9, 1) if damage == "forged count" else (10, 11)
        forged = Header(header.fingerprint, count, *[getattr(header, name) for name in (
            "channels", "height", "width")], chains, *[getattr(header, name) for name in (
            "threads", "kind", "bucket_bits")])
        data = pack(forged, payload, pixels)
    elif damage == "wrong model":
        codec = BitsBackCodec(vaekit.load(runs["logistic"]))
    else:  # the same numbers in a lossy (VQ codes) header
        data = pack(Header(*[getattr(header, name) for name in (
            "fingerprint", "count", "channels", "height", "width", "batch", "threads")]), payload, pixels)
    with pytest.raises(CodecError) as error:
        codec.decompress(data)
    assert len(str(error.value).splitlines()) == 1


def test_a_forged_image_count_stops_at_the_initial_words_with_two_latent_dimensions(tmp_path, monkeypatch):
    """Fuzzing found a 2-dimensional VAE's file with its count forged to 10^7 decoding for ever: with 3 initial
    words the guard (fewer than 2) never fired, since a drained stack keeps 2 words of state."""
    from sklearn.datasets import load_digits

    run = vaekit.train(tiny_config(tmp_path, "model.latent_dim=2", "model.hidden_dims=[16]", "train.steps=30",
                                   "train.ema_decay=0.9"), quiet=True)  # the fuzzing's VAE
    codec = BitsBackCodec(vaekit.load(run))
    binary = torch.from_numpy(np.where(load_digits().images[:3] >= 8, 255, 0).astype(np.uint8))[:, None]
    unpacked = unpack(codec.compress(binary))
    header, payload = unpacked.header, unpacked.payload
    forged = Header(header.fingerprint, 10**7, header.channels, header.height, header.width, header.batch,
                    header.threads, header.kind, header.bucket_bits)
    steps = []
    decode_step = BitsBackCodec._decode_step

    def counted(self, coders, buckets):
        steps.append(1)
        assert len(steps) < 100, "decoding did not stop"
        return decode_step(self, coders, buckets)

    monkeypatch.setattr(BitsBackCodec, "_decode_step", counted)
    with pytest.raises(CodecError, match="damaged"):
        codec.decompress(pack(forged, payload, binary.numpy().tobytes()))
    assert len(steps) <= 10  # the 3 images and a few decoded from the drained stack, then the guard


def test_only_a_vae_with_a_discrete_likelihood_compresses_losslessly(runs):
    with pytest.raises(CapabilityError, match="discrete likelihood"):
        BitsBackCodec(vaekit.load(runs["gaussian"]))
    wae = build_model(model_config_class("wae-mmd")(image_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8]))
    with pytest.raises(CapabilityError, match="cannot compress losslessly"):
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
    assert main(["compress", "--lossless", "--rate-weight", "1", run, str(tmp_path / "digits.npy"),
                 "-o", str(tmp_path / "r.vqz")]) == 2
    assert "rate_weight" in capsys.readouterr().err and not (tmp_path / "r.vqz").exists()
    out.write_bytes(out.read_bytes()[:-1])
    assert main(["decompress", str(out), "--run", run, "-o", str(tmp_path / "again")]) == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "again").exists()


@pytest.mark.parametrize("preset,overrides", [
    ("fashion-mnist-vae-logistic", ["model.conv_channels=[8, 8]", "model.hidden_dims=[32]", "model.latent_dim=8"]),
    ("fashion-mnist-hvae", ["model.channels=8", "model.groups_per_scale=[1]", "model.latent_channels=2",
                            "model.kl_warmup_steps=3"]),
], ids=["8-bit VAE", "binary hierarchical VAE"])
def test_fashion_mnist_test_images_come_back_bit_exactly(tmp_path, preset, overrides):
    """Real 28x28 images: the first 30 Fashion-MNIST test images, 8-bit with a logistic mixture VAE, and their fixed
    seeded binarisation with a hierarchical Bernoulli VAE (a dense group above a 7x7 group), each a few training steps."""
    from vaekit.data.images import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)")
    config = load_config(preset, [f"out_dir={tmp_path}", "name=fm", *overrides, "train.steps=10", "train.batch_size=16",
                                  "train.eval_every=10", "train.checkpoint_every=10", "train.num_threads=1",
                                  "eval.num_importance_samples=2", "eval.num_images=4", "eval.num_grid_images=4",
                                  "eval.sample_quality_samples=0", "eval.extra_importance_samples=[]"])
    model = vaekit.load(vaekit.train(config, quiet=True))
    pixels = (load_data(model.run_config.data).test[:30].double() * 255).round().to(torch.uint8)
    levels = len(pixels.unique())
    assert (levels == 2) if preset == "fashion-mnist-hvae" else (levels > 100)
    codec = BitsBackCodec(model, chains=4)
    assert torch.equal(codec.decompress(codec.compress(pixels)), pixels)
