"""Lossless image compression with a VAE by bits-back ANS coding (BB-ANS; Townsend, Bird & Barber, ICLR 2019,
arXiv 1901.04866).

One image x on the stack of constriction's ANS coder (the paper's section 2):
  encode: pop z with q(z|x) (gets -log q(z|x) bits back), push x with p(x|z), push z with p(z);
  decode: pop z with p(z), pop x with p(x|z), push z with q(z|x) (gives the borrowed bits back).
The stack grows by -log p(x|z) - log p(z) + log q(z|x) bits, whose mean under q is
-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || p(z)), the paper's expected message length.

Latents are discretised per dimension into 2^b buckets of equal mass 2^-b under the prior N(0, 1) (the paper's
discretisation of z): edges Phi^-1(i / 2^b), the decoder's z is the bucket's prior median Phi^-1((i + 1/2) / 2^b), q's
bucket masses are differences of its normal cdf at the edges, and p(z) is uniform over the buckets (exactly b bits
per dimension). Pixels are coded with the likelihood's own bin masses over its L levels (`level_log_probs`).

Initial bits: the first image's pop needs bits on the stack. Each stack starts from `initial_words` fixed
pseudo-random 32-bit words (SHAKE-256 of a fixed string), enough for a pop of every latent dimension at
constriction's 24-bit probability precision; they stay at the bottom of the stack, so the payload carries them and
every rate counts them. Decoding must end on exactly these words, a check beside the CRC of the pixels.

B chains (stacks) run in lock-step: image n goes on stack n mod B, and each step evaluates the networks on one image
of each stack in one batch. Both directions evaluate them in the same batches (B images, the last step fewer), in
float32 on the CPU with the thread count written in the header (B is the header's `batch`), then float64
probabilities that constriction quantises; see vq_codec.py for why.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import zlib

import constriction
import numpy as np
import torch
from torch import Tensor

from vaekit.coding.container import MAX_BATCH, Header, decode_varint, encode_varint, pack, unpack
from vaekit.coding.vq_codec import MAX_THREADS, torch_threads, usable_threads
from vaekit.distributions import DiagonalGaussian
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.models.base import GenerativeModel
from vaekit.models.vae import VAE

CODER_SETTINGS = b"bits-back;ans-stack;categorical-leaky;prior-median-buckets;lockstep-chains;v1"
DEFAULT_BUCKET_BITS = 12
MAX_BUCKET_BITS = 18  # q's table holds latent_dim x 2^b float64 per image
PRECISION_BITS = 24  # constriction's probability precision (its default ANS coder: 32-bit words, 64-bit state)
WORD_BITS = 32
CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


class PriorBuckets:
    """2^b buckets of equal mass under N(0, 1) per latent dimension (BB-ANS's discretisation of z), and the pops and
    pushes of a group of latents onto an ANS stack; any Gaussian over one latent group can be coded with them."""

    def __init__(self, bits: int) -> None:
        self.bits, self.size = bits, 1 << bits
        index = torch.arange(self.size, dtype=torch.float64)
        edges = torch.special.ndtri(torch.arange(self.size + 1, dtype=torch.float64) / self.size)  # (2^b + 1,)
        self.lower, self.upper = edges[:-1], edges[1:]  # -inf first, +inf last
        self.centres = torch.special.ndtri((index + 0.5) / self.size).float()  # (2^b,) prior medians
        self.prior = constriction.stream.model.Uniform(self.size)

    def masses(self, gaussian: DiagonalGaussian) -> np.ndarray:
        """Bucket masses Phi((u_i - mu) / s) - Phi((l_i - mu) / s) of N(mu, s^2) with mean (D,): (D, 2^b) float64."""
        per_bucket = DiagonalGaussian(gaussian.mean.double().unsqueeze(-1), gaussian.log_var.double().unsqueeze(-1))
        return per_bucket.log_prob_bin(self.lower, self.upper).exp().numpy()

    def pop(self, coder: constriction.stream.stack.AnsCoder, gaussian: DiagonalGaussian) -> np.ndarray:
        """Bucket indices (D,) int32 popped with the Gaussian's bucket masses (bits back)."""
        return coder.decode(CATEGORICAL, self.masses(gaussian))

    def push(self, coder: constriction.stream.stack.AnsCoder, buckets: np.ndarray, gaussian: DiagonalGaussian) -> None:
        """Push bucket indices (D,) with the Gaussian's bucket masses: the inverse of `pop`."""
        coder.encode_reverse(buckets, CATEGORICAL, self.masses(gaussian))

    def pop_prior(self, coder: constriction.stream.stack.AnsCoder, count: int) -> np.ndarray:
        """`count` bucket indices popped with the uniform prior over the buckets (b bits each)."""
        return coder.decode(self.prior, count)

    def push_prior(self, coder: constriction.stream.stack.AnsCoder, buckets: np.ndarray) -> None:
        """Push bucket indices (D,) with the uniform prior: the inverse of `pop_prior`."""
        coder.encode_reverse(buckets, self.prior)


def initial_words(latent_dim: int) -> np.ndarray:
    """The stack's initial bits: ceil(24 D / 32) + 2 fixed pseudo-random words (uint32, the top one nonzero), more
    than a pop of D latents can take at 24-bit precision."""
    count = math.ceil(PRECISION_BITS * latent_dim / WORD_BITS) + 2
    words = np.frombuffer(hashlib.shake_256(b"vaekit bits-back initial bits").digest(4 * count), "<u4").astype(np.uint32)
    words[-1] |= 1  # an ANS stack never ends in a zero word
    return words


class BitsBackCodec:
    """uint8 images (N, C, H, W) <-> lossless .vqz bytes with a VAE whose p(x|z) is discrete (Bernoulli, discretised
    logistic or its mixture). bucket_bits: b, 2^b buckets per latent dimension; chains: B stacks coded in lock-step
    (the networks see B images per call; each stack carries its own initial bits); threads: torch threads."""

    def __init__(self, model: GenerativeModel, *, bucket_bits: int = DEFAULT_BUCKET_BITS, chains: int = 1,
                 threads: int | None = None) -> None:
        if not isinstance(model, VAE):
            raise CapabilityError(f"lossless compression needs a VAE run (model 'vae'); this run's model is "
                                  f"{model.config.name!r}")
        likelihood = model.likelihood
        if likelihood.num_levels is None or (likelihood.name == "logistic_mixture" and model.image_shape[0] > 1):
            raise CapabilityError(f"lossless compression needs a discrete likelihood (bernoulli, logistic, or "
                                  f"logistic_mixture on one channel); this VAE's is {likelihood.name!r}")
        if not 1 <= bucket_bits <= MAX_BUCKET_BITS:
            raise ConfigError(f"bucket_bits={bucket_bits}: a lossless .vqz file has 1 to {MAX_BUCKET_BITS}")
        if not 1 <= chains <= MAX_BATCH:
            raise ConfigError(f"chains={chains}: a lossless .vqz file has 1 to {MAX_BATCH} stacks")
        self.model = model.cpu().eval()
        self.image_shape = tuple(model.image_shape)  # (C, H, W)
        self.num_levels = likelihood.num_levels
        self.latent_dim = model.config.latent_dim
        self.bucket_bits, self.chains = bucket_bits, chains
        self.threads = usable_threads(threads or torch.get_num_threads())
        self.initial = initial_words(self.latent_dim)

    def fingerprint(self, bucket_bits: int) -> bytes:
        """4 bytes of SHA-256 over the VAE's tensors and the coder settings."""
        digest = hashlib.sha256(CODER_SETTINGS + f";buckets={bucket_bits};levels={self.num_levels}".encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()[:4]

    def levels(self, images: Tensor) -> Tensor:
        """Level indices k (N, C, H, W) int64 of uint8 images (or floats in [0, 1], taken as round(255 x)) that lie
        on this likelihood's grid: pixel = round(255 k / (L - 1))."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DataError(f"this model codes images of shape (N, {', '.join(map(str, self.image_shape))}); "
                            f"got {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            if not bool(((images >= 0) & (images <= 1)).all()):
                raise DataError("images as floats must lie in [0, 1]")
            images = (images.double() * 255).round().to(torch.uint8)
        last = self.num_levels - 1
        levels = (images.double() * last / 255).round().long()
        if not torch.equal(self.pixels(levels), images):
            raise DataError(f"lossless coding needs pixels on this model's {self.num_levels} levels "
                            f"(round(255 k / {last})); these images have other values")
        return levels

    def pixels(self, levels: Tensor) -> Tensor:
        """uint8 pixels round(255 k / (L - 1)) of level indices k."""
        return (levels.double() * 255 / (self.num_levels - 1)).round().to(torch.uint8)

    def posteriors(self, levels: Tensor) -> list[DiagonalGaussian]:
        """q(z|x) of images' levels (B, C, H, W), x = k / (L - 1) in float32, in one batch: B Gaussians over (D,)."""
        q = self.model.encode(levels.float() / (self.num_levels - 1))
        return [DiagonalGaussian(mean, log_var) for mean, log_var in zip(q.mean, q.log_var, strict=True)]

    def pixel_masses(self, buckets: PriorBuckets, indices: np.ndarray) -> np.ndarray:
        """p(x|z) at the centres of buckets (B, D), in one batch, as a pmf over the L levels of each coded pixel:
        (B, pixels, L) float64."""
        z = buckets.centres[torch.from_numpy(indices.astype(np.int64))]  # (B, D)
        like = torch.zeros(len(z), *self.image_shape)
        log_probs = self.model.likelihood.level_log_probs(self.model.decode(z), like)  # (L, B, ...)
        return np.ascontiguousarray(log_probs.double().exp().reshape(self.num_levels, len(z), -1).permute(1, 2, 0))

    def _guard(self, coder: constriction.stream.stack.AnsCoder, error: str) -> None:
        """Every stack holds more than a pop of all latents can take between images (the initial words less one);
        a decoder whose stack runs below that has decoded more images than were pushed."""
        if coder.num_words() < len(self.initial) - 1:
            raise CodecError(error)

    @torch.inference_mode()
    def compress(self, images: Tensor) -> bytes:
        """The lossless .vqz bytes of images (N, C, H, W), uint8 or floats in [0, 1] on the likelihood's levels.

        Image n goes on stack n mod B (B = `chains` stacks in lock-step, the networks evaluated on one image of each
        per step); the payload is the B stacks' word counts (varints) then their words (uint32 little endian)."""
        if len(images) == 0:
            raise DataError("no images to compress")
        levels = self.levels(images.cpu())
        buckets = PriorBuckets(self.bucket_bits)
        chains = min(self.chains, len(levels))
        coders = [constriction.stream.stack.AnsCoder(self.initial.copy()) for _ in range(chains)]
        with torch_threads(self.threads):
            for step in levels.split(chains):
                z = np.stack([buckets.pop(coder, q) for coder, q in zip(coders, self.posteriors(step), strict=False)])
                for coder, image, masses, bucket in zip(coders, step, self.pixel_masses(buckets, z), z, strict=False):
                    coder.encode_reverse(image.reshape(-1).numpy().astype(np.int32), CATEGORICAL, masses)
                    buckets.push_prior(coder, bucket)
                    self._guard(coder, "an ANS stack ran short of bits for the next image's bits back")
        stacks = [coder.get_compressed().astype("<u4") for coder in coders]
        payload = b"".join(encode_varint(len(words)) for words in stacks) + b"".join(w.tobytes() for w in stacks)
        header = Header(self.fingerprint(self.bucket_bits), len(images), *self.image_shape, chains, self.threads,
                        zlib.crc32(self.pixels(levels).numpy().tobytes()), "bits-back", self.bucket_bits)
        return pack(header, payload)

    def _check_header(self, header: Header, source: str) -> None:
        """The header's numbers are ones this run can decode."""
        if header.kind != "bits-back":
            raise CodecError(f"{source} is a lossy file of VQ-VAE codes; it decodes with the code-prior run that "
                             "wrote it")
        if not 1 <= header.bucket_bits <= MAX_BUCKET_BITS or header.fingerprint != self.fingerprint(
                header.bucket_bits):
            raise CodecError(f"{source} was made with another model or coder settings than this run's "
                             "(fingerprint differs)")
        if (header.channels, header.height, header.width) != self.image_shape:
            raise CodecError(f"{source} holds {header.channels}x{header.height}x{header.width} images; this run "
                             f"decodes {'x'.join(map(str, self.image_shape))}")
        if not 1 <= header.batch <= min(header.count, MAX_BATCH) or not 1 <= header.threads <= MAX_THREADS:
            raise CodecError(f"{source} is damaged: count {header.count}, chains {header.batch}, "
                             f"threads {header.threads}")

    def _stacks(self, payload: bytes, chains: int, source: str) -> list[constriction.stream.stack.AnsCoder]:
        """The `chains` ANS stacks of a payload: their word counts (varints), then their words."""
        lengths, offset = [], 0
        for _ in range(chains):
            length, offset = decode_varint(payload, offset)
            lengths.append(length)
        if offset + 4 * sum(lengths) != len(payload):
            raise CodecError(f"{source} is damaged: its stacks' lengths do not add up to its payload")
        bounds = np.cumsum([0, *lengths]) * 4 + offset
        try:
            return [constriction.stream.stack.AnsCoder(np.frombuffer(payload[a:b], "<u4").astype(np.uint32))
                    for a, b in itertools.pairwise(bounds)]
        except ValueError:  # constriction's word for a stack its coder cannot have written
            raise CodecError(f"{source} is damaged: its payload does not decode") from None

    @torch.inference_mode()
    def decompress(self, data: bytes, source: str = "file") -> Tensor:
        """The images of a lossless .vqz file, uint8 (N, C, H, W), checked against its fingerprint and CRCs."""
        header, payload = unpack(data, source)
        self._check_header(header, source)
        coders, chains = self._stacks(payload, header.batch, source), header.batch
        damaged = f"{source} is damaged: its decoded images fail the header's check"
        buckets = PriorBuckets(header.bucket_bits)
        decoded: list[Tensor] = []  # last step first; grows only while the stacks hold images (counts are untrusted)
        try:
            with torch_threads(header.threads):
                for step in reversed(range(math.ceil(header.count / chains))):
                    active = coders[: min(chains, header.count - step * chains)]
                    for coder in active:
                        self._guard(coder, damaged)
                    z = np.stack([buckets.pop_prior(coder, self.latent_dim) for coder in active])
                    masses = self.pixel_masses(buckets, z)
                    levels = torch.stack([torch.from_numpy(coder.decode(CATEGORICAL, m).astype(np.int64))
                                          for coder, m in zip(active, masses, strict=True)])
                    decoded.append(levels.view(len(active), *self.image_shape))
                    for coder, bucket, q in zip(active, z, self.posteriors(decoded[-1]), strict=True):
                        buckets.push(coder, bucket, q)
        except (AssertionError, ValueError):  # constriction's words for bits its coder cannot have written
            raise CodecError(f"{source} is damaged: its payload does not decode") from None
        pixels = self.pixels(torch.cat(decoded[::-1]))
        if not all(np.array_equal(coder.get_compressed(), self.initial) for coder in coders) or zlib.crc32(
                pixels.numpy().tobytes()) != header.codes_crc:
            fewer = usable_threads(header.threads) < header.threads
            raise CodecError(damaged + (f" (or it needs the {header.threads} torch threads it was written with; "
                                        f"this machine has {usable_threads(header.threads)} CPUs)" if fewer else ""))
        return pixels
