"""The factorized and the (mean-)scale hyperprior coding styles.

Each style module offers ``compress(ckpt, x) -> dict(strings, shape, y_hat)``
and ``decompress(ckpt, streams, shape) -> dict(x_hat, y_hat)``; ``y_hat`` is
the quantized latent fed to ``g_s`` (float32, on the model's device), so a
test can check that the decoder rebuilt exactly what the encoder coded.

The hyperprior: ``z`` factorized, ``y`` a Gaussian conditional whose
parameters come from ``h_s`` alone (``Exact``, coding/latent). Two streams,
``y`` then ``z``; the factorized prior codes ``y`` alone.
"""

from __future__ import annotations

import torch

from ..models import Checkpoint, get_architecture
from .latent import Exact, factorized, gaussian, transforms_input


def options(ckpt: Checkpoint) -> dict:
    """The architecture's hyperprior options: ``means`` (h_s also predicts the
    means: mean-scale) and ``abs_y`` (h_a takes |y|)."""
    return get_architecture(ckpt.arch).coder_options


def max_symbols(config: dict, height: int, width: int) -> int:
    """At most the symbols of one stream of a ``height x width`` image: ``y``
    at 1/16 with M channels, or ``z`` at 1/64 with N (counted together)."""
    cells = -(-height // 16) * -(-width // 16)
    return cells * (int(config.get("N", 0)) + int(config.get("M", 0)) or 1024)


def entropy_parameters(ckpt: Checkpoint, z_hat: torch.Tensor, exact: Exact | None = None):
    """(scales, means or None) from z_hat: h_s in float64 on the CPU."""
    params = (exact or Exact(ckpt)).stack("h_s", z_hat)
    if options(ckpt)["means"]:
        scales, means = params.chunk(2, 1)
        return scales, means
    return params, None


def hyper_compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model, exact = ckpt.model, Exact(ckpt)
    y = model.g_a(x)
    z = model.h_a(torch.abs(y) if options(ckpt)["abs_y"] else y)
    z_strings, z_hat = factorized.compress(model.entropy_bottleneck, z)
    scales, means = entropy_parameters(ckpt, z_hat, exact)
    y_strings, y_hat = gaussian.compress(model.gaussian_conditional, exact(y), scales, means)
    return {"strings": [y_strings, z_strings], "shape": z.shape[-2:], "y_hat": transforms_input(y_hat, model)}


def hyper_decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model = ckpt.model
    z_hat = factorized.decompress(model.entropy_bottleneck, streams[1], shape)
    scales, means = entropy_parameters(ckpt, z_hat)
    y_hat = gaussian.decompress(model.gaussian_conditional, streams[0], scales, means)
    y_hat = transforms_input(y_hat, model)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}


def factorized_compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    model = ckpt.model
    y = model.g_a(x)
    strings, y_hat = factorized.compress(model.entropy_bottleneck, y)
    return {"strings": [strings], "shape": y.shape[-2:], "y_hat": y_hat}


def factorized_decompress(ckpt: Checkpoint, streams: list, shape: torch.Size) -> dict:
    model = ckpt.model
    y_hat = transforms_input(factorized.decompress(model.entropy_bottleneck, streams[0], shape), model)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1), "y_hat": y_hat}
