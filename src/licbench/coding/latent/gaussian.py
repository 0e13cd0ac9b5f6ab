"""A latent coded with a Gaussian conditional whose scales (and means) are
given, in float64 (coding/latent: the caller computes them with ``Exact``):
the hyperprior models' ``y``. Symbols in channel, row, column order."""

from __future__ import annotations

import torch

from ..rans import GuardedStream, decode_indexed
from . import FLOAT64


def compress(gc, y64: torch.Tensor, scales: torch.Tensor,
             means: torch.Tensor | None) -> tuple[list[bytes], torch.Tensor]:
    """(strings, y_hat in float64) for the exact latent ``y64``."""
    strings = gc.compress(y64, gc.build_indexes(scales), means=means)
    return strings, gc.quantize(y64, "dequantize", means)


def decompress(gc, stream: GuardedStream, scales: torch.Tensor, means: torch.Tensor | None) -> torch.Tensor:
    """y_hat in float64."""
    return decode_indexed(gc, stream, gc.build_indexes(scales), FLOAT64, means)
