"""The wavefront coding style (mbt2018): ``z`` factorized, then ``y`` along
anti-diagonal wavefronts (coding/latent/wavefront.py); two streams, ``y``
then ``z``."""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .latent import Exact, factorized, transforms_input, wavefront


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model = ckpt.model
    y = model.g_a(x)
    z = model.h_a(y)
    z_strings, z_hat = factorized.compress(model.entropy_bottleneck, z)
    y_string, y_hat = wavefront.compress(Exact(ckpt), y, z_hat)
    return {"strings": [[y_string], z_strings], "shape": z.shape[-2:], "y_hat": transforms_input(y_hat, model)}


def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model = ckpt.model
    z_hat = factorized.decompress(model.entropy_bottleneck, streams[1], shape)
    y_hat = wavefront.decompress(Exact(ckpt), streams[0], z_hat)
    y_hat = transforms_input(y_hat, model)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
