"""The VQ-VAE image codec: bit-exact round trips, independence of the images in a file, padding, and one
clear error for every kind of damaged or foreign file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_config

import vaekit
from vaekit.cli import main
from vaekit.coding.container import Header, decode_varint, encode_varint, pack, unpack
from vaekit.coding.vq_codec import FAMILY, VQCodec, payload_words, sealed
from vaekit.config import load_config
from vaekit.data import load_data
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.quantize import nearest_codes

VQ = ("model={name: vqvae, channels: 16, downsamples: 1, residual_cells: 1, num_codes: 16, code_dim: 4}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny VQ-VAE on the digits (4x4 codes of 16 symbols) and two priors over its codes."""
    out = tmp_path_factory.mktemp("codec")
    vq = vaekit.train(tiny_config(out, "data.binarize=none", VQ, "train.steps=200", "train.batch_size=64",
                                  "train.lr=0.003", "train.eval_every=200", "train.checkpoint_every=200", name="vq"),
                      quiet=True)
    priors = []
    for name, steps in (("prior", 300), ("other-prior", 20)):
        config = load_config("digits-code-prior", [f"out_dir={out}", f"name={name}", f"parent={vq}", "model.width=32",
                                                   f"train.steps={steps}", f"train.eval_every={steps}",
                                                   f"train.checkpoint_every={steps}", "eval.num_grid_images=4"])
        priors.append(vaekit.train(config, quiet=True))
    return vq, *priors


@pytest.fixture(scope="module")
def test_digits(runs):
    return load_data(vaekit.load(runs[0]).run_config.data).test[:30]  # (30, 1, 8, 8) grey levels


def nearest_grids(codec: VQCodec, images: torch.Tensor) -> torch.Tensor:
    """The code grids (N, H', W') a codec writes at rate weight 0: the nearest code to each of its encoder's vectors."""
    vectors = codec.encoder_vectors(images)  # (N, P, D)
    return nearest_codes(vectors.flatten(0, 1), codec.vq.quantizer.codebook).view(len(images), *codec.grid)


def test_varints_round_trip_and_are_short():
    for value in (0, 1, 127, 128, 300, 2**32 + 5):
        encoded = encode_varint(value)
        assert decode_varint(encoded, 0) == (value, len(encoded))
    assert len(encode_varint(127)) == 1 and len(encode_varint(128)) == 2


def test_the_header_packs_batch_and_threads_into_one_number_and_takes_17_bytes_for_one_small_image():
    """count, channels, height, width, layout (threads - 1 + 1024 x batch, batch 0 = all images), payload length: one
    byte each for one image, after magic and version (3), fingerprint (4); then the CRC (4)."""
    for batch, count, threads, layout_bytes in [(1, 1, 2, 1), (5, 5, 1, 1), (256, 1000, 2, 3), (4096, 10**6, 1024, 4)]:
        header = Header(b"\x01\x02\x03\x04", count, 1, 28, 28, batch, threads)
        data = pack(header, b"\x00" * 40, b"codes")
        unpacked = unpack(data)
        assert unpacked.header == header and unpacked.payload == b"\x00" * 40
        assert unpacked.matches(b"codes") and not unpacked.matches(b"codeS")
        assert len(data) - 40 == 2 + 1 + 4 + len(encode_varint(count)) + 3 + layout_bytes + 1 + 4
    assert len(pack(Header(b"\x00" * 4, 1, 1, 28, 28, 1, 2), b"\x00" * 30, b"")) - 30 == 17
    with pytest.raises(ValueError, match="threads=1025"):
        pack(Header(b"\x00" * 4, 1, 1, 28, 28, 1, 1025), b"", b"")


def test_a_sealed_payload_drops_what_0xff_padding_restores_and_still_decodes_the_same_symbols():
    """The range coder's last word cut by up to 3 bytes, checked by decoding: over 40 random streams of 49 symbols
    from skewed distributions over 512, the cut payloads decode exactly and are on average over a byte shorter."""
    import constriction

    rng = np.random.default_rng(0)
    saved = []
    for _ in range(40):
        probabilities = rng.dirichlet(np.full(512, 0.05), size=49)
        symbols = np.array([rng.choice(512, p=p / p.sum()) for p in probabilities], dtype=np.int32)
        encoder = constriction.stream.queue.RangeEncoder()
        encoder.encode(symbols, FAMILY, probabilities)
        words = encoder.get_compressed()
        coded = [(symbols[i: i + 1], probabilities[i: i + 1]) for i in range(49)]
        payload = sealed(words, coded)
        assert sealed(words, None) == words.astype(">u4").tobytes()
        assert 4 * len(words) - 3 <= len(payload) <= 4 * len(words)
        decoder = constriction.stream.queue.RangeDecoder(payload_words(payload))
        assert np.array_equal(decoder.decode(FAMILY, probabilities), symbols)
        saved.append(4 * len(words) - len(payload))
    assert np.mean(saved) > 1.0, saved


