"""Cheng, Sun, Takeuchi, Katto, "Learned Image Compression with Discretized
Gaussian Mixture Likelihoods and Attention Modules", CVPR 2020: CompressAI's
``Cheng2020Anchor`` (residual blocks, sub-pixel up-sampling) and
``Cheng2020Attention`` (the same with simplified attention modules) as they
are. Both keep mbt2018's 5x5 masked context and entropy parameters network
with M = N, and a single Gaussian (CompressAI's version, not the paper's
Gaussian mixture), so they are coded along wavefronts (coding/autoregressive.py)."""

from __future__ import annotations

from compressai.models import Cheng2020Anchor, Cheng2020Attention

from .registry import Architecture, register


def config_from_weights(state_dict: dict) -> dict:
    """N from a CompressAI state dict, as ``Cheng2020Anchor.from_state_dict`` reads it."""
    return {"N": int(state_dict["g_a.0.conv1.weight"].size(0))}


# CompressAI's zoo: N=128 at qualities 1-3, N=192 at 4-6.
ANCHOR = register(Architecture(
    "cheng2020-anchor", Cheng2020Anchor, ("N",), pad_multiple=64, streams=("y", "z"),
    coder="wavefront", config_from_weights=config_from_weights,
    reference="Cheng, Sun, Takeuchi, Katto, CVPR 2020 (anchor: residual blocks, single Gaussian)",
    paper={"N": 192}, tiny={"N": 16},
))

ATTENTION = register(Architecture(
    "cheng2020-attn", Cheng2020Attention, ("N",), pad_multiple=64, streams=("y", "z"),
    coder="wavefront", config_from_weights=config_from_weights,
    reference="Cheng, Sun, Takeuchi, Katto, CVPR 2020 (attention modules, single Gaussian)",
    paper={"N": 192}, tiny={"N": 16},
))
