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
from compressai.ans import RansEncoder

from ...errors import CheckpointError
from ..rans import GuardedStream, StreamDecoder, entropy_model_tables
from . import FLOAT64, Exact
from .layers import MaskedContext, Pointwise, prepared, scale_indexes


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
        self.context = prepared(MaskedContext, model.context_prediction, "mbt2018 context_prediction")
        di, dj = self.context.offsets
        if not bool((3 * di + dj < 0).all()):
            raise CheckpointError(
                "mbt2018 context_prediction.mask is not the causal 5x5 mask (type A) "
                "that wavefront decoding relies on; the checkpoint is damaged"
            )
        self.pad = self.context.pad
        self.entropy_parameters = prepared(Pointwise, model.entropy_parameters, "mbt2018 entropy_parameters")
        self.gc = model.gaussian_conditional
        params = exact.stack("h_s", z_hat)  # 1 x 2M x H x W
        self.params = params[0].permute(1, 2, 0).contiguous()  # H x W x 2M
        self.height, self.width = params.shape[-2:]
        p = self.pad  # row r, column c of the padded latent hold y_hat's (r - p, c - p)
        self.y_hat = torch.zeros((self.height + 2 * p, self.width + 2 * p, model.M), dtype=FLOAT64)
        self.tables = prepared(entropy_model_tables, self.gc)

    def wavefronts(self):
        """(rows, cols) of each anti-diagonal t = 3 i + j, rows increasing."""
        h, w = self.height, self.width
        for t in range(w + 3 * (h - 1)):
            rows = torch.arange(max(0, -(-(t - w + 1) // 3)), min(h - 1, t // 3) + 1)
            yield rows, t - 3 * rows

    def parameters(self, rows: torch.Tensor, cols: torch.Tensor):
        """(scales, means), n x M each, at the positions (rows, cols)."""
        ctx = self.context(self.y_hat, rows, cols)
        return self.entropy_parameters(torch.cat((self.params[rows, cols], ctx), dim=1)).chunk(2, 1)

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
        scales, means = ctx.parameters(rows, cols)
        q = torch.round(y[rows, cols] - means)
        ctx.put(rows, cols, q + means)
        symbols.append(q)
        indexes.append(scale_indexes(ctx.gc, scales))
    y_string = RansEncoder().encode_with_indexes(
        torch.cat(symbols).int().flatten().tolist(), torch.cat(indexes).flatten().tolist(),
        *ctx.tables,
    )
    return y_string, ctx.latent()


def decompress(exact: Exact, stream: GuardedStream, z_hat: torch.Tensor) -> torch.Tensor:
    """The dequantized latent, 1 x M x H x W float64; the stream's end checked."""
    ctx = WavefrontContext(exact, z_hat)
    decoder = StreamDecoder(stream)
    for rows, cols in ctx.wavefronts():
        scales, means = ctx.parameters(rows, cols)
        indexes = scale_indexes(ctx.gc, scales).flatten().tolist()
        q = decoder.decode(indexes, *ctx.tables)
        ctx.put(rows, cols, torch.tensor(q, dtype=FLOAT64).view_as(means) + means)
    decoder.finish()
    return ctx.latent()