def test_a_cut_whose_padded_words_the_coder_rejects_is_not_taken_and_not_an_error():
    """constriction raises AssertionError on words its coder cannot have written; sealing treats such a cut as one that
    does not decode. Two words of 0xFF bytes under a skewed two-symbol model are such words, however they are cut."""
    words = np.array([0xFFFFFFFF, 0xFFFFFFFF], dtype=np.uint32)
    probabilities = np.array([[0.999, 0.001]])
    coded = [(np.array([0], dtype=np.int32), probabilities)] * 40
    assert sealed(words, coded) == b"\xff" * 8


def test_single_images_get_trimmed_payloads_and_decode_to_their_codes(runs, test_digits):
    codec = VQCodec(vaekit.load(runs[1]))
    cuts = []
    for index in range(12):
        data = codec.compress(test_digits[index: index + 1])
        cuts.append(len(unpack(data).payload) % 4)
        with torch.inference_mode():
            assert torch.equal(codec.decode_codes(data)[1], nearest_grids(codec, test_digits[index: index + 1]))
    assert any(cuts), cuts  # some last words were cut (a payload of whole words otherwise)


def test_a_round_trip_gives_back_the_codes_exactly_and_their_decoded_images(runs, test_digits):
    codec = VQCodec(vaekit.load(runs[1]))
    data = codec.compress(test_digits)
    _, codes = codec.decode_codes(data)
    with torch.inference_mode():
        expected = nearest_grids(codec, test_digits)
        assert torch.equal(codes, expected)
        images = codec.decompress(data)
        reference = (codec.decoder_images(expected) * 255).round().to(torch.uint8)
        float32 = codec.vq.decode_mean(expected).float() * 255  # the decoder in float32, not bfloat16
    assert torch.equal(images, reference) and images.dtype == torch.uint8
    assert (images.float() - float32).abs().max() <= 2.0  # bfloat16 nets draw the same images to 2 grey levels
    uniform_bytes = 30 * 16 * 4 / 8  # 16 codes of 4 bits per image, without a prior
    assert len(data) < 0.9 * uniform_bytes + 20  # the prior saves bits; the header is ~20 bytes


def _probabilities_along(codec: VQCodec, codes: torch.Tensor) -> torch.Tensor:
    """The prior's p(c_i | c_<i) (N, P, K) along given code grids (N, P), from the codec's own walk."""
    seen = []

    def replay(position: int, probabilities: np.ndarray) -> np.ndarray:
        seen.append(torch.from_numpy(probabilities))
        return codes[:, position].numpy().astype(np.int32)

    codec._walk(len(codes), replay)
    return torch.stack(seen, 1)


def test_a_rate_weight_trades_quality_for_bits_and_the_plain_codec_decodes_it(runs, test_digits):
    """Entropy-constrained choice: each code minimises ||z_e - e_k||^2 - lambda ln p(k | c_<i) (checked by brute
    force over the codebook along the chosen grid); the payload shrinks and the error grows with lambda; a huge
    lambda codes every image as one grid, the prior's most likely one; decoding needs no lambda."""
    model = vaekit.load(runs[1])
    plain = VQCodec(model)
    with torch.inference_mode():
        vectors = plain.encoder_vectors(test_digits)  # (30, P, D)
        codebook = plain.vq.quantizer.codebook
        nearest_distance = torch.cdist(vectors.double(), codebook.double()).pow(2).amin(-1).mean().item()
    weights = (0.0, nearest_distance, 1e6)  # lambda in squared distance per nat
    sizes, errors, grids = [], [], []
    for weight in weights:
        data = VQCodec(model, rate_weight=weight).compress(test_digits)
        _, codes = plain.decode_codes(data)
        images = plain.decompress(data).float() / 255
        sizes.append(len(unpack(data).payload))
        errors.append(float((images - test_digits).pow(2).mean()))
        grids.append(codes.flatten(1))
    assert sizes[0] > sizes[1] > sizes[2], sizes
    assert errors[0] < errors[1] < errors[2], errors
    assert (grids[2] == grids[2][0]).all()  # every image the same grid
    with torch.inference_mode():
        assert torch.equal(grids[0], nearest_grids(plain, test_digits).flatten(1))
        probabilities = _probabilities_along(plain, grids[1])  # (30, P, K)
    distances = (vectors.double()[:, :, None, :] - codebook.double()).pow(2).sum(-1)  # (30, P, K)
    best = (distances - weights[1] * probabilities.log()).argmin(-1)
    assert torch.equal(best, grids[1]) and not torch.equal(grids[1], grids[0])
    with pytest.raises(ConfigError, match="rate_weight"):
        VQCodec(model, rate_weight=-1.0)


