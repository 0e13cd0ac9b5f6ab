"""A checkerboard spatial context (He et al., CVPR 2021; ELIC's g_sp): one
latent in two passes, the anchors (where ``i + j`` is even, CompressAI's
``anchor_parity="even"``) from the side parameters alone (a zero spatial
context), then the others from the side parameters and the context model over
the decoded anchors. ``codec`` is a CompressAI ``CheckerboardLatentCodec`` of
the float64 CPU copy (``Exact``) and the side parameters are exact: both
passes choose CDFs.

Each pass computes the parameters at its own positions only
(coding/latent/layers.py): the entropy parameters are pointwise, and the
context model, a masked 5x5 convolution, reads the 12 taps of the other
parity, the anchors. The anchors' pass needs no context model at all (its
context is zero); the second pass computes it at half the positions from
12 of the 25 taps. The encoder and the decoder make the same calls.

Symbols: the anchors, then the other positions; within each, channel by
channel, positions in raster order.
"""

from __future__ import annotations

import torch

from ...errors import CheckpointError
from ..rans import StreamDecoder, entropy_model_tables
from . import FLOAT64
from .layers import MaskedContext, Pointwise, prepared, scale_indexes


def anchors(codec, height: int, width: int) -> torch.Tensor:
    """H x W booleans: the positions of the first pass."""
    if codec.anchor_parity not in ("even", "odd"):
        raise CheckpointError(f"checkerboard anchor parity {codec.anchor_parity!r} is neither even nor odd")
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (i + j) % 2 == (0 if codec.anchor_parity == "even" else 1)


class Pass:
    """Encoder and decoder, one pass at a time, on the latent decoded so far
    (``y_hat``: padded, channels last)."""

    def __init__(self, codec, side: torch.Tensor):
        self.context = prepared(MaskedContext, codec.context_prediction, "checkerboard context_prediction")
        di, dj = self.context.offsets
        if not bool(((di + dj) % 2 == 1).all()):
            raise CheckpointError("checkerboard context_prediction.mask reads positions of its own pass; "
                                  "the checkpoint is damaged")
        self.entropy_parameters = prepared(Pointwise, codec.entropy_parameters, "checkerboard entropy_parameters")
        self.chunk = codec.latent_codec["y"]._chunk
        self.gc = codec.latent_codec["y"].gaussian_conditional
        self.tables = prepared(entropy_model_tables, self.gc)
        height, width = side.shape[-2:]
        self.side = side[0].permute(1, 2, 0)  # H x W x C
        p = self.context.pad
        self.y_hat = torch.zeros((height + 2 * p, width + 2 * p, self.context.in_channels), dtype=FLOAT64)
        anchor = anchors(codec, height, width)
        self.positions = [anchor.nonzero().unbind(1), (~anchor).nonzero().unbind(1)]  # raster order
        self.context_channels = self.context.out_channels

    def parameters(self, first: bool):
        """(indexes, means, rows, cols): the CDF indexes and means (C x n) at
        the pass's positions (rows, cols)."""
        rows, cols = self.positions[0 if first else 1]
        if first:  # a zero context: its columns of the first product are skipped
            params = self.entropy_parameters(self.side[rows, cols], zeros=self.context_channels)
        else:
            ctx = self.context(self.y_hat, rows, cols)
            params = self.entropy_parameters(torch.cat((ctx, self.side[rows, cols]), dim=1))
        scales, means = self.chunk(params.T[None])
        return scale_indexes(self.gc, scales[0]), means[0], rows, cols

    def put(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        """Place the C x n dequantized values of the pass's positions."""
        p = self.context.pad
        self.y_hat[rows + p, cols + p] = values.T

    def latent(self) -> torch.Tensor:
        """The dequantized latent, 1 x C x H x W float64."""
        p = self.context.pad
        return self.y_hat[p:self.y_hat.size(0) - p, p:self.y_hat.size(1) - p].permute(2, 0, 1)[None]


def compress(codec, y: torch.Tensor, side: torch.Tensor, encoder) -> torch.Tensor:
    """Code the exact latent ``y`` (1 x C x H x W) with the BufferedRansEncoder
    ``encoder``; return the dequantized latent (float64)."""
    p = Pass(codec, side)
    for first in (True, False):
        indexes, means, rows, cols = p.parameters(first)
        q = torch.round(y[0][:, rows, cols] - means)
        p.put(rows, cols, q + means)
        encoder.encode_with_indexes(q.int().flatten().tolist(), indexes.flatten().tolist(), *p.tables)
    return p.latent()


def decompress(codec, side: torch.Tensor, decoder: StreamDecoder) -> torch.Tensor:
    """The dequantized latent (1 x C x H x W, float64), read from ``decoder``."""
    p = Pass(codec, side)
    for first in (True, False):
        indexes, means, rows, cols = p.parameters(first)
        q = decoder.decode(indexes.flatten().tolist(), *p.tables)
        p.put(rows, cols, torch.tensor(q, dtype=FLOAT64).view_as(means) + means)
    return p.latent()
