"""The .vqz container: a small header that turns damage into one clear error, then the payload.

Layout (all integers unsigned LEB128 varints unless stated):
  magic (b"VQZ": lossy, a VQ-VAE's codes, vq_codec.py; b"VQB": lossless, pixels bits-back coded with a
  VAE, bitsback.py) | version (1 byte) | fingerprint (4 bytes: truncated SHA-256 of the models and coder
  settings) | count | channels | height | width (the true image size) | batch | threads (the layout
  the networks were evaluated in: images per batch and torch threads, which the decoder repeats) |
  bucket bits (b"VQB" only: 2^b prior buckets per latent dimension) | payload length | CRC-32 of the
  header before it and the payload (4 bytes, little endian) | CRC-32 of what is decoded (the code
  indices, or the uint8 pixels of a lossless file; 4 bytes) | payload. 23 bytes for one 28x28 image.
The entropy coder itself cannot tell a damaged stream from a good one (constriction decodes any
bits), so the lengths, both CRCs and an empty coder after the last symbol (a bits-back file: its stacks back
at their initial words) are what catch a truncated file, flipped bits or another model.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vaekit.errors import CodecError

MAGIC = b"VQZ"  # lossy: a VQ-VAE's codes under a code prior
LOSSLESS_MAGIC = b"VQB"  # lossless: the pixels bits-back coded with a VAE
Kind = Literal["codes", "bits-back"]
KINDS: dict[bytes, Kind] = {MAGIC: "codes", LOSSLESS_MAGIC: "bits-back"}
VERSION = 2
MAX_HEADER_BYTES = 3 + 1 + 4 + 8 * 10 + 8  # magic, version, fingerprint, up to 8 varints of at most 10 bytes, 2 CRCs
MAX_BATCH = 4096  # images per batch of the prior: the decoder's memory is this many images' caches
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
    batch: int  # images whose prior probabilities were evaluated together
    threads: int  # torch intra-op threads they were evaluated with
    codes_crc: int  # CRC-32 of the decoded code indices (int32 little endian, image by image, raster order), or
    # of the decoded uint8 pixels (N, C, H, W) of a bits-back file
    kind: Kind = "codes"
    bucket_bits: int = 0  # bits-back: 2^b buckets of equal prior mass per latent dimension

    def numbers(self) -> tuple[int, ...]:
        """The header's varints before the payload length, in file order."""
        common = (self.count, self.channels, self.height, self.width, self.batch, self.threads)
        return (*common, self.bucket_bits) if self.kind == "bits-back" else common


def pack(header: Header, payload: bytes) -> bytes:
    """The whole file: header then payload."""
    magic = LOSSLESS_MAGIC if header.kind == "bits-back" else MAGIC
    numbers = b"".join(encode_varint(v) for v in (*header.numbers(), len(payload)))
    head = magic + bytes([VERSION]) + header.fingerprint + numbers
    return head + struct.pack("<II", zlib.crc32(payload, zlib.crc32(head)), header.codes_crc) + payload


def read_header(data: bytes, source: str = "file") -> tuple[Header, int, int, int]:
    """(header, declared payload length, CRC-32 of header and payload, offset of the payload) from the start of a
    .vqz file: magic, version and every header number checked to be complete, nothing else."""
    kind = KINDS.get(bytes(data[:3]))
    if kind is None:
        raise CodecError(f"{source} is not a .vqz file (it does not start with {MAGIC!r} or {LOSSLESS_MAGIC!r})")
    if len(data) < 8:
        raise CodecError(f"{source} is truncated (no complete header)")
    if data[3] != VERSION:
        raise CodecError(f"{source} has format version {data[3]}; this vaekit reads version {VERSION}")
    fingerprint, offset = data[4:8], 8
    numbers = []
    for _ in range(8 if kind == "bits-back" else 7):
        value, offset = decode_varint(data, offset)
        numbers.append(value)
    count, channels, height, width, batch, threads, *bucket_bits, length = numbers
    if offset + 8 > len(data):
        raise CodecError(f"{source} is truncated (the header's checksums are missing)")
    checksum, codes_crc = struct.unpack("<II", data[offset:offset + 8])
    header = Header(fingerprint, count, channels, height, width, batch, threads, codes_crc, kind, *bucket_bits)
    return header, length, checksum, offset + 8


def unpack(data: bytes, source: str = "file") -> tuple[Header, bytes]:
    """(header, payload) of a .vqz file, after checking magic, version, length and the CRC of header and payload."""
    header, length, checksum, start = read_header(data, source)
    payload = data[start:]
    if len(payload) != length:
        raise CodecError(f"{source} is truncated or damaged: its payload holds {len(payload)} bytes, "
                         f"the header says {length}")
    if zlib.crc32(payload, zlib.crc32(data[:start - 8])) != checksum:
        raise CodecError(f"{source} is damaged: the CRC-32 of its header and payload does not match")
    return header, payload


def describe(path: Path) -> dict[str, Any]:
    """What a .vqz file's header says and whether its payload has the declared length and CRC, without a model (the
    payload is read in blocks, never whole)."""
    with path.open("rb") as file:
        head = file.read(MAX_HEADER_BYTES)
        header, length, checksum, start = read_header(head, str(path))
        found, crc = len(head) - start, zlib.crc32(head[start:], zlib.crc32(head[:start - 8]))
        while block := file.read(READ_BLOCK):
            found, crc = found + len(block), zlib.crc32(block, crc)
    if found != length:
        status = f"damaged: the payload holds {found} bytes, the header says {length}"
    else:
        status = "ok" if crc == checksum else "damaged: the CRC-32 of header and payload does not match"
    lossless = {"bucket_bits": header.bucket_bits, "pixels_crc32": f"{header.codes_crc:08x}"}
    return {"file": str(path), "format": "vqz", "kind": header.kind, "version": VERSION,
            "fingerprint": header.fingerprint.hex(), "count": header.count,
            "image_shape": [header.channels, header.height, header.width], "batch": header.batch,
            "threads": header.threads, "payload_bytes": length, "checksum": status,
            **(lossless if header.kind == "bits-back" else {"codes_crc32": f"{header.codes_crc:08x}"})}