def test_each_image_of_a_set_decodes_as_if_compressed_alone(runs, test_digits):
    codec = VQCodec(vaekit.load(runs[1]))
    together = codec.decompress(codec.compress(test_digits))
    for index in (0, 17, 29):
        alone = codec.decompress(codec.compress(test_digits[index : index + 1]))
        assert torch.equal(alone[0], together[index])


def test_images_smaller_than_the_model_are_padded_and_cropped_back(runs, test_digits):
    codec = VQCodec(vaekit.load(runs[1]))
    small = test_digits[:4, :, :7, :6]
    images = codec.decompress(codec.compress(small))
    assert images.shape == (4, 1, 7, 6)
    with pytest.raises(DataError, match="larger than"):
        codec.compress(torch.zeros(1, 1, 9, 8))
    with pytest.raises(DataError, match="channel"):
        codec.compress(torch.zeros(1, 3, 8, 8))


def code_bytes(codec: VQCodec, data: bytes) -> bytes:
    """What a file's CRC covers after its header and payload: its code indices as int32 little endian."""
    return codec.decode_codes(data)[1].numpy().astype("<i4").tobytes()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "magic", "header_cut", "extra", "empty", "count",
                                    "layout"])
def test_a_damaged_file_is_one_clear_error_never_images(runs, test_digits, damage):
    codec = VQCodec(vaekit.load(runs[1]))
    data = bytearray(codec.compress(test_digits[:5]))
    if damage == "truncated":
        data = data[:-3]
    elif damage == "flipped":
        data[-2] ^= 0x10
    elif damage == "magic":
        data[0:3] = b"PNG"
    elif damage == "header_cut":
        data = data[:9]
    elif damage == "empty":
        data = bytearray()
    elif damage in ("count", "layout"):  # a header number changed: 5 images -> 6, threads 1 -> 2 or 2 -> 3
        data[7 if damage == "count" else 11] += 1
    else:
        data += b"\x00"
    with pytest.raises(CodecError):
        codec.decompress(bytes(data))


