"""The prototypes coding style (SegPIC): four streams, ``y`` (every slice),
``z``, then the level-1 and level-2 prototype latents of the uniform grid (no
mask is coded).

``z`` and the prototype latents have fixed CDFs (coding/latent/factorized.py).
What decides the CDF indexes of ``y`` runs through ``Exact`` (coding/latent):
the level-2 prototypes' synthesis ``g_s``, h_mean_s and h_scale_s, the entropy
model's two RATs, every slice's mean, scale and LRP transforms. The level-1
prototypes steer only the encoder's analysis and the decoder's synthesis,
which run on the model's device.
"""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .hyper import max_symbols as hyperprior_symbols
from .latent import Exact, factorized, slices, transforms_input


def max_symbols(config: dict, height: int, width: int) -> int:
    """At most the symbols of one stream: as for a hyperprior, plus the
    prototype latents, grid x grid cells of N/2 channels at each level."""
    return hyperprior_symbols(config, height, width) + int(config["grid"]) ** 2 * int(config["N"])


@torch.no_grad()
def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    """The four streams of ``x``; ``shape`` is ``z``'s; ``y_hat`` the decoder's."""
    model, exact = ckpt.model, Exact(ckpt)
    m64 = exact.model
    y1 = model.g_a1(x)
    coder1 = model.prototype_coder1
    strings1, latents1 = factorized.compress(coder1.entropy_bottleneck, coder1.g_a(model.grid_pool(y1)))
    y = model.g_a2(model.rat_encoder(y1, model.expand_grid(coder1.g_s(latents1), y1.shape[-2:])))

    coder2 = model.prototype_coder2
    strings2, latents2 = factorized.compress(coder2.entropy_bottleneck, coder2.g_a(model.grid_pool(y)))
    expanded2 = m64.expand_grid(m64.prototype_coder2.g_s(exact(latents2)), y.shape[-2:])
    z = model.h_a(model.rat_hyper_encoder(y, expanded2.to(y)))
    z_strings, z_hat = factorized.compress(model.entropy_bottleneck, z)

    params = m64.entropy_parameters(exact(z_hat), y.shape[-2:], expanded2)
    y_strings, y_hat = slices.compress(m64.channel_conditional, exact(y), *params)
    return {"strings": [y_strings, z_strings, strings1, strings2], "shape": z.shape[-2:],
            "y_hat": transforms_input(y_hat, model)}


@torch.no_grad()
def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    """The image (and ``y_hat``) from the four guarded streams and ``z``'s shape."""
    model, exact = ckpt.model, Exact(ckpt)
    m64 = exact.model
    grid = (model.grid, model.grid)
    z_hat = factorized.decompress(model.entropy_bottleneck, streams[1], shape)
    latents1 = factorized.decompress(model.prototype_coder1.entropy_bottleneck, streams[2], grid)
    latents2 = factorized.decompress(model.prototype_coder2.entropy_bottleneck, streams[3], grid)
    y_size = (4 * z_hat.size(2), 4 * z_hat.size(3))
    expanded2 = m64.expand_grid(m64.prototype_coder2.g_s(exact(latents2)), y_size)
    params = m64.entropy_parameters(exact(z_hat), y_size, expanded2)
    y_hat = slices.decompress(m64.channel_conditional, streams[0], *params)
    y_hat = transforms_input(y_hat, model)

    features = model.g_s0(y_hat)
    prototypes1 = model.prototype_coder1.g_s(latents1)
    x_hat = model.g_s1(model.rat_decoder(features, model.expand_grid(prototypes1, features.shape[-2:])))
    return {"x_hat": x_hat.clamp_(0, 1), "y_hat": y_hat}
