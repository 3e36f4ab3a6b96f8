"""The .vqz container: a small header that turns damage into one clear error, then the payload.

Layout (all integers unsigned LEB128 varints unless stated):
  magic (2 bytes: b"VZ": lossy, a VQ-VAE's codes, vq_codec.py; b"VB": lossless, pixels bits-back coded with
  a VAE, bitsback.py) | version (1 byte) | fingerprint (4 bytes: truncated SHA-256 of the models and coder
  settings) | count | channels | height | width (the true image size) | layout (the batch layout the
  networks were evaluated in, which the decoder repeats: threads - 1 + 1024 * batch, batch written as 0
  when all images made one batch; threads: b"VZ" the batches coded at once, b"VB" torch's threads) | bucket bits (b"VB" only: 2^b prior buckets per latent dimension) |
  payload length | CRC-32 (4 bytes, little endian) of the header before it, the payload and what the
  payload decodes to (the code indices, or the uint8 pixels of a lossless file) | payload.
  17 bytes before the payload for one 28x28 image.
The entropy coder itself cannot tell a damaged stream from a good one (constriction decodes any
bits), so the payload length, the CRC and an empty coder after the last symbol (a lossy file's range
decoder unless its last word was trimmed, vq_codec.py; a bits-back file's stacks back at their
initial words) are what catch a truncated file, flipped bits or another model.
The CRC covers the decoded symbols as well as the bytes, so a file is checked only by decoding it;
without a model only its length can be checked (`describe`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vaekit.errors import CodecError

MAGIC = b"VZ"  # lossy: a VQ-VAE's codes under a code prior
LOSSLESS_MAGIC = b"VB"  # lossless: the pixels bits-back coded with a VAE
Kind = Literal["codes", "bits-back"]
KINDS: dict[bytes, Kind] = {MAGIC: "codes", LOSSLESS_MAGIC: "bits-back"}
VERSION = 3
MAX_HEADER_BYTES = 2 + 1 + 4 + 7 * 10 + 4  # magic, version, fingerprint, up to 7 varints of at most 10 bytes, CRC
MAX_BATCH = 4096  # images per batch of the prior: the decoder's memory is this many images' caches
MAX_THREADS = 1024  # torch threads a header can name
READ_BLOCK = 1 << 20


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, the high bit set on every byte but the last."""
    if value < 0:
        raise ValueError(f"varints are unsigned, got {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the varint at `offset`; CodecError if the data ends inside it."""
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise CodecError("the file is truncated or damaged (a header number runs past its end)")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


@dataclass(frozen=True)
class Header:
    """What a .vqz file says about itself."""

    fingerprint: bytes  # 4 bytes
    count: int  # images
    channels: int
    height: int  # true size, before padding to the code grid's stride
    width: int
    batch: int  # images whose networks were evaluated together
    threads: int  # 1..MAX_THREADS: b"VZ" batches coded at once (one thread each), b"VB" torch intra-op threads
    kind: Kind = "codes"
    bucket_bits: int = 0  # bits-back: 2^b buckets of equal prior mass per latent dimension

    def numbers(self) -> tuple[int, ...]:
        """The header's varints before the payload length, in file order."""
        if not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads={self.threads}: a .vqz header holds 1 to {MAX_THREADS}")
        layout = self.threads - 1 + MAX_THREADS * (0 if self.batch == self.count else self.batch)
        common = (self.count, self.channels, self.height, self.width, layout)
        return (*common, self.bucket_bits) if self.kind == "bits-back" else common


@dataclass(frozen=True)
class Unpacked:
    """A .vqz file split into its header and payload, its CRC still to be checked against the decoded symbols."""

    header: Header
    payload: bytes
    crc: int  # the CRC-32 the file declares
    crc_so_far: int  # CRC-32 of the header before the CRC and of the payload

    def matches(self, decoded: bytes) -> bool:
        """Whether the decoded symbols (code indices int32 little endian, or uint8 pixels) complete the CRC."""
        return zlib.crc32(decoded, self.crc_so_far) == self.crc


def pack(header: Header, payload: bytes, decoded: bytes) -> bytes:
    """The whole file: header then payload; `decoded` is what the payload decodes to, for the CRC."""
    magic = LOSSLESS_MAGIC if header.kind == "bits-back" else MAGIC
    numbers = b"".join(encode_varint(v) for v in (*header.numbers(), len(payload)))
    head = magic + bytes([VERSION]) + header.fingerprint + numbers
    return head + struct.pack("<I", zlib.crc32(decoded, zlib.crc32(payload, zlib.crc32(head)))) + payload


def read_header(data: bytes, source: str = "file") -> tuple[Header, int, int, int]:
    """(header, declared payload length, declared CRC-32, offset of the payload) from the start of a .vqz file:
    magic, version and every header number checked to be complete, nothing else."""
    kind = KINDS.get(bytes(data[:2]))
    if kind is None:
        raise CodecError(f"{source} is not a .vqz file (it does not start with {MAGIC!r} or {LOSSLESS_MAGIC!r})")
    if len(data) < 7:
        raise CodecError(f"{source} is truncated (no complete header)")
    if data[2] != VERSION:
        raise CodecError(f"{source} has format version {data[2]}; this vaekit reads version {VERSION}")
    fingerprint, offset = data[3:7], 7
    numbers = []
    for _ in range(7 if kind == "bits-back" else 6):
        value, offset = decode_varint(data, offset)
        numbers.append(value)
    count, channels, height, width, layout, *bucket_bits, length = numbers
    if offset + 4 > len(data):
        raise CodecError(f"{source} is truncated (the header's checksum is missing)")
    (crc,) = struct.unpack("<I", data[offset:offset + 4])
    batch = layout // MAX_THREADS or count
    header = Header(fingerprint, count, channels, height, width, batch, layout % MAX_THREADS + 1, kind, *bucket_bits)
    return header, length, crc, offset + 4


def unpack(data: bytes, source: str = "file") -> Unpacked:
    """A .vqz file's header and payload, after checking magic, version and the payload's length."""
    header, length, crc, start = read_header(data, source)
    payload = data[start:]
    if len(payload) != length:
        raise CodecError(f"{source} is truncated or damaged: its payload holds {len(payload)} bytes, "
                         f"the header says {length}")
    return Unpacked(header, payload, crc, zlib.crc32(payload, zlib.crc32(data[:start - 4])))


def describe(path: Path) -> dict[str, Any]:
    """What a .vqz file's header says and whether its payload has the declared length, without a model (the payload
    is read in blocks, never whole; its CRC covers the decoded symbols, so only decompressing checks it)."""
    with path.open("rb") as file:
        head = file.read(MAX_HEADER_BYTES)
        header, length, crc, start = read_header(head, str(path))
        found = len(head) - start
        while block := file.read(READ_BLOCK):
            found += len(block)
    status = "length ok (the CRC-32 is checked by decompressing)" if found == length else \
        f"damaged: the payload holds {found} bytes, the header says {length}"
    lossless = {"bucket_bits": header.bucket_bits} if header.kind == "bits-back" else {}
    return {"file": str(path), "format": "vqz", "kind": header.kind, "version": VERSION,
            "fingerprint": header.fingerprint.hex(), "count": header.count,
            "image_shape": [header.channels, header.height, header.width], "batch": header.batch,
            "threads": header.threads, "payload_bytes": length, "crc32": f"{crc:08x}", "checksum": status, **lossless}
