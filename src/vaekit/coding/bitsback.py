"""Lossless image compression by bits-back ANS coding with a latent-variable model whose p(x|z) is discrete: BB-ANS
for a VAE (Townsend, Bird & Barber, ICLR 2019, arXiv 1901.04866) and HiLLoC's top-down scheme for a hierarchical VAE
(Townsend, Bird, Kunze & Barber, ICLR 2020, arXiv 1912.09953).

One image x on the stack of constriction's ANS coder, latent groups z_1..z_L (one group for a VAE):
  encode: pop z_1, ..., z_L in turn with q(z_l | z_<l, x) (gets -log q bits back), push x with p(x|z), push
          z_L, ..., z_1 with p(z_l | z_<l);
  decode: pop z_1, ..., z_L with the priors (each needs only the groups above it), pop x with p(x|z), push
          z_L, ..., z_1 with the posteriors (gives the borrowed bits back).
The stack grows by -log p(x|z) - sum_l [log p(z_l|z_<l) - log q(z_l|z_<l,x)], whose mean under q is the -ELBO (the
paper's expected message length).

Each latent dimension is discretised into 2^b buckets of equal mass 2^-b under its own prior (HiLLoC's dynamic
discretisation; the fixed N(0, 1) of BB-ANS for a VAE): with p(z_l | z_<l) = N(m, s^2) the edges are
m + s Phi^-1(i / 2^b) and the decoder's z is the bucket's prior median m + s Phi^-1((i + 1/2) / 2^b), so p(z) is
uniform over the buckets (exactly b bits per dimension) and q's bucket masses are differences of its normal cdf at
the edges. Pixels are coded channel after channel with the likelihood's bin masses (`level_probs`; a colour
mixture updates its weights with the channels already coded).

Initial bits: the first image's pops need bits on the stack. Each stack starts from n fixed pseudo-random 32-bit
words (SHAKE-256 of a fixed string), n = ceil(b D / 32) + 2 for D latent dimensions (a pop of a dimension takes b bits
on average; more when the encoder finds a stack too short, and n is in the payload). They stay at the bottom of the
stack, so the payload carries them and every rate counts them. Decoding must end on exactly these words, a check
beside the CRC over the pixels.

B chains (stacks) run in lock-step: image n goes on stack n mod B, and each step evaluates the networks on one image
of each stack in one batch. Both directions evaluate them in the same batches (B images, the last step fewer), in
float32 on the CPU with the thread count written in the header (B is the header's `batch`), then float64
probabilities that constriction quantises to its 24-bit precision; see vq_codec.py for why.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import constriction
import numpy as np
import torch
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
from vaekit.coding.vq_codec import torch_threads, usable_threads
from vaekit.distributions import DiagonalGaussian, kl_divergence, sum_except_batch
from vaekit.errors import CapabilityError, CodecError, ConfigError, DataError
from vaekit.likelihoods import ImageDistribution
from vaekit.models.base import Capability, GenerativeModel

CODER_SETTINGS = b"bits-back;ans-stack;categorical-leaky;prior-median-buckets;channels-in-order;lockstep-chains;v2"
DEFAULT_BUCKET_BITS = 12
MAX_BUCKET_BITS = 18  # q's table holds a group's dimensions x 2^b float64 per image
PRECISION_BITS = 24  # constriction's probability precision (its default ANS coder: 32-bit words, 64-bit state)
WORD_BITS = 32
CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
SQRT_HALF = math.sqrt(0.5)
AnsCoder = constriction.stream.stack.AnsCoder


class PriorBuckets:
    """2^b buckets of equal mass under the prior N(m, s^2) of each latent dimension (HiLLoC's discretisation), and
    the pops and pushes of one image's latent group onto an ANS stack.

    q's bucket is coded in two stages, its top ceil(b/2) bits (a coarse bucket of 2^(b/2) fine ones) then the rest
    given them, q(i) = q(coarse) q(i | coarse): the same rate up to constriction's quantisation, and tables of
    2 x 2^(b/2) masses per dimension instead of 2^b (64x fewer at b = 12)."""

    def __init__(self, bits: int) -> None:
        self.bits, self.size = bits, 1 << bits
        self.fine_bits = bits // 2
        self.fine_size = 1 << self.fine_bits
        index = torch.arange(self.size, dtype=torch.float64)
        self.edges = torch.special.ndtri(torch.arange(self.size + 1, dtype=torch.float64) / self.size).float()
        self.medians = torch.special.ndtri((index + 0.5) / self.size).float()  # (2^b,) of N(0, 1)
        self.uniform = constriction.stream.model.Uniform(self.size)

    @staticmethod
    def _masses(prior: DiagonalGaussian, posterior: DiagonalGaussian, edges: Tensor) -> Tensor:
        """q's mass between consecutive standard-normal edges (1 or D, E + 1) mapped through each dimension's prior,
        Phi(t_i+1) - Phi(t_i) with t_i = (m + s e_i - mu) / sigma: (D, E) float32. Left of q's mean from Phi, right
        of it from 1 - Phi = erfc(t / sqrt 2) / 2, so neither tail loses its small masses."""
        mean_p, std_p = prior.mean.reshape(-1, 1), prior.std.reshape(-1, 1)
        t = (edges * std_p + mean_p - posterior.mean.reshape(-1, 1)) / posterior.std.reshape(-1, 1)
        below, above = 0.5 * torch.erfc(-t * SQRT_HALF), 0.5 * torch.erfc(t * SQRT_HALF)  # Phi(t), 1 - Phi(t)
        return torch.where(t[:, :-1] >= 0, above[:, :-1] - above[:, 1:], below[:, 1:] - below[:, :-1])

    def masses(self, prior: DiagonalGaussian, posterior: DiagonalGaussian) -> np.ndarray:
        """q's mass of every bucket of one image's group (D,) flattened: (D, 2^b) float64 (for tests; the coder
        uses the two stages)."""
        return self._masses(prior, posterior, self.edges.unsqueeze(0)).double().numpy()

    def _coarse(self, prior: DiagonalGaussian, posterior: DiagonalGaussian) -> np.ndarray:
        """q's masses of the coarse buckets: (D, 2^(b - b/2)) float64."""
        return self._masses(prior, posterior, self.edges[:: self.fine_size].unsqueeze(0)).double().numpy()

    def _fine(self, prior: DiagonalGaussian, posterior: DiagonalGaussian, coarse: np.ndarray) -> np.ndarray:
        """q's masses of the fine buckets inside each dimension's coarse bucket `coarse` (D,): (D, 2^(b/2)) float64,
        unnormalised (constriction normalises; 1e-30 keeps a bucket far in q's tail, where float32 underflows,
        uniform)."""
        first = torch.from_numpy(coarse.astype(np.int64)).unsqueeze(1) * self.fine_size
        edges = self.edges[first + torch.arange(self.fine_size + 1)]  # (D, 2^(b/2) + 1)
        return self._masses(prior, posterior, edges).double().numpy() + 1e-30

    def centres(self, prior: DiagonalGaussian, buckets: np.ndarray) -> Tensor:
        """The prior medians m + s Phi^-1((i + 1/2) / 2^b) of bucket indices (B, D): z shaped like the prior."""
        standard = self.medians[torch.from_numpy(buckets.astype(np.int64))].view(prior.mean.shape)
        return prior.mean + prior.std * standard.to(prior.mean.dtype)

    def pop(self, coder: AnsCoder, prior: DiagonalGaussian, posterior: DiagonalGaussian) -> np.ndarray:
        """Bucket indices (D,) int32 popped with q's bucket masses (bits back): the coarse bucket, then the fine."""
        coarse = coder.decode(CATEGORICAL, self._coarse(prior, posterior))
        if self.fine_bits == 0:  # b = 1: the coarse buckets are the buckets
            return coarse
        return coarse * self.fine_size + coder.decode(CATEGORICAL, self._fine(prior, posterior, coarse))

    def push(self, coder: AnsCoder, buckets: np.ndarray, prior: DiagonalGaussian, posterior: DiagonalGaussian) -> None:
        """Push bucket indices (D,) with q's bucket masses: the inverse of `pop` (the fine part first)."""
        coarse, fine = np.divmod(buckets, self.fine_size)
        if self.fine_bits:
            coder.encode_reverse(fine.astype(np.int32), CATEGORICAL, self._fine(prior, posterior, coarse))
        coder.encode_reverse(coarse.astype(np.int32), CATEGORICAL, self._coarse(prior, posterior))

    def pop_prior(self, coder: AnsCoder, count: int) -> np.ndarray:
        """`count` bucket indices popped with the prior, uniform over its buckets (b bits each)."""
        return coder.decode(self.uniform, count)

    def push_prior(self, coder: AnsCoder, buckets: np.ndarray) -> None:
        """Push bucket indices (D,) with the prior: the inverse of `pop_prior`."""
        coder.encode_reverse(buckets, self.uniform)


def initial_words(count: int) -> np.ndarray:
    """The stack's initial bits: `count` fixed pseudo-random words (uint32, the top one nonzero)."""
    words = np.frombuffer(hashlib.shake_256(b"vaekit bits-back initial bits").digest(4 * count), "<u4").astype(np.uint32)
    words[-1] |= 1  # an ANS stack never ends in a zero word
    return words


def initial_count(bucket_bits: int, latent_dims: int) -> int:
    """Initial words for D latent dimensions: ceil(b D / 32) + 2, a pop's b bits per dimension on average, and at
    least 4: a drained stack still holds its 64-bit state (2 words), and the decoder's guard (fewer words than the
    initial ones less one) must tell it from a stack with an image left, or a forged image count decodes for ever."""
    return max(math.ceil(bucket_bits * latent_dims / WORD_BITS) + 2, 4)


@torch.inference_mode()
def negative_elbo(model: GenerativeModel, x: Tensor, samples: int = 16, seed: int = 0) -> Tensor:
    """-ELBO(x) = E_q[-log p(x|z)] + sum_l KL(q(z_l | z_<l, x) || p(z_l | z_<l)) in nats per image (N,), continuous
    z, the KLs analytic given the drawn z_<l, the expectation over `samples` draws: the rate bits-back coding reaches
    (Townsend et al. 2019, section 2.2; HiLLoC section 3 for the groups)."""
    model.require(Capability.LATENT_GROUPS, "compute the ELBO of its latent groups")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(x), dtype=torch.float64)

    def draw(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
        total.add_(sum_except_batch(kl_divergence(posterior, prior)).double())
        return posterior.rsample(torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device))

    for _ in range(samples):
        total.sub_(model.likelihood.log_likelihood(model.latent_pass(len(x), draw, x), x).double())
    return total / samples


