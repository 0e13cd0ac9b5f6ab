"""mbt2018's latent (joint autoregressive and hierarchical priors), along a wavefront.

Minnen, Balle, Toderici, NeurIPS 2018, Sec. 2: the Gaussian of the
latent ``y_hat`` at position (i, j) has its mean and scale from the entropy
parameters network, fed with the hyper-decoder's output ``h_s(z_hat)`` at
(i, j) and the context model, a 5x5 masked convolution over the positions
already decoded. The mask keeps 12 taps: rows i-2 and i-1 at columns j-2 to
j+2, and row i at columns j-2 and j-1. Every tap (di, dj) has 3 di + dj < 0,
so position (i, j) depends only on positions of a smaller ``t = 3 i + j``:
all positions of one anti-diagonal t are decoded together, in one batched
call, in W + 3 (H - 1) steps instead of CompressAI's H x W raster steps
(``_compress_ar`` / ``_decompress_ar``). Same weights, same model: only the
order of the computation changes.

Symbol order in the latent stream (docs/bitstream.md): wavefront by
wavefront (t = 0, 1, ...), within a wavefront by increasing row i, and at
each position the M channels in order. The hyper-latent stream is as for the
hyperprior models.

Bit-exact agreement. Everything that decides a symbol or a CDF index (h_s,
the context model, the entropy parameters) runs on the float64 CPU copy
(coding/latent: ``Exact``), and the encoder computes each wavefront with exactly the
decoder's calls: the same batch of positions, the same gather, the same
matrix products. It cannot compute all contexts in one pass, since the means
depend on the latents quantized before them; a pass with another batch
layout would differ in the last bits, and the latent g_s sees would differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.ans import RansEncoder

from ...errors import CheckpointError
from ..rans import GuardedStream, StreamDecoder
from . import FLOAT64, Exact


def scale_indexes(gc, scales: torch.Tensor) -> torch.Tensor:
    """``gc.build_indexes(scales)`` in one call instead of one comparison per
    table entry: the number of table scales (the last excepted) below each
    bounded scale. Always a valid index, NaN and infinities included (what a
    damaged stream can drive the parameters to)."""
    return torch.bucketize(gc.lower_bound_scale(scales), gc.scale_table[:-1]).int()


class WavefrontContext:
    """The entropy parameters of mbt2018, one wavefront at a time.

    Holds the padded latent ``y_hat`` decoded so far (channels last), the
    hyper-decoder's parameters at every position (computed once), and the
    context model's causal taps as one matrix, so that a wavefront's
    parameters are a gather and a few matrix products.
    """

    def __init__(self, exact: Exact, z_hat: torch.Tensor):
        model = exact.model
        if z_hat.size(0) != 1:
            raise ValueError("the mbt2018 coder codes one image at a time")
        cm = model.context_prediction
        kh, kw = cm.kernel_size
        self.pad = cm.padding[0]
        taps = cm.mask[0, 0].nonzero()  # (T, 2): kernel rows and columns the mask keeps
        di, dj = taps[:, 0] - kh // 2, taps[:, 1] - kw // 2
        if not bool((3 * di + dj < 0).all()) or (cm.mask != cm.mask[:1, :1]).any():
            raise CheckpointError(
                "mbt2018 context_prediction.mask is not the causal 5x5 mask (type A) "
                "that wavefront decoding relies on; the checkpoint is damaged"
            )
        self.tap_rows, self.tap_cols = taps[:, 0], taps[:, 1]
        weight = (cm.weight * cm.mask)[:, :, self.tap_rows, self.tap_cols]  # 2M x M x T
        self.context_weight = weight.permute(0, 2, 1).reshape(weight.size(0), -1).contiguous()
        self.context_bias = cm.bias
        self.layers = [
            (m.weight[:, :, 0, 0].contiguous(), m.bias) if isinstance(m, torch.nn.Conv2d) else m
            for m in model.entropy_parameters
        ]
        self.gc = model.gaussian_conditional
        params = exact.call("h_s", z_hat)  # 1 x 2M x H x W
        self.params = params[0].permute(1, 2, 0).contiguous()  # H x W x 2M
        self.height, self.width = params.shape[-2:]
        p = self.pad  # row r, column c of the padded latent hold y_hat's (r - p, c - p)
        self.y_hat = torch.zeros((self.height + 2 * p, self.width + 2 * p, model.M), dtype=FLOAT64)
        # The rANS coder converts its CDF table on every call: pass each row
        # only up to its length (all it reads) rather than the padded table.
        lengths = self.gc.cdf_length.tolist()
        self.cdf = [row[:n] for row, n in zip(self.gc.quantized_cdf.tolist(), lengths)]
        self.cdf_lengths, self.offsets = lengths, self.gc.offset.tolist()

    def wavefronts(self):
        """(rows, cols) of each anti-diagonal t = 3 i + j, rows increasing."""
        h, w = self.height, self.width
        for t in range(w + 3 * (h - 1)):
            rows = torch.arange(max(0, -(-(t - w + 1) // 3)), min(h - 1, t // 3) + 1)
            yield rows, t - 3 * rows

    def entropy_parameters(self, rows: torch.Tensor, cols: torch.Tensor):
        """(scales, means), n x M each, at the positions (rows, cols)."""
        patches = self.y_hat[rows[:, None] + self.tap_rows, cols[:, None] + self.tap_cols]
        ctx = F.linear(patches.reshape(len(rows), -1), self.context_weight, self.context_bias)
        h = torch.cat((self.params[rows, cols], ctx), dim=1)
        for layer in self.layers:
            h = F.linear(h, *layer) if isinstance(layer, tuple) else layer(h)
        return h.chunk(2, 1)

    def put(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
        self.y_hat[rows + self.pad, cols + self.pad] = values

    def latent(self) -> torch.Tensor:
        """The dequantized latent, 1 x M x H x W float64."""
        p = self.pad
        return self.y_hat[p:p + self.height, p:p + self.width].permute(2, 0, 1)[None]


def compress(exact: Exact, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """(the y string, the dequantized latent 1 x M x H x W in float64)."""
    ctx = WavefrontContext(exact, z_hat)
    if y.shape[-2:] != (ctx.height, ctx.width):
        raise ValueError(f"latent {tuple(y.shape[-2:])} is not 4x z_hat's: pad the image to a multiple of 64")
    y = exact(y[0]).permute(1, 2, 0)  # H x W x M
    symbols, indexes = [], []
    for rows, cols in ctx.wavefronts():
        scales, means = ctx.entropy_parameters(rows, cols)
        q = torch.round(y[rows, cols] - means)
        ctx.put(rows, cols, q + means)
        symbols.append(q)
        indexes.append(scale_indexes(ctx.gc, scales))
    y_string = RansEncoder().encode_with_indexes(
        torch.cat(symbols).int().flatten().tolist(), torch.cat(indexes).flatten().tolist(),
        ctx.cdf, ctx.cdf_lengths, ctx.offsets,
    )
    return y_string, ctx.latent()


def decompress(exact: Exact, stream: GuardedStream, z_hat: torch.Tensor) -> torch.Tensor:
    """The dequantized latent, 1 x M x H x W float64; the stream's end checked."""
    ctx = WavefrontContext(exact, z_hat)
    decoder = StreamDecoder(stream)
    for rows, cols in ctx.wavefronts():
        scales, means = ctx.entropy_parameters(rows, cols)
        indexes = scale_indexes(ctx.gc, scales).flatten().tolist()
        q = decoder.decode(indexes, ctx.cdf, ctx.cdf_lengths, ctx.offsets)
        ctx.put(rows, cols, torch.tensor(q, dtype=FLOAT64).view_as(means) + means)
    decoder.finish()
    return ctx.latent()
