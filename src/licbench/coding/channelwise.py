"""The channel-wise coding style (ChARM, WACNN): ``z`` factorized, then every
slice of ``y`` in one stream (coding/latent/slices.py); two streams, ``y``
then ``z``. The hyper-synthesis ``h_mean_s``/``h_scale_s`` and the slices'
transforms run through ``Exact`` (coding/latent); the analysis and the
synthesis on the model's device.
"""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .latent import Exact, factorized, slices, transforms_input


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, exact = ckpt.model, Exact(ckpt)
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings, z_hat = factorized.compress(model.entropy_bottleneck, z)
    params = exact.call("hyper_synthesis", z_hat, y.shape[-2:])
    y_strings, y_hat = slices.compress(exact.model.channel_conditional, exact(y), *params)
    return {"strings": [y_strings, z_strings], "shape": z.shape[-2:], "y_hat": transforms_input(y_hat, model)}


def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model, exact = ckpt.model, Exact(ckpt)
    z_hat = factorized.decompress(model.entropy_bottleneck, streams[1], shape)
    y_size = (4 * z_hat.size(2), 4 * z_hat.size(3))
    params = exact.call("hyper_synthesis", z_hat, y_size)
    y_hat = slices.decompress(exact.model.channel_conditional, streams[0], *params)
    y_hat = transforms_input(y_hat, model)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
