"""Lossy image compression with a VQ-VAE and a learned prior over its codes (a code-prior run).

compress: images -> the frozen VQ-VAE's code grids -> each code entropy-coded by constriction's ANS
coder with the prior's conditional probabilities p(c_i | c_<i) -> a .vqz file. decompress inverts it
bit-exactly: the code indices come back identical, then the VQ-VAE decodes them.

Bit-exactness needs the prior's probabilities to be identical on both sides, so both run one code
path (`_position_probabilities`): one image at a time (batch layout 1, in the header's version),
the whole grid with the codes not yet known set to 0 (the causal mask makes them irrelevant, and
the shapes and kernels stay the same), float32 on the CPU with one thread, and a float64 softmax
that constriction quantises to integers. A file decodes with the same vaekit, torch build and
instruction set that wrote it; the fingerprint catches other weights or settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Iterator

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vaekit.coding.container import Header, pack, unpack
from vaekit.errors import CapabilityError, CodecError, DataError
from vaekit.models.base import GenerativeModel
from vaekit.models.code_prior import CodePrior

CODER_SETTINGS = b"ans;categorical-leaky;softmax-f64;batch1;threads1;v1"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one intra-op thread (a fixed reduction order), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class VQCodec:
    """Images (N, C, H, W) in [0, 1] <-> .vqz bytes, with a code-prior run's model and its VQ-VAE parent."""

    def __init__(self, model: GenerativeModel) -> None:
        if not isinstance(model, CodePrior):
            raise CapabilityError(f"compression needs a code-prior run (a prior over a VQ-VAE's codes); "
                                  f"this run's model is {model.config.name!r}")
        self.model, self.vq = model.cpu().eval(), model.parent.cpu().eval()
        self.image_shape = tuple(self.vq.config.image_shape)  # (C, H, W) the VQ-VAE works on
        self.grid = tuple(model.config.codes.shape)
        self.num_positions = self.grid[0] * self.grid[1]

    def fingerprint(self) -> bytes:
        """4 bytes of SHA-256 over the VQ-VAE's and the prior's tensors and the coder settings."""
        digest = hashlib.sha256(CODER_SETTINGS)
        for module in (self.vq, self.model):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()[:4]

    def _position_probabilities(self, prefix: Tensor, position: int) -> np.ndarray:
        """p(c_position | c_<position) for one image: prefix (1, P) int64 -> (K,) float64. The one code path."""
        logits = self.model.prior(prefix)[0, position].float()
        return torch.softmax(logits.double(), -1).numpy()

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
        """The .vqz bytes of images (N, C, H, W) in [0, 1]."""
        if len(images) == 0:
            raise DataError("no images to compress")
        with _one_thread():
            codes = torch.cat([self.vq.latent_codes(chunk) for chunk in self._padded(images.float().cpu()).split(64)])
            codes = codes.view(len(images), self.num_positions)  # (N, P)
            probabilities = np.stack([self._position_probabilities(self._prefix(row, position), position)
                                      for row in codes for position in range(self.num_positions)])  # (N*P, K)
        symbols = codes.reshape(-1).numpy().astype(np.int32)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols, constriction.stream.model.Categorical(perfect=False), probabilities)
        payload = coder.get_compressed().astype("<u4").tobytes()
        header = Header(self.fingerprint(), len(images), images.shape[1], images.shape[2], images.shape[3],
                        zlib.crc32(symbols.astype("<i4").tobytes()))
        return pack(header, payload)

    def _prefix(self, codes: Tensor, position: int) -> Tensor:
        """(1, P): the codes before `position`, zeros from it on."""
        prefix = torch.zeros(1, self.num_positions, dtype=torch.long)
        prefix[0, :position] = codes[:position]
        return prefix

    @torch.inference_mode()
    def decode_codes(self, data: bytes, source: str = "file") -> tuple[Header, Tensor]:
        """(header, code grids (N, H', W')) of a .vqz file, checked against its fingerprint and CRCs."""
        header, payload = unpack(data, source)
        if header.fingerprint != self.fingerprint():
            raise CodecError(f"{source} was made with other models or coder settings than this run's "
                             "(fingerprint differs)")
        if len(payload) % 4:
            raise CodecError(f"{source} is damaged: its payload is not a whole number of 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        family = constriction.stream.model.Categorical(perfect=False)
        codes = torch.zeros(header.count, self.num_positions, dtype=torch.long)
        with _one_thread():
            for index in range(header.count):
                prefix = torch.zeros(1, self.num_positions, dtype=torch.long)
                for position in range(self.num_positions):
                    probabilities = self._position_probabilities(prefix, position)[None]  # (1, K)
                    prefix[0, position] = int(coder.decode(family, probabilities)[0])
                codes[index] = prefix[0]
        symbols = codes.reshape(-1).numpy().astype("<i4")
        if not coder.is_empty() or zlib.crc32(symbols.tobytes()) != header.codes_crc:
            raise CodecError(f"{source} is damaged: its decoded codes fail the header's check")
        return header, codes.view(header.count, *self.grid)

    @torch.inference_mode()
    def decompress(self, data: bytes, source: str = "file") -> Tensor:
        """The images of a .vqz file as uint8 (N, C, H, W), cropped to their true size."""
        header, codes = self.decode_codes(data, source)
        with _one_thread():
            images = torch.cat([self.vq.decode_mean(chunk) for chunk in codes.split(64)])
        pixels = (images[:, :, : header.height, : header.width] * 255).round().clamp(0, 255)
        return pixels.to(torch.uint8)
