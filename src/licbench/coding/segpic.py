"""Coder for SegPIC: four streams, ``y`` (every slice), ``z``, then the level-1
and level-2 prototype latents of the uniform grid (no mask is coded).

The model's own ``compress`` does the encoder's work, ``decompress`` here the
decoder's; what decides the CDF
indexes of ``y`` (the level-2 prototypes' synthesis ``g_s``, h_mean_s and
h_scale_s, the entropy model's two RATs, every slice's mean, scale and LRP
transforms) is computed by the float64 CPU copy of the model on both sides
(see coding/codec.py). ``z`` and the prototype latents have fixed CDFs. The
level-1 prototypes steer only the encoder's analysis and the decoder's
synthesis, which run on the model's device.
"""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .channelwise import decode_slices
from .hyper import max_symbols as hyperprior_symbols
from .rans import decode_bottleneck


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    return ckpt.model.compress(x, entropy=ckpt.float64_cpu())


def max_symbols(config: dict, height: int, width: int) -> int:
    """At most the symbols of one stream: as for a hyperprior, plus the
    prototype latents, grid x grid cells of N/2 channels at each level."""
    return hyperprior_symbols(config, height, width) + int(config["grid"]) ** 2 * int(config["N"])


@torch.no_grad()
def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    """The image (and ``y_hat``) from the four guarded streams and ``z``'s shape."""
    model, m64 = ckpt.model, ckpt.float64_cpu()
    param, device = next(m64.parameters()), next(model.parameters()).device
    grid = (model.grid, model.grid)
    z_hat = decode_bottleneck(model.entropy_bottleneck, streams[1], shape)
    latents1 = decode_bottleneck(model.prototype_coder1.entropy_bottleneck, streams[2], grid)
    latents2 = decode_bottleneck(model.prototype_coder2.entropy_bottleneck, streams[3], grid)
    y_size = (4 * z_hat.size(2), 4 * z_hat.size(3))
    expanded2 = m64.expand_grid(m64.prototype_coder2.g_s(latents2.to(param)), y_size)
    params = m64.entropy_parameters(z_hat.to(param), y_size, expanded2)
    y_hat = decode_slices(m64.channel_conditional, streams[0], *params).to(device, torch.float32)

    features = model.g_s0(y_hat)
    prototypes1 = model.prototype_coder1.g_s(latents1)
    x_hat = model.g_s1(model.rat_decoder(features, model.expand_grid(prototypes1, features.shape[-2:])))
    return {"x_hat": x_hat.clamp_(0, 1), "y_hat": y_hat}
