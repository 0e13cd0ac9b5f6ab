"""CompressAI's rANS decoder, each stream guarded and its end checked.

CompressAI's ``RansDecoder`` (Rans64: 64-bit state, 32-bit words, 16-bit
probabilities) tells neither how far it read nor its state. Both are known
for a stream its encoder wrote: the encoder starts from the state
``RANS_L = 2**31`` and ends by writing its state, so a decoder that has taken
every symbol is back at ``RANS_L`` exactly on the stream's last word. A
stream with bytes left over, or one that is garbage under a valid CRC, ends
elsewhere (or in another state) with overwhelming probability.

So each stream is followed by 16 check bytes, a BLAKE2b digest of the stream
itself, then zeros (the guard against reading past the buffer, see
:func:`guard`). Once the symbols are decoded, the decoder decodes four probe
symbols more, with CDFs of our own that map its state and the next words to
the output (an identity CDF, and one that multiplies the state's upper half
into the lower so that no bit of the state stays hidden). What a decoder at
``RANS_L`` on the first check word outputs is computed here, in Python, from
the digest; anything else is refused. Junk appended to a stream (its digest
changes with it) or missing bytes make the probes read other words, and a
decoder in another state outputs other values: the check fails but by a
chance of the order of 2**-32 (the probes compare 64 bits).
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right
from dataclasses import dataclass

import torch
from compressai.ans import RansDecoder

from ..errors import FormatError

RANS_L = 1 << 31  # Rans64's lower bound: the encoder's first state, a decoder's last
PRECISION = 16
BYPASS_BITS = 4  # CompressAI's escape: raw values in 4-bit groups
CHECK_BYTES = 16

# Probe CDFs (each strictly increasing, 0 to 2**16; the last symbol is
# CompressAI's escape): 2**16 symbols of frequency 1, and three of
# frequencies 1, 2**16 - 2 and 1.
PROBE_CDFS = [list(range((1 << PRECISION) + 1)), [0, 1, (1 << PRECISION) - 1, 1 << PRECISION]]
PROBE_LENGTHS = [len(c) for c in PROBE_CDFS]
PROBE_OFFSETS = [0, 0]
PROBES = [0, 1, 0, 0]


@dataclass(frozen=True)
class GuardedStream:
    """A stream as the decoder reads it: ``data`` is the stream, its check
    bytes and zeros; ``expected`` the probe symbols a decoder that consumed
    exactly the stream outputs; ``label`` names it in errors (file, stream)."""

    data: bytes
    expected: tuple[int, ...]
    label: str


def _simulate(state: int, words: list[int], indexes: list[int]) -> list[int]:
    """CompressAI's ``decode_stream`` of the probe symbols from ``state``, with
    ``words`` the words that follow (zeros after them), in Python."""
    words = iter(words)
    mask = (1 << 64) - 1

    def renormalize(x: int) -> int:
        return ((x << 32) | next(words, 0)) & mask if x < RANS_L else x

    out = []
    for i in indexes:
        cdf, escape = PROBE_CDFS[i], PROBE_LENGTHS[i] - 2
        cum = state & ((1 << PRECISION) - 1)
        s = bisect_right(cdf, cum) - 1
        state = renormalize((cdf[s + 1] - cdf[s]) * (state >> PRECISION) + cum - cdf[s])
        if s == escape:
            raw, groups, val = 0, 0, None
            while val is None or val == (1 << BYPASS_BITS) - 1:
                val = state & ((1 << BYPASS_BITS) - 1)
                state = renormalize(state >> BYPASS_BITS)
                groups += val
            for j in range(groups):
                val = state & ((1 << BYPASS_BITS) - 1)
                state = renormalize(state >> BYPASS_BITS)
                raw |= val << (j * BYPASS_BITS)
            s = -(raw >> 1) - 1 if raw & 1 else (raw >> 1) + escape
        out.append(s + PROBE_OFFSETS[i])
    return out


def guard(stream: bytes, spare_words: int, label: str) -> GuardedStream:
    """``stream`` followed by its check bytes and ``spare_words`` zero words.

    The decoder reads 32-bit words with no end check: a damaged or crafted
    stream makes it read past the end of its buffer. Past the real data it
    reads the check bytes, then zeros, and consumes at most one word per
    symbol; only its escape-code loop could read more, so a margin of two
    words per symbol plus 4 KiB (what the caller passes) is wide, not a proof
    (bench/fuzz_bitstreams.py tests it).
    """
    check = hashlib.blake2b(stream, digest_size=CHECK_BYTES).digest()
    words = list(struct.unpack(f"<{CHECK_BYTES // 4}I", check))
    expected = tuple(_simulate(RANS_L, words, PROBES))
    return GuardedStream(stream + check + bytes(4 * spare_words), expected, label)


class StreamDecoder:
    """One guarded stream through CompressAI's ``RansDecoder``: ``decode`` as
    often as the coder needs, then ``finish`` checks that the stream ended there."""

    def __init__(self, stream: GuardedStream):
        self.stream = stream
        self._decoder = RansDecoder()
        self._decoder.set_stream(stream.data)

    def decode(self, indexes: list[int], cdfs: list, lengths: list[int], offsets: list[int]) -> list[int]:
        return self._decoder.decode_stream(indexes, cdfs, lengths, offsets)

    def finish(self) -> None:
        got = self._decoder.decode_stream(PROBES, PROBE_CDFS, PROBE_LENGTHS, PROBE_OFFSETS)
        if tuple(got) != self.stream.expected:
            raise FormatError(f"{self.stream.label} does not end where its symbols do "
                              "(bytes left over or missing); the file is damaged")


def entropy_model_tables(em) -> tuple[list, list[int], list[int]]:
    """An entropy model's (CDFs, CDF lengths, offsets), as its coder takes them.

    The rANS coder converts the CDF table on every call and reads each row only
    up to its length: each row is cut there (CompressAI pads them all to the
    longest), which makes the call's conversion the smaller."""
    lengths = em._cdf_length.reshape(-1).int().tolist()
    cdfs = [row[:n] for row, n in zip(em._quantized_cdf.tolist(), lengths)]
    return cdfs, lengths, em._offset.reshape(-1).int().tolist()


def decode_indexed(em, stream: GuardedStream, indexes: torch.Tensor, dtype: torch.dtype = torch.float,
                   means: torch.Tensor | None = None) -> torch.Tensor:
    """CompressAI's ``EntropyModel.decompress`` for one stream (a batch of one),
    the end of the stream checked."""
    decoder = StreamDecoder(stream)
    values = decoder.decode(indexes.reshape(-1).int().tolist(), *entropy_model_tables(em))
    decoder.finish()
    cdf = em._quantized_cdf
    outputs = torch.tensor(values, device=cdf.device, dtype=cdf.dtype).reshape(indexes.size())
    return em.dequantize(outputs, means, dtype)


def decode_bottleneck(eb, stream: GuardedStream, size) -> torch.Tensor:
    """CompressAI's ``EntropyBottleneck.decompress`` for one stream, its end checked."""
    output_size = (1, eb._quantized_cdf.size(0), *size)
    indexes = eb._build_indexes(output_size).to(eb._quantized_cdf.device)
    medians = eb._extend_ndims(eb._get_medians().detach(), len(size))
    medians = medians.expand(1, *([-1] * (len(size) + 1)))
    return decode_indexed(eb, stream, indexes, medians.dtype, medians)
