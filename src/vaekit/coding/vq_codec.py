"""Lossy image compression with a VQ-VAE and a learned prior over its codes (a code-prior run).

compress: images -> the frozen VQ-VAE's code grids -> each code entropy-coded by constriction's range
coder with the prior's conditional probabilities p(c_i | c_<i) -> a .vqz file. decompress inverts
it bit-exactly: the code indices come back identical, then the VQ-VAE decodes them. The encoder's
code is the nearest to each encoder vector, or with a rate weight lambda the one that minimises
||z_e - e_k||^2 - lambda ln p(k | c_<i), chosen position by position as it is coded (entropy-constrained
VQ): one pair of models gives a range of sizes and qualities, and the decoder is the same for all.

Bit-exactness needs the prior's probabilities to be identical on both sides, so both walk one code
path (`VQCodec._walk`): images in batches of `batch` (the last one smaller), the positions of a
batch in raster order through the prior's cached incremental step (never the whole-sequence
forward), with the prior's weights rounded to bfloat16 on a CPU with bf16 instructions (matrix
products in half the time of float32; under 0.01% more bits on Fashion-MNIST) and kept in float32 on
others (where bfloat16 is emulated, 7-15x slower), on the CPU with one torch thread, then a float32
softmax (10x faster than float64's on a CPU) that constriction quantises to
integers. Each batch is its own range-coded segment of the payload (the lengths of all but the last
lead it), so `threads` batches are coded at once, one per Python thread on one CPU each: the
kernels' numbers never depend on how many threads ran, and a file decodes with any thread count.
The batch size is written in the header and repeated by the decoder, since kernels can differ with
it (the header's thread count says how many batches the writer coded at once). A file decodes with the same
vaekit and torch build on the same instruction set that wrote it; the fingerprint catches other weights or
settings (the prior's precision among them), and the CRC over the decoded codes catches any difference that
remains.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit.coding.container import (
    MAX_BATCH,
    MAX_THREADS,
    Header,
    decode_varint,
    encode_varint,
    pack,
    unpack,
)
from vaekit.engine.precision import DTYPES, autocast, resolve_precision
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.models.base import GenerativeModel
from vaekit.models.code_prior import CodePrior
from vaekit.quantize import rate_constrained_codes

CODER_SETTINGS = "range;categorical-leaky;softmax-f32;cached-step;{precision}-weights;one-thread;segment-per-batch;" \
    "be-words-ff-trimmed;v4"  # precision: the prior's, bf16 on a CPU with bf16 instructions, fp32 on others
# The words of the range coder's state: what sealing a stream may add to the words it has emitted. The codes decoded
# so far, coded again with the same probabilities, never take more words than the payload plus these; the decoder of
# a header declaring more images than its payload holds goes on decoding zeros past its end, which this catches.
CODER_STATE_WORDS = 2

CodeStep = Callable[[int, np.ndarray], np.ndarray]  # (position, probabilities (B, K)) -> symbols (B,) int32
CodeChoice = Callable[[int, np.ndarray], np.ndarray]  # the same signature: which code each image gets there
TRIM_LIMIT = 1 << 21  # probabilities (float64) kept to check a trimmed last word: ~80 images of 7x7 codes, K=512
Item, Result = TypeVar("Item"), TypeVar("Result")
FAMILY = constriction.stream.model.Categorical(perfect=False)  # probabilities quantised to integers, none zero


def payload_words(payload: bytes) -> np.ndarray:
    """The range coder's 32-bit words of a payload: big endian, a trimmed last word padded with 0xFF bytes."""
    return np.frombuffer(payload + b"\xff" * (-len(payload) % 4), dtype=">u4").astype(np.uint32)


def sealed(words: np.ndarray, coded: list[tuple[np.ndarray, np.ndarray]] | None) -> bytes:
    """The payload of a range coder's words: big endian, less the trailing bytes (up to 3 of the last word, its
    lowest) that padding with 0xFF gives back well enough to decode the same symbols, checked by decoding `coded`
    ((symbols (B,), probabilities (B, K)) in coding order; None: not trimmed): 1.7 bytes per one-image Fashion-MNIST
    file on average."""
    data = words.astype(">u4").tobytes()
    for cut in (3, 2, 1) if coded is not None else ():
        if cut < len(data) and _decodes_to(data[:-cut], coded):
            return data[:-cut]
    return data


