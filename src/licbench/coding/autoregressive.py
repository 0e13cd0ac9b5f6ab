"""Coder for mbt2018 (joint autoregressive and hierarchical priors).

CompressAI's context loop (5x5 masked convolution, y at 4x z's size), run by
the float64 CPU copy of the model on both sides (see coding/codec.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import Checkpoint

KERNEL, PAD, SCALE = 5, 2, 4


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
    params = m64.h_s(z_hat.to("cpu", torch.float64))
    y_hat = F.pad(y.to("cpu", torch.float64), (PAD,) * 4)
    height, width = z_hat.size(2) * SCALE, z_hat.size(3) * SCALE
    y_string = m64._compress_ar(y_hat, params, height, width, KERNEL, PAD)
    # _compress_ar wrote the dequantized latent into y_hat: the decoder's latent.
    latent = y_hat[:, :, PAD:-PAD, PAD:-PAD].to(x.device, torch.float32)
    return {"strings": [[y_string], z_strings], "shape": z.shape[-2:], "y_hat": latent}


def decompress(ckpt: Checkpoint, strings: list, shape: torch.Size) -> dict:
    model, m64 = ckpt.model, ckpt.float64_cpu()
    device = next(model.parameters()).device
    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    params = m64.h_s(z_hat.to("cpu", torch.float64))
    height, width = z_hat.size(2) * SCALE, z_hat.size(3) * SCALE
    y_hat = torch.zeros((1, m64.M, height + 2 * PAD, width + 2 * PAD), dtype=torch.float64)
    m64._decompress_ar(strings[0][0], y_hat, params, height, width, KERNEL, PAD)
    y_hat = y_hat[:, :, PAD:-PAD, PAD:-PAD].to(device, torch.float32)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
