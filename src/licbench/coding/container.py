"""The licbench bitstream container, format version 1.

docs/bitstream.md is the specification: field by field layout (big-endian),
the checks a reader makes, and the errors it gives. In short: magic, version,
flags, architecture, model id, image size, padding, latent shape, a table of
(length, CRC-32) per stream, a CRC-32 of the header, then the streams; the file
ends exactly after the last stream.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError
from ..fileio import write_bytes_atomic

MAGIC = b"LICB"
VERSION = 1
MAX_SIDE = 65535
MAX_STREAMS = 16
MAX_NDIM = 4
MAX_ARCH_LEN = 64


@dataclass(frozen=True)
class Bitstream:
    arch: str
    model_id: bytes  # 8 bytes
    height: int
    width: int
    pad_multiple: int
    shape: tuple[int, ...]
    streams: tuple[bytes, ...]


def encode_container(bs: Bitstream) -> bytes:
    arch = bs.arch.encode("ascii")
    if not 1 <= len(arch) <= MAX_ARCH_LEN:
        raise ValueError(f"architecture name must be 1..{MAX_ARCH_LEN} ASCII bytes")
    if len(bs.model_id) != 8:
        raise ValueError("model_id must be 8 bytes")
    if not (1 <= bs.height <= MAX_SIDE and 1 <= bs.width <= MAX_SIDE):
        raise ValueError(f"image size {bs.width}x{bs.height} outside 1..{MAX_SIDE}")
    if len(bs.shape) > MAX_NDIM or not 1 <= len(bs.streams) <= MAX_STREAMS:
        raise ValueError("too many latent dimensions or streams")
    head = bytearray(MAGIC)
    head += struct.pack(">BBB", VERSION, 0, len(arch)) + arch + bs.model_id
    head += struct.pack(">IIH", bs.height, bs.width, bs.pad_multiple)
    head += struct.pack(">B", len(bs.shape)) + b"".join(struct.pack(">I", d) for d in bs.shape)
    head += struct.pack(">B", len(bs.streams))
    for s in bs.streams:
        head += struct.pack(">II", len(s), zlib.crc32(s))
    head += struct.pack(">I", zlib.crc32(head))
    return bytes(head) + b"".join(bs.streams)


class _Reader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError(f"{self.source}: truncated in {what} (file has {len(self.data)} bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def decode_container(data: bytes, source: str = "<bytes>") -> Bitstream:
    r = _Reader(data, source)
    if r.take(4, "magic") != MAGIC:
        raise FormatError(f"{source}: not a licbench bitstream (bad magic)")
    version, flags, arch_len = r.unpack(">BBB", "header")
    if version > VERSION:
        raise FormatError(
            f"{source}: format version {version} is newer than this licbench reads ({VERSION})"
        )
    if version != VERSION or flags != 0:
        raise FormatError(f"{source}: unsupported format version {version} / flags {flags}")
    if not 1 <= arch_len <= MAX_ARCH_LEN:
        raise FormatError(f"{source}: invalid architecture name length {arch_len}")
    try:
        arch = r.take(arch_len, "architecture name").decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{source}: architecture name is not ASCII") from None
    model_id = r.take(8, "model id")
    height, width, pad_multiple = r.unpack(">IIH", "image size")
    (ndim,) = r.unpack(">B", "latent shape")
    if ndim > MAX_NDIM:
        raise FormatError(f"{source}: {ndim} latent dimensions (at most {MAX_NDIM})")
    shape = tuple(r.unpack(">I", "latent shape")[0] for _ in range(ndim))
    (nstreams,) = r.unpack(">B", "stream count")
    if not 1 <= nstreams <= MAX_STREAMS:
        raise FormatError(f"{source}: {nstreams} streams (expected 1..{MAX_STREAMS})")
    table = [r.unpack(">II", "stream table") for _ in range(nstreams)]
    header_end = r.pos
    (header_crc,) = r.unpack(">I", "header checksum")
    if zlib.crc32(data[:header_end]) != header_crc:
        raise FormatError(f"{source}: header checksum mismatch; the file is damaged")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or pad_multiple == 0:
        raise FormatError(f"{source}: invalid image size {width}x{height} or padding {pad_multiple}")
    payload = len(data) - r.pos
    expected = sum(length for length, _ in table)
    if payload < expected:
        raise FormatError(f"{source}: truncated: {payload} payload bytes, header announces {expected}")
    if payload > expected:
        raise FormatError(f"{source}: {payload - expected} trailing bytes after the last stream")
    streams = []
    for i, (length, crc) in enumerate(table):
        s = r.take(length, f"stream {i}")
        if zlib.crc32(s) != crc:
            raise FormatError(f"{source}: stream {i} checksum mismatch; the file is damaged")
        streams.append(s)
    return Bitstream(arch, model_id, height, width, pad_multiple, shape, tuple(streams))


def write_bitstream(path: str | Path, bs: Bitstream) -> int:
    """Write atomically; return the file size in bytes."""
    data = encode_container(bs)
    write_bytes_atomic(path, data)
    return len(data)


def read_bitstream(path: str | Path) -> Bitstream:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None
    return decode_container(data, str(path))