def _decodes_to(data: bytes, coded: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether a payload, padded as a decoder pads it, decodes to the symbols of `coded` (a padded stream the coder
    could not have written is a no, not an error)."""
    decoder = constriction.stream.queue.RangeDecoder(payload_words(data))
    try:
        return all(np.array_equal(decoder.decode(FAMILY, p), s) for s, p in coded)
    except AssertionError:  # constriction's word for bits its coder cannot have written
        return False


def _split_segments(payload: bytes, count: int) -> list[bytes] | None:
    """A payload's `count` segments: the lengths of all but the last (varints), then the segments; None when the
    lengths do not fit the payload."""
    lengths, offset = [], 0
    try:
        for _ in range(count - 1):
            length, offset = decode_varint(payload, offset)
            lengths.append(length)
    except CodecError:
        return None
    if offset + sum(lengths) > len(payload):
        return None
    bounds = [offset, *(offset + n for n in itertools.accumulate(lengths)), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


def _code_bytes(codes: Tensor) -> bytes:
    """Code indices (N, P) as the CRC sees them: int32 little endian, image by image, raster order."""
    return codes.numpy().astype("<i4").tobytes()


def usable_threads(count: int) -> int:
    """`count` torch threads, at most one per CPU of this machine."""
    return max(1, min(count, os.cpu_count() or 1))


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on `count` intra-op threads (a fixed reduction order; at most one per CPU), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(usable_threads(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_parallel(work: Callable[[Item], Result], items: Sequence[Item], threads: int) -> list[Result]:
    """[work(item) for item in items] on up to `threads` Python threads, torch on one thread in each (its kernels'
    numbers then never depend on the thread count) and in inference mode; the first exception is raised."""

    def one(item: Item) -> Result:
        with torch.inference_mode():
            return work(item)

    with torch_threads(1), ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
        return list(pool.map(one, items))


class VQCodec:
    """Images (N, C, H, W) in [0, 1] <-> .vqz bytes, with a code-prior run's model and its VQ-VAE parent.

    batch: images whose prior probabilities are evaluated together, at most (speed against memory: the
    cache holds layers x 2 x batch x positions x width bfloat16 numbers, 100 MiB for 1024 7x7 grids at
    the Fashion-MNIST preset; smaller when that gives every thread a batch); threads: batches coded at
    once, one CPU each (default: torch's thread count); rate_weight: lambda of the
    encoder's choice of codes, argmin_k ||z_e - e_k||^2 - lambda ln p(k | c_<i) position by position in
    coding order (entropy-constrained VQ; 0: the VQ-VAE's own choice, `VectorQuantizer.assign`). Larger values
    give smaller files and lower quality from the same models; decoding does not depend on it. precision: the
    prior's weights and the nets' autocast, bf16 or fp32 (a coder setting: a file decodes only with the one that
    wrote it); auto: bf16 on a CPU with bf16 instructions, fp32 on others, where bf16 is emulated (7-15x slower).
    """

    def __init__(self, model: GenerativeModel, *, batch: int = 1024, threads: int | None = None,
                 rate_weight: float = 0.0, precision: Literal["auto", "bf16", "fp32"] = "auto") -> None:
        if not isinstance(model, CodePrior):
            raise CapabilityError(f"compression needs a code-prior run (a prior over a VQ-VAE's codes); "
                                  f"this run's model is {model.config.name!r}")
        if not (np.isfinite(rate_weight) and rate_weight >= 0):
            raise ConfigError(f"rate_weight={rate_weight}: a finite number >= 0 (0: the nearest codes)")
        self.rate_weight = float(rate_weight)
        self.model = model.cpu().eval()
        self.vq = copy.deepcopy(model.parent).eval().to(memory_format=torch.channels_last)  # its nets, see encoder_vectors
        if precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision={precision!r}: one of auto, bf16, fp32")
        self.precision = resolve_precision(precision, torch.device("cpu"), setting="precision")
        self.prior = copy.deepcopy(self.model.prior).to(DTYPES[self.precision])  # what both directions evaluate
        self.image_shape = tuple(self.vq.config.image_shape)  # (C, H, W) the VQ-VAE works on
        self.grid = tuple(model.config.codes.shape)
        self.num_positions = self.grid[0] * self.grid[1]
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch={batch}: a .vqz file holds batches of 1 to {MAX_BATCH} images")
        self.batch, self.threads = batch, usable_threads(threads or torch.get_num_threads())
        self._fingerprint = self._weights_fingerprint()

    def _weights_fingerprint(self) -> bytes:
        """4 bytes of SHA-256 over the VQ-VAE's and the prior's tensors and the coder settings."""
        digest = hashlib.sha256(CODER_SETTINGS.format(precision=self.precision).encode())
        for module in (self.vq, self.model):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()[:4]

    def _walk(self, count: int, code_step: CodeStep) -> Tensor:
        """The one code path of both directions, for one batch of `count` grids: at each position in raster
        order, the prior's p(c_i | c_<i) (count, K) from its cached step go to `code_step`, which codes or
        decodes that position's symbols; they feed the next step. Returns the codes (count, P)."""
        codes = torch.zeros(count, self.num_positions, dtype=torch.long)
        cache = self.prior.new_cache(count)
        for position in range(self.num_positions):
            logits = self.prior.step(codes[:, position - 1], position, cache).float()  # (count, K)
            probabilities = torch.softmax(logits, -1).double().numpy()  # float32 softmax, float64 for constriction
            codes[:, position] = torch.from_numpy(code_step(position, probabilities).astype(np.int64))
        return codes

    def encoder_vectors(self, images: Tensor) -> Tensor:
        """The encoder's vectors z_e of images (B, C, H, W): (B, P, D) float32. Encoder and decoder run on
        channels-last tensors in the prior's precision (bfloat16 with bf16 instructions, 2-3x faster than float32
        there); they choose codes and draw images, not the probabilities both sides must share, so they need not
        be bit-exact."""
        with autocast(self.precision, torch.device("cpu")):
            return self.vq.latent_vectors(images.contiguous(memory_format=torch.channels_last))

    def decoder_images(self, codes: Tensor) -> Tensor:
        """The decoder's images (B, C, H, W) float32 in [0, 1] of code grids (B, H', W'), as `encoder_vectors` runs."""
        with autocast(self.precision, torch.device("cpu")):
            return self.vq.decode_mean(codes).float()

    def _padded(self, images: Tensor) -> Tensor:
        """Images padded (edge-replicated) at the bottom and right to the VQ-VAE's size."""
        channels, height, width = self.image_shape
        if images.ndim != 4 or images.shape[1] != channels:
            raise DataError(f"this model codes images with {channels} channel(s), shape (N, {channels}, H, W); "
                            f"got {tuple(images.shape)}")
        if images.shape[2] > height or images.shape[3] > width:
            raise DataError(f"images of {images.shape[2]}x{images.shape[3]} pixels are larger than this model's "
                            f"{height}x{width}")
        pad = (0, width - images.shape[3], 0, height - images.shape[2])
        return F.pad(images, pad, mode="replicate") if any(pad) else images

    @torch.inference_mode()
    def compress(self, images: Tensor) -> bytes:
        """The .vqz bytes of images (N, C, H, W) in [0, 1]: the segments of their batches, each led by its length
        but the last."""
        if len(images) == 0:
            raise DataError("no images to compress")
        batch = min(self.batch, math.ceil(len(images) / self.threads))  # a batch for every thread
        chunks = self._padded(images.float().cpu()).split(batch)
        coded = in_parallel(self._compress_batch, chunks, self.threads)  # [(codes (B, P), segment)]
        codes = torch.cat([batch_codes for batch_codes, _ in coded])  # (N, P)
        segments = [segment for _, segment in coded]
        payload = b"".join(encode_varint(len(segment)) for segment in segments[:-1]) + b"".join(segments)
        header = Header(self._fingerprint, len(images), images.shape[1], images.shape[2], images.shape[3],
                        batch, min(self.threads, len(chunks)))
        return pack(header, payload, _code_bytes(codes))

    def _compress_batch(self, images: Tensor) -> tuple[Tensor, bytes]:
        """One batch's codes (B, P) and its range-coded segment."""
        encoder = constriction.stream.queue.RangeEncoder()
        coded: list[tuple[np.ndarray, np.ndarray]] | None = [] if len(images) * self.num_positions * \
            self.model.config.codes.num_symbols <= TRIM_LIMIT else None  # to check a trimmed last word
        choose = self._chooser(images)

        def encode(position: int, probabilities: np.ndarray) -> np.ndarray:
            column = choose(position, probabilities)
            encoder.encode(column, FAMILY, probabilities)
            if coded is not None:
                coded.append((column, probabilities))
            return column

        codes = self._walk(len(images), encode)
        return codes, sealed(encoder.get_compressed(), coded)

    def _chooser(self, images: Tensor) -> CodeChoice:
        """The code each of a batch of images (B, C, H, W) gets at a position, given the prior's probabilities
        there (B, K): the VQ-VAE's own (`VectorQuantizer.assign`), or with a rate weight the one of least distortion +
        lambda x information under the prior."""
        vectors = self.encoder_vectors(images)  # (B, P, D)
        codebook = self.vq.quantizer.codebook
        if self.rate_weight == 0:
            own = self.vq.quantizer.assign(vectors.flatten(0, 1)).view(len(images), -1).numpy().astype(np.int32)
            return lambda position, probabilities: np.ascontiguousarray(own[:, position])
        vectors, codebook = vectors.double(), codebook.double()  # converted once for every position

        def choose(position: int, probabilities: np.ndarray) -> np.ndarray:
            log_probabilities = torch.from_numpy(probabilities).log()  # (B, K) float64
            return rate_constrained_codes(vectors[:, position], codebook, log_probabilities,
                                          self.rate_weight).numpy().astype(np.int32)

        return choose

    def _check_header(self, header: Header, source: str) -> None:
        """The header's numbers are ones this run can decode."""
        channels, height, width = self.image_shape
        if header.fingerprint != self._fingerprint:
            raise CodecError(f"{source} was made with other models or coder settings than this run's "
                             f"(fingerprint differs; or written on a CPU of another kind: this one evaluates the "
                             f"prior in {self.precision})")
        if header.channels != channels or not (1 <= header.height <= height and 1 <= header.width <= width):
            raise CodecError(f"{source} holds {header.channels}x{header.height}x{header.width} images; this run "
                             f"decodes {channels} channel(s) up to {height}x{width}")
        if header.count < 1 or not 1 <= header.batch <= MAX_BATCH or not 1 <= header.threads <= MAX_THREADS:
            raise CodecError(f"{source} is damaged: count {header.count}, batch {header.batch}, "
                             f"threads {header.threads}")

    @torch.inference_mode()
    def decode_codes(self, data: bytes, source: str = "file") -> tuple[Header, Tensor]:
        """(header, code grids (N, H', W')) of a .vqz file, checked against its fingerprint and CRC."""
        unpacked = unpack(data, source)
        header = unpacked.header
        self._check_header(header, source)
        starts = range(0, header.count, header.batch)  # a segment per batch, at least a length byte each
        segments = _split_segments(unpacked.payload, len(starts)) if len(starts) <= len(unpacked.payload) else None
        if segments is None:
            raise CodecError(f"{source} is damaged: its batches' lengths do not add up to its payload")
        jobs = [(min(header.batch, header.count - start), segment) for start, segment in zip(starts, segments,
                                                                                              strict=True)]
        codes = torch.cat(in_parallel(lambda job: self._decode_batch(*job, source), jobs, self.threads))
        if not unpacked.matches(_code_bytes(codes)):
            raise CodecError(f"{source} is damaged: its decoded codes fail the header's check")
        return header, codes.view(header.count, *self.grid)

    def _decode_batch(self, count: int, segment: bytes, source: str) -> Tensor:
        """The codes (count, P) of one batch's segment; CodecError when its coder reads past the segment or does
        not end on its last word."""
        words = payload_words(segment)
        decoder = constriction.stream.queue.RangeDecoder(words)
        recoded = constriction.stream.queue.RangeEncoder()  # the symbols decoded so far, coded again

        def decode(position: int, probabilities: np.ndarray) -> np.ndarray:
            try:
                symbols = decoder.decode(FAMILY, probabilities)
            except AssertionError:  # constriction's word for bits its coder cannot have written
                raise CodecError(f"{source} is damaged: its payload does not decode") from None
            recoded.encode(symbols, FAMILY, probabilities)
            if recoded.num_words() > len(words) + CODER_STATE_WORDS:  # the decoder reads past the segment
                raise CodecError(f"{source} is damaged: its decoded codes fail the header's check (coded again, they "
                                 f"take more than their {len(segment)}-byte segment)")
            return symbols

        codes = self._walk(count, decode)
        if not (decoder.maybe_exhausted() or len(segment) % 4 > 0):  # a trimmed last word leaves padding unread
            raise CodecError(f"{source} is damaged: its decoded codes fail the header's check")
        return codes

    @torch.inference_mode()
    def decompress(self, data: bytes, source: str = "file") -> Tensor:
        """The images of a .vqz file as uint8 (N, C, H, W), cropped to their true size."""
        header, codes = self.decode_codes(data, source)
        images = torch.cat(in_parallel(self.decoder_images, codes.split(header.batch), self.threads))
        pixels = (images[:, :, : header.height, : header.width] * 255).round().clamp(0, 255)
        return pixels.to(torch.uint8)
