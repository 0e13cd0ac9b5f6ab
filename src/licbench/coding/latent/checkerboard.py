"""A checkerboard spatial context (He et al., CVPR 2021; ELIC's g_sp): one
latent in two passes, the anchors (where ``i + j`` is even, CompressAI's
``anchor_parity="even"``) from the side parameters alone (a zero spatial
context), then the others from the side parameters and the context model over
the decoded anchors. ``codec`` is a CompressAI ``CheckerboardLatentCodec`` of
the float64 CPU copy (``Exact``), whose ``entropy_parameters`` is pointwise,
and the side parameters are exact: both passes choose CDFs.

Symbols: the anchors, then the other positions; within each, channel by
channel, positions in raster order. Both passes are whole-map calls, the
same on both sides: the encoder runs exactly the decoder's.
"""

from __future__ import annotations

import torch

from ...errors import CheckpointError
from ..rans import StreamDecoder, entropy_model_tables
from . import FLOAT64


def anchors(codec, height: int, width: int) -> torch.Tensor:
    """H x W booleans: the positions of the first pass."""
    if codec.anchor_parity not in ("even", "odd"):
        raise CheckpointError(f"checkerboard anchor parity {codec.anchor_parity!r} is neither even nor odd")
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (i + j) % 2 == (0 if codec.anchor_parity == "even" else 1)


class Pass:
    """Encoder and decoder, one pass at a time, on the latent decoded so far."""

    def __init__(self, codec, side: torch.Tensor):
        self.codec, self.side = codec, side
        self.gc = codec.latent_codec["y"].gaussian_conditional
        self.tables = entropy_model_tables(self.gc)
        channels = codec.context_prediction.in_channels
        self.y_hat = torch.zeros((1, channels, *side.shape[-2:]), dtype=FLOAT64)
        self.anchor = anchors(codec, *side.shape[-2:])

    def parameters(self, first: bool):
        """(indexes, means, where): the CDF indexes and means (C x n) of the
        pass's positions ``where`` (H x W)."""
        ctx = self.codec.context_prediction(self.y_hat)
        if first:
            ctx = torch.zeros_like(ctx)
        params = self.codec.entropy_parameters(torch.cat((ctx, self.side), dim=1))
        scales, means = self.codec.latent_codec["y"]._chunk(params)
        where = self.anchor if first else ~self.anchor
        return self.gc.build_indexes(scales[0][:, where]), means[0][:, where], where

    def put(self, where: torch.Tensor, values: torch.Tensor) -> None:
        self.y_hat[0][:, where] = values


def compress(codec, y: torch.Tensor, side: torch.Tensor, encoder) -> torch.Tensor:
    """Code the exact latent ``y`` (1 x C x H x W) with the BufferedRansEncoder
    ``encoder``; return the dequantized latent (float64)."""
    p = Pass(codec, side)
    for first in (True, False):
        indexes, means, where = p.parameters(first)
        q = torch.round(y[0][:, where] - means)
        p.put(where, q + means)
        encoder.encode_with_indexes(q.int().flatten().tolist(), indexes.flatten().tolist(), *p.tables)
    return p.y_hat


def decompress(codec, side: torch.Tensor, decoder: StreamDecoder) -> torch.Tensor:
    """The dequantized latent (1 x C x H x W, float64), read from ``decoder``."""
    p = Pass(codec, side)
    for first in (True, False):
        indexes, means, where = p.parameters(first)
        q = decoder.decode(indexes.flatten().tolist(), *p.tables)
        p.put(where, torch.tensor(q, dtype=FLOAT64).view_as(means) + means)
    return p.y_hat
