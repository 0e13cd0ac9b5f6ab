"""Coder for SegPIC: four streams, ``y`` (every slice), ``z``, then the level-1
and level-2 prototype latents of the uniform grid (no mask is coded).

The model's own ``compress``/``decompress`` do the work; what decides the CDF
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


def compress(ckpt: Checkpoint, x: torch.Tensor) -> dict:
    return ckpt.model.compress(x, entropy=ckpt.float64_cpu())


def decompress(ckpt: Checkpoint, strings: list, shape: torch.Size) -> dict:
    return ckpt.model.decompress(strings, shape, entropy=ckpt.float64_cpu())
