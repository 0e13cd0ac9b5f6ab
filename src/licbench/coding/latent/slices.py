"""The channel-conditional slices (Minnen & Singh 2020; ChARM, WACNN, SegPIC):
``y`` split along channels, each slice's mean and scale from the
hyper-synthesis features and the slices before it, latent residual prediction
added to each decoded slice (models/channelwise.py's ``ChannelConditional``).

Every slice goes into one rANS stream, in slice order, as in WACNN's reference
code; within a slice, symbols in channel, row, column order. ``cc`` is the
``ChannelConditional`` of the float64 CPU copy (``Exact``) and the features
are exact: the slices' transforms choose the CDFs.
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder

from ..rans import GuardedStream, StreamDecoder, entropy_model_tables
from .layers import prepared


def compress(cc, y: torch.Tensor, latent_means: torch.Tensor,
             latent_scales: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
    """One image's string (in a list, as CompressAI's) and the y_hat the decoder rebuilds."""
    gc = cc.gaussian_conditional
    symbols, indexes, y_hat_slices = [], [], []
    for i, y_slice in enumerate(y.chunk(cc.num_slices, dim=1)):
        mu, scale, mean_support = cc.slice_parameters(i, latent_means, latent_scales, y_hat_slices)
        indexes.append(gc.build_indexes(scale).flatten(1))
        y_q = gc.quantize(y_slice, "symbols", mu)
        symbols.append(y_q.flatten(1))
        y_hat_slice = gc.dequantize(y_q, mu)
        y_hat_slices.append(y_hat_slice + cc.residual_prediction(i, mean_support, y_hat_slice))
    if y.size(0) != 1:
        raise ValueError("the slices coder codes one image at a time")
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(torch.cat(symbols, dim=1)[0].tolist(), torch.cat(indexes, dim=1)[0].tolist(),
                                *prepared(entropy_model_tables, gc))
    return [encoder.flush()], torch.cat(y_hat_slices, dim=1)


def decompress(cc, stream: GuardedStream, latent_means: torch.Tensor,
               latent_scales: torch.Tensor) -> torch.Tensor:
    """y_hat from the stream, slice by slice; the stream's end checked. y has
    the spatial size of the hyper-synthesis features."""
    gc = cc.gaussian_conditional
    tables = prepared(entropy_model_tables, gc)
    decoder = StreamDecoder(stream)
    y_hat_slices = []
    for i in range(cc.num_slices):
        mu, scale, mean_support = cc.slice_parameters(i, latent_means, latent_scales, y_hat_slices)
        index = gc.build_indexes(scale)
        y_q = torch.tensor(decoder.decode(index.reshape(-1).tolist(), *tables),
                           dtype=torch.int32).reshape(mu.shape).to(mu.device)
        y_hat_slice = gc.dequantize(y_q, mu)
        y_hat_slices.append(y_hat_slice + cc.residual_prediction(i, mean_support, y_hat_slice))
    decoder.finish()
    return torch.cat(y_hat_slices, dim=1)