def _image(gaussian: DiagonalGaussian, index: int) -> DiagonalGaussian:
    """Image `index` of a batched Gaussian."""
    return DiagonalGaussian(gaussian.mean[index], gaussian.log_var[index])


class BitsBackCodec:
    """uint8 images (N, C, H, W) <-> lossless .vqz bytes with a model of Gaussian latent groups (a VAE, a
    hierarchical VAE) whose p(x|z) is discrete (Bernoulli, discretised logistic or its mixture). bucket_bits: b, 2^b
    buckets per latent dimension; chains: B stacks coded in lock-step (the networks see B images per call; each stack
    carries its own initial bits); threads: torch threads."""

    def __init__(self, model: GenerativeModel, *, bucket_bits: int = DEFAULT_BUCKET_BITS, chains: int = 1,
                 threads: int | None = None) -> None:
        model.require(Capability.LATENT_GROUPS, "compress losslessly by bits back (a vae or hierarchical-vae run does)")
        likelihood = model.likelihood
        if likelihood.num_levels is None:
            raise CapabilityError(f"lossless compression needs a discrete likelihood (bernoulli, logistic or "
                                  f"logistic_mixture); this model's is {likelihood.name!r}")
        if not 1 <= bucket_bits <= MAX_BUCKET_BITS:
            raise ConfigError(f"bucket_bits={bucket_bits}: a lossless .vqz file has 1 to {MAX_BUCKET_BITS}")
        if not 1 <= chains <= MAX_BATCH:
            raise ConfigError(f"chains={chains}: a lossless .vqz file has 1 to {MAX_BATCH} stacks")
        self.model = model.cpu().eval()
        self.image_shape = tuple(model.config.image_shape)  # (C, H, W)
        self.likelihood = likelihood
        self.num_levels = likelihood.num_levels
        self.bucket_bits, self.chains = bucket_bits, chains
        self.threads = usable_threads(threads or torch.get_num_threads())
        self.group_dims = self._group_dims()

    @torch.inference_mode()
    def _group_dims(self) -> list[int]:
        """Dimensions of each latent group, from one pass at the prior means."""
        dims: list[int] = []

        def record(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            dims.append(prior.mean[0].numel())
            return prior.mean

        self.model.latent_pass(1, record)
        return dims

    def fingerprint(self, bucket_bits: int) -> bytes:
        """4 bytes of SHA-256 over the model's tensors and the coder settings."""
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

    def _push_pixels(self, coders: list[AnsCoder], distribution: ImageDistribution, levels: Tensor) -> None:
        """Push each stack's image levels (B, C, H, W) with p(x|z), the last channel first (so channel 0 pops first,
        and each channel's masses can depend on the channels before it)."""
        known = levels.float() / (self.num_levels - 1)
        for channel in reversed(range(self.image_shape[0])):
            masses = self.likelihood.level_probs(distribution, known[:, :channel]).double().flatten(1, 2).numpy()
            for coder, symbols, pmf in zip(coders, levels[:, channel].flatten(1).int().numpy(), masses, strict=True):
                coder.encode_reverse(symbols, CATEGORICAL, pmf)

    def _pop_pixels(self, coders: list[AnsCoder], distribution: ImageDistribution) -> Tensor:
        """Pop each stack's image levels with p(x|z), channel 0 first: (B, C, H, W) int64."""
        channels, height, width = self.image_shape
        levels = torch.zeros(len(coders), channels, height, width, dtype=torch.int64)
        for channel in range(channels):
            known = levels[:, :channel].float() / (self.num_levels - 1)
            masses = self.likelihood.level_probs(distribution, known).double().flatten(1, 2).numpy()
            levels[:, channel] = torch.from_numpy(np.stack([
                coder.decode(CATEGORICAL, pmf) for coder, pmf in zip(coders, masses, strict=True)]).astype(np.int64)
            ).view(len(coders), height, width)
        return levels

    def _encode_step(self, coders: list[AnsCoder], buckets: PriorBuckets, levels: Tensor) -> None:
        """One image (B, C, H, W) onto each stack: pop z_1..z_L with q, push x with p(x|z), push z_L..z_1 with the
        priors."""
        popped: list[np.ndarray] = []  # per group (B, D_l)

        def pop_posterior(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            popped.append(np.stack([buckets.pop(coder, _image(prior, i), _image(posterior, i))
                                    for i, coder in enumerate(coders)]))
            return buckets.centres(prior, popped[-1])

        distribution = self.model.latent_pass(len(levels), pop_posterior, levels.float() / (self.num_levels - 1))
        self._push_pixels(coders, distribution, levels)
        for group in reversed(popped):
            for coder, indices in zip(coders, group, strict=True):
                buckets.push_prior(coder, indices)

    def _decode_step(self, coders: list[AnsCoder], buckets: PriorBuckets) -> Tensor:
        """One image (B, C, H, W) levels off each stack: the inverse of `_encode_step`."""
        popped: list[np.ndarray] = []

        def pop_prior(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            popped.append(np.stack([buckets.pop_prior(coder, self.group_dims[index]) for coder in coders]))
            return buckets.centres(prior, popped[-1])

        levels = self._pop_pixels(coders, self.model.latent_pass(len(coders), pop_prior))
        groups: list[tuple[DiagonalGaussian, DiagonalGaussian]] = []

        def replay(index: int, prior: DiagonalGaussian, posterior: DiagonalGaussian | None) -> Tensor:
            groups.append((prior, posterior))
            return buckets.centres(prior, popped[index])

        self.model.latent_pass(len(coders), replay, levels.float() / (self.num_levels - 1))
        for (prior, posterior), group in zip(reversed(groups), reversed(popped), strict=True):
            for i, (coder, indices) in enumerate(zip(coders, group, strict=True)):
                buckets.push(coder, indices, _image(prior, i), _image(posterior, i))
        return levels

    @torch.inference_mode()
    def compress(self, images: Tensor) -> bytes:
        """The lossless .vqz bytes of images (N, C, H, W), uint8 or floats in [0, 1] on the likelihood's levels.

        Image n goes on stack n mod B (B = `chains` stacks in lock-step, the networks evaluated on one image of each
        per step); the payload is the initial word count n and the B stacks' word counts (varints), then their words
        (uint32 little endian). A stack that runs shorter than n - 1 words between images (which would let a decoder
        stop early) makes the encoder start again with twice the initial words."""
        if len(images) == 0:
            raise DataError("no images to compress")
        levels = self.levels(images.cpu())
        buckets = PriorBuckets(self.bucket_bits)
        chains = min(self.chains, len(levels))
        count = initial_count(self.bucket_bits, sum(self.group_dims))
        with torch_threads(self.threads):
            while (stacks := self._encode(levels, buckets, chains, initial_words(count))) is None:
                count *= 2
        payload = b"".join(encode_varint(n) for n in [count, *map(len, stacks)]) + b"".join(w.tobytes() for w in stacks)
        header = Header(self.fingerprint(self.bucket_bits), len(images), *self.image_shape, chains, self.threads,
                        "bits-back", self.bucket_bits)
        return pack(header, payload, self.pixels(levels).numpy().tobytes())

    def _encode(self, levels: Tensor, buckets: PriorBuckets, chains: int, initial: np.ndarray) -> list[np.ndarray] | None:
        """The stacks' words after coding every image, or None when one ran shorter than the initial words less one."""
        coders = [AnsCoder(initial.copy()) for _ in range(chains)]
        for step in levels.split(chains):
            self._encode_step(coders[: len(step)], buckets, step)
            if min(coder.num_words() for coder in coders) < len(initial) - 1:
                return None
        return [coder.get_compressed().astype("<u4") for coder in coders]
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

    def _stacks(self, payload: bytes, chains: int, source: str) -> tuple[list[AnsCoder], np.ndarray]:
        """The `chains` ANS stacks of a payload and the initial words they end on: the initial word count and the
        stacks' word counts (varints), then their words."""
        lengths, offset = [], 0
        for _ in range(chains + 1):
            length, offset = decode_varint(payload, offset)
            lengths.append(length)
        count, lengths = lengths[0], lengths[1:]
        if offset + 4 * sum(lengths) != len(payload) or not 2 <= count <= min(lengths) + 1:
            raise CodecError(f"{source} is damaged: its stacks' lengths do not add up to its payload")
        bounds = np.cumsum([0, *lengths]) * 4 + offset
        try:
            return [AnsCoder(np.frombuffer(payload[a:b], "<u4").astype(np.uint32))
                    for a, b in itertools.pairwise(bounds)], initial_words(count)
        except ValueError:  # constriction's word for a stack its coder cannot have written
            raise CodecError(f"{source} is damaged: its payload does not decode") from None

    @torch.inference_mode()
    def decompress(self, data: bytes, source: str = "file") -> Tensor:
        """The images of a lossless .vqz file, uint8 (N, C, H, W), checked against its fingerprint and CRC."""
        unpacked = unpack(data, source)
        header, payload = unpacked.header, unpacked.payload
        self._check_header(header, source)
        chains = header.batch
        coders, initial = self._stacks(payload, chains, source)
        damaged = f"{source} is damaged: its decoded images fail the header's check"
        buckets = PriorBuckets(header.bucket_bits)
        decoded: list[Tensor] = []  # last step first; grows only while the stacks hold images (counts are untrusted)
        try:
            with torch_threads(header.threads):
                for step in reversed(range(math.ceil(header.count / chains))):
                    active = coders[: min(chains, header.count - step * chains)]
                    if min(coder.num_words() for coder in active) < len(initial) - 1:
                        raise CodecError(damaged)
                    decoded.append(self._decode_step(active, buckets))
        except (AssertionError, ValueError):  # constriction's words for bits its coder cannot have written
            raise CodecError(f"{source} is damaged: its payload does not decode") from None
        pixels = self.pixels(torch.cat(decoded[::-1]))
        if not all(np.array_equal(coder.get_compressed(), initial) for coder in coders) or not unpacked.matches(
                pixels.numpy().tobytes()):
            fewer = usable_threads(header.threads) < header.threads
            raise CodecError(damaged + (f" (or it needs the {header.threads} torch threads it was written with; "
                                        f"this machine has {usable_threads(header.threads)} CPUs)" if fewer else ""))
        return pixels
