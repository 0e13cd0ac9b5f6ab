"""The space-channel context coding style (ELIC): ``z`` factorized, then ``y``
in channel groups, each with a checkerboard spatial context
(coding/latent/groups.py, latent/checkerboard.py); two streams, ``y`` then
``z``. The hyper-synthesis, the channel contexts, the spatial contexts and the
entropy parameters run on the float64 CPU copy (``Exact``)."""

from __future__ import annotations

import torch

from ..models import Checkpoint
from .latent import Exact, factorized, groups, transforms_input


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, exact = ckpt.model, Exact(ckpt)
    hyper = model.latent_codec["hyper"]
    y = model.g_a(x)
    z = hyper.h_a(y)
    z_strings, z_hat = factorized.compress(hyper.entropy_bottleneck, z)
    params = exact.stack("latent_codec.hyper.h_s", z_hat)
    if params.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"latent {tuple(y.shape[-2:])} is not 4x z_hat's: pad the image to a multiple of 64")
    y_string, y_hat = groups.compress(exact.module("latent_codec.y"), exact(y), params)
    return {"strings": [[y_string], z_strings], "shape": z.shape[-2:], "y_hat": transforms_input(y_hat, model)}


def decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model, exact = ckpt.model, Exact(ckpt)
    z_hat = factorized.decompress(model.latent_codec["hyper"].entropy_bottleneck, streams[1], shape)
    params = exact.stack("latent_codec.hyper.h_s", z_hat)
    y_hat = groups.decompress(exact.module("latent_codec.y"), streams[0], params)
    y_hat = transforms_input(y_hat, model)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