def test_the_decoder_repeats_the_batch_layout_with_any_thread_count_and_bytes_are_deterministic(runs, test_digits):
    """Batches of at most `batch` images, a batch for every thread: each its own segment, coded on one torch thread,
    so a file written by 2 threads decodes on 1 (and on 3) to the same codes, and the bytes never change."""
    prior = vaekit.load(runs[1])
    data = VQCodec(prior, batch=4, threads=1).compress(test_digits[:10])  # batches of 4, 4, 2
    header, codes = VQCodec(prior, batch=256, threads=2).decode_codes(data)
    assert (header.batch, header.threads) == (4, 1)
    with torch.inference_mode():
        assert torch.equal(codes, nearest_grids(VQCodec(prior), test_digits[:10]))
    assert data == VQCodec(prior, batch=4, threads=1).compress(test_digits[:10])  # deterministic bytes
    two = VQCodec(prior, threads=2).compress(test_digits[:10])  # batches of 5 and 5 coded at once (2 CPUs or more)
    threads = min(2, os.cpu_count() or 1)
    assert (unpack(two).header.batch, unpack(two).header.threads) == (10 // threads, threads)
    for threads in (1, 3):
        assert torch.equal(VQCodec(prior, threads=threads).decode_codes(two)[1], codes)
    assert two == VQCodec(prior, threads=2).compress(test_digits[:10])


@pytest.mark.parametrize("damage", ["first_segment", "length_too_long", "length_too_short"])
def test_damage_to_any_batch_segment_or_its_length_is_one_clear_error(runs, test_digits, damage):
    """A file of two segments (two batches coded at once): flipped bits in the first one, or a first length that
    runs past the payload or cuts the first segment short, each end in one CodecError, raised from whichever
    thread decoded the batch."""
    codec = VQCodec(vaekit.load(runs[1]), batch=5, threads=2)
    data = codec.compress(test_digits[:10])
    unpacked = unpack(data)
    first_length, offset = decode_varint(unpacked.payload, 0)
    payload = bytearray(unpacked.payload)
    if damage == "first_segment":
        payload[offset + first_length // 2] ^= 0x21
    else:
        length = len(payload) if damage == "length_too_long" else first_length - 3
        payload = bytearray(encode_varint(length)) + payload[offset:]
    with pytest.raises(CodecError, match="is damaged"):
        codec.decompress(pack(unpacked.header, bytes(payload), code_bytes(codec, data)))


def test_probabilities_that_differ_from_the_encoders_are_caught_by_the_codes_check(runs, test_digits):
    data = VQCodec(vaekit.load(runs[1])).compress(test_digits[:5])
    other = VQCodec(vaekit.load(runs[2]))
    other._fingerprint = VQCodec(vaekit.load(runs[1]))._fingerprint  # as if the same weights computed otherwise
    with pytest.raises(CodecError, match="decoded codes fail"):
        other.decompress(data)


def test_the_prior_is_bf16_only_on_a_cpu_with_bf16_instructions_and_a_file_names_which(runs, test_digits,
                                                                                         monkeypatch):
    from vaekit.engine import precision

    codecs = {}
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        codecs[native] = VQCodec(vaekit.load(runs[1]))
    assert {p.dtype for p in codecs[True].prior.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in codecs[False].prior.parameters()} == {torch.float32}
    for codec in codecs.values():  # each kind of CPU round-trips its own files
        data = codec.compress(test_digits[:5])
        assert torch.equal(codec.decode_codes(data)[1], nearest_grids(codec, test_digits[:5]))
    with pytest.raises(CodecError, match="another kind: this one evaluates the prior in fp32"):
        codecs[False].decompress(codecs[True].compress(test_digits[:3]))
    with pytest.raises(ConfigError, match="one of auto, bf16, fp32"):
        VQCodec(vaekit.load(runs[1]), precision="fp64")


def test_a_file_from_another_model_is_refused(runs, test_digits):
    data = VQCodec(vaekit.load(runs[1])).compress(test_digits[:3])
    with pytest.raises(CodecError, match="other models"):
        VQCodec(vaekit.load(runs[2])).decompress(data)


def test_only_a_code_prior_run_compresses(runs):
    with pytest.raises(CapabilityError, match="code-prior"):
        VQCodec(vaekit.load(runs[0]))


def test_the_cli_compresses_a_folder_and_an_array_and_decompresses_to_pngs(runs, test_digits, tmp_path, capsys):
    from PIL import Image

    pixels = (test_digits[:6, 0].numpy() * 255).round().astype(np.uint8)
    np.save(tmp_path / "digits.npy", pixels)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for index, image in enumerate(pixels[:2]):
        Image.fromarray(image).save(folder / f"{index}.png")
    out = tmp_path / "digits.vqz"
    assert main(["compress", str(runs[1]), str(tmp_path / "digits.npy"), str(folder), "-o", str(out)]) == 0
    smaller = tmp_path / "smaller.vqz"
    assert main(["compress", str(runs[1]), str(tmp_path / "digits.npy"), str(folder), "-o", str(smaller),
                 "--rate-weight", "1e6"]) == 0
    assert smaller.stat().st_size < out.stat().st_size
    capsys.readouterr()
    assert main(["compress", str(runs[1]), str(tmp_path / "digits.npy"), "-o", str(smaller), "--rate-weight", "-1"]) == 2
    assert "rate_weight" in capsys.readouterr().err
    assert main(["decompress", str(out), "--run", str(runs[1]), "-o", str(tmp_path / "back")]) == 0
    back = sorted((tmp_path / "back").glob("*.png"))
    assert len(back) == 8
    with Image.open(back[6]) as image:
        assert image.size == (8, 8) and image.mode == "L"
    out.write_bytes(out.read_bytes()[:-1])
    capsys.readouterr()
    assert main(["decompress", str(out), "--run", str(runs[1]), "-o", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error:") and "truncated" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("forgery", ["count", "batch", "payload", "images"])
def test_a_forged_file_whose_crc_holds_is_still_one_codec_error(runs, test_digits, forgery):
    """Header numbers or payload changed and the CRC recomputed, as a forger would: more images than the payload holds,
    a batch whose prior caches take gigabytes, payload bits no coder wrote. Fuzzing found forged counts and batches
    ending in constriction's AssertionError after seconds of decoding, or decoding zeros past the payload's end for
    hours (10^7 images in batches of 5)."""
    codec = VQCodec(vaekit.load(runs[1]))
    data = codec.compress(test_digits[:5])
    header, payload = unpack(data).header, unpack(data).payload
    if forgery == "payload":
        payload = bytes(byte ^ 0xFF for byte in payload)
    else:
        count, batch = {"count": (2**40, 1), "batch": (10**6, 10**6), "images": (10**7, 5)}[forgery]
        header = Header(header.fingerprint, count, header.channels, header.height, header.width, batch, header.threads)
    with pytest.raises(CodecError, match="is damaged"):
        codec.decompress(pack(header, payload, code_bytes(codec, data)))


def test_a_forged_thread_count_runs_torch_on_at_most_one_thread_per_cpu(runs, test_digits, monkeypatch):
    """Fuzzing found a header saying 1000 threads running torch on 1000 threads: minutes per image on two cores. The
    decoder runs its own threads (the header's count only says how many batches the writer coded at once), so the
    forged number changes nothing but the CRC over the header."""
    import os

    codec = VQCodec(vaekit.load(runs[1]))
    data = codec.compress(test_digits[:5])
    header, payload = unpack(data).header, unpack(data).payload
    forged = Header(header.fingerprint, header.count, header.channels, header.height, header.width, header.batch, 1000)
    requested = []
    monkeypatch.setattr(torch, "set_num_threads", lambda count, set_threads=torch.set_num_threads: (
        requested.append(count), set_threads(count)))
    assert torch.equal(codec.decompress(pack(forged, payload, code_bytes(codec, data))), codec.decompress(data))
    assert requested and max(requested) <= (os.cpu_count() or 1)


def test_a_batch_no_decoder_would_accept_is_refused_when_compressing(runs):
    with pytest.raises(ValueError, match="batch=5000"):
        VQCodec(vaekit.load(runs[1]), batch=5000)


def test_info_describes_a_vqz_file_from_its_header_without_building_a_model(runs, test_digits, tmp_path, capsys,
                                                                           monkeypatch):
    data = VQCodec(vaekit.load(runs[1]), batch=4, threads=1).compress(test_digits[:5])
    path = tmp_path / "digits.vqz"
    path.write_bytes(data)

    def no_model(*args, **kwargs):
        raise AssertionError("info built a model")

    monkeypatch.setattr("vaekit.api.load", no_model)
    monkeypatch.setattr("vaekit.api.find_checkpoint", no_model)
    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = {"format": "vqz", "version": 3, "count": 5, "image_shape": [1, 8, 8], "batch": 4, "threads": 1,
                "checksum": "length ok (the CRC-32 is checked by decompressing)", "crc32": data[14:18][::-1].hex()}
    assert {key: info[key] for key in expected} == expected
    # magic and version 3 bytes, fingerprint 4, count, channels, height, width 1 each, layout 2 (0 + 1024 x 4),
    # payload length 1, CRC 4
    assert info["payload_bytes"] == len(data) - 18
    assert bytes.fromhex(info["fingerprint"]) == data[3:7]
    path.write_bytes(data[:-1])
    payload = len(data) - 18
    assert vaekit.info(path)["checksum"] == f"damaged: the payload holds {payload - 1} bytes, the header says {payload}"
    path.write_bytes(b"PNG" + data[3:])
    assert main(["info", str(path)]) == 2
    assert "is not a .vqz file" in capsys.readouterr().err


def test_a_vq_vae_trained_with_a_rate_weight_codes_with_its_own_choice_of_codes(tmp_path, test_digits):
    """model.rate_weight: training and the codec (rate weight 0) choose codes by the same entropy-constrained rule."""
    vq = vaekit.train(tiny_config(tmp_path, "data.binarize=none", VQ.replace("}", ", rate_weight: 1.0}"),
                                  "train.steps=60", "train.batch_size=64", "train.lr=0.003", "train.eval_every=60",
                                  "train.checkpoint_every=60", name="vq-rate"), quiet=True)
    config = load_config("digits-code-prior", [f"out_dir={tmp_path}", "name=prior", f"parent={vq}", "model.width=16",
                                               "train.steps=10", "train.eval_every=10", "train.checkpoint_every=10",
                                               "eval.num_grid_images=4"])
    codec = VQCodec(vaekit.load(vaekit.train(config, quiet=True)))
    assert codec.vq.quantizer.mean_distance > 0  # the unit of lambda, learned in training
    _, codes = codec.decode_codes(codec.compress(test_digits))
    with torch.inference_mode():
        own = codec.vq.quantizer.assign(codec.encoder_vectors(test_digits).flatten(0, 1)).view_as(codes)
        assert torch.equal(codes, own)
        assert not torch.equal(codes, nearest_grids(codec, test_digits))  # the rate moved some choices
