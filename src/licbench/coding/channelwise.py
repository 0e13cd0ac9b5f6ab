"""Coder for the channel-wise autoregressive models (ChARM, WACNN).

Two streams: every slice of ``y`` in one rANS stream, then ``z``. What decides
the CDF indexes (the hyper-synthesis ``h_mean_s``/``h_scale_s``, each slice's
mean, scale and LRP transforms, and the decoded slices they take) runs in
float64 on the CPU on both sides, in the same order and shapes (see
coding/codec.py); the analysis and the synthesis run on the model's device.
"""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .rans import GuardedStream, StreamDecoder, decode_bottleneck


@torch.no_grad()
def decode_slices(cc, stream: GuardedStream, latent_means: torch.Tensor,
                  latent_scales: torch.Tensor) -> torch.Tensor:
    """y_hat of one image from its stream, slice by slice, the inverse of
    ``ChannelConditional.compress`` (models/channelwise.py); the stream's end is
    checked. y has the spatial size of the hyper-synthesis features."""
    gc = cc.gaussian_conditional
    tables = cc.tables()
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


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
    params = m64.hyper_synthesis(z_hat.to("cpu", torch.float64), y.shape[-2:])
    y_strings, y_hat = m64.channel_conditional.compress(y.to("cpu", torch.float64), *params)
    return {"strings": [y_strings, z_strings], "shape": z.shape[-2:], "y_hat": y_hat.to(x.device, torch.float32)}


def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    device = next(model.parameters()).device
    z_hat = decode_bottleneck(model.entropy_bottleneck, streams[1], shape)
    y_size = (4 * z_hat.size(2), 4 * z_hat.size(3))
    params = m64.hyper_synthesis(z_hat.to("cpu", torch.float64), y_size)
    y_hat = decode_slices(m64.channel_conditional, streams[0], *params).to(device, torch.float32)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
