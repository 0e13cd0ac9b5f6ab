"""Uneven channel groups (He et al., CVPR 2022; ELIC's g_ch): ``y`` split into
channel groups, group k's side parameters the channel context over the groups
before it (none for the first) then the hyper-synthesis output, each group a
checkerboard latent (latent/checkerboard.py). ``codec`` is a CompressAI
``ChannelGroupsLatentCodec`` of the float64 CPU copy (``Exact``) and
``hyper`` is exact: the channel contexts choose CDFs.

All groups go into one rANS stream, in group order.
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder

from ..rans import GuardedStream, StreamDecoder
from . import checkerboard
from .layers import Convolutions, prepared


def side_parameters(codec, k: int, hyper: torch.Tensor, decoded: list[torch.Tensor]) -> torch.Tensor:
    if k == 0:
        return hyper
    context = prepared(Convolutions, codec.channel_context[f"y{k}"])
    return torch.cat((context(torch.cat(decoded, dim=1)), hyper), dim=1)


def compress(codec, y: torch.Tensor, hyper: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """(the y string, the dequantized latent in float64) for the exact latent ``y``."""
    if y.size(0) != 1:
        raise ValueError("the channel groups coder codes one image at a time")
    encoder, decoded = BufferedRansEncoder(), []
    for k, y_k in enumerate(torch.split(y, codec.groups, dim=1)):
        side = side_parameters(codec, k, hyper, decoded)
        decoded.append(checkerboard.compress(codec.latent_codec[f"y{k}"], y_k, side, encoder))
    return encoder.flush(), torch.cat(decoded, dim=1)


def decompress(codec, stream: GuardedStream, hyper: torch.Tensor) -> torch.Tensor:
    """The dequantized latent, 1 x M x H x W float64; the stream's end checked."""
    decoder, decoded = StreamDecoder(stream), []
    for k in range(len(codec.groups)):
        side = side_parameters(codec, k, hyper, decoded)
        decoded.append(checkerboard.decompress(codec.latent_codec[f"y{k}"], side, decoder))
    decoder.finish()
    return torch.cat(decoded, dim=1)
