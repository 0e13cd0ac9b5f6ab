"""A latent with fixed CDFs: CompressAI's ``EntropyBottleneck`` (the factorized
prior's ``y``, every hyperprior's ``z``, SegPIC's prototype latents).
Symbols in channel, row, column order; the CDFs do not depend on data."""

from __future__ import annotations

import torch

from ..rans import GuardedStream, decode_bottleneck


def compress(eb, latent: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
    """(strings, the dequantized latent the decoder rebuilds)."""
    strings = eb.compress(latent)
    return strings, eb.decompress(strings, latent.shape[-2:])


def decompress(eb, stream: GuardedStream, size) -> torch.Tensor:
    return decode_bottleneck(eb, stream, size)
