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


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
    params = m64.hyper_synthesis(z_hat.to("cpu", torch.float64), y.shape[-2:])
    y_strings, y_hat = m64.channel_conditional.compress(y.to("cpu", torch.float64), *params)
    return {"strings": [y_strings, z_strings], "shape": z.shape[-2:], "y_hat": y_hat.to(x.device, torch.float32)}


def decompress(ckpt: Checkpoint, strings: list, shape: torch.Size) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    device = next(model.parameters()).device
    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    y_size = (4 * z_hat.size(2), 4 * z_hat.size(3))
    params = m64.hyper_synthesis(z_hat.to("cpu", torch.float64), y_size)
    y_hat = m64.channel_conditional.decompress(strings[0], *params).to(device, torch.float32)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
