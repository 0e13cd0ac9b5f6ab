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
TABLE_ENTRY = ">II"  # a stream's length and CRC-32
CHECKSUM = ">I"  # the header's CRC-32


@dataclass(frozen=True)
class Bitstream:
    arch: str
    model_id: bytes  # 8 bytes
    height: int
    width: int
    pad_multiple: int
    shape: tuple[int, ...]
    streams: tuple[bytes, ...]


@dataclass(frozen=True)
class Layout:
    """Where a valid file's fields lie: byte offsets of the image size (height,
    width, padding), of the stream count, of the header checksum, and the
    streams' lengths (the payload starts after the checksum)."""

    size_at: int
    count_at: int
    checksum_at: int
    lengths: tuple[int, ...]

    @property
    def table_at(self) -> int:
        return self.count_at + 1

    @property
    def payload_at(self) -> int:
        return self.checksum_at + struct.calcsize(CHECKSUM)


def stream_table(streams) -> bytes:
    """The stream count and table of a header."""
    return struct.pack(">B", len(streams) % 256) + b"".join(
        struct.pack(TABLE_ENTRY, len(s), zlib.crc32(s)) for s in streams)


def seal_header(head: bytes) -> bytes:
    """A header followed by its checksum."""
    return bytes(head) + struct.pack(CHECKSUM, zlib.crc32(head))


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
    head += stream_table(bs.streams)
    return seal_header(head) + b"".join(bs.streams)


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
    return _decode(data, source)[0]


def layout(data: bytes, source: str = "<bytes>") -> Layout:
    """The field offsets of a valid file (refused as :func:`decode_container` refuses)."""
    return _decode(data, source)[1]


def _decode(data: bytes, source: str) -> tuple[Bitstream, Layout]:
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
    size_at = r.pos
    height, width, pad_multiple = r.unpack(">IIH", "image size")
    (ndim,) = r.unpack(">B", "latent shape")
    if ndim > MAX_NDIM:
        raise FormatError(f"{source}: {ndim} latent dimensions (at most {MAX_NDIM})")
    shape = tuple(r.unpack(">I", "latent shape")[0] for _ in range(ndim))
    count_at = r.pos
    (nstreams,) = r.unpack(">B", "stream count")
    if not 1 <= nstreams <= MAX_STREAMS:
        raise FormatError(f"{source}: {nstreams} streams (expected 1..{MAX_STREAMS})")
    table = [r.unpack(TABLE_ENTRY, "stream table") for _ in range(nstreams)]
    header_end = r.pos
    (header_crc,) = r.unpack(CHECKSUM, "header checksum")
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
    return (Bitstream(arch, model_id, height, width, pad_multiple, shape, tuple(streams)),
            Layout(size_at, count_at, header_end, tuple(length for length, _ in table)))


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
