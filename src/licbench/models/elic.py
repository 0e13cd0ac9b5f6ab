"""He, Yang, Peng, Ma, Qin, Wang, "ELIC: Efficient Learned Image Compression
with Unevenly Grouped Space-Channel Contextual Adaptive Coding", CVPR 2022:
CompressAI's ``Elic2022Official`` as it is. ``y``'s M channels fall into five
uneven groups (16, 16, 32, 64, M - 128); each group's Gaussian has its mean and
scale from the hyper-synthesis, a channel context over the groups before it
and a checkerboard spatial context (anchors first, then the rest), coded by
coding/scctx.py."""

from __future__ import annotations

from compressai.models import Elic2022Official

from ..errors import ConfigError
from .registry import Architecture, register

GROUPS = (16, 16, 32, 64)  # CompressAI's default groups, then M - 128


def build(N: int, M: int) -> Elic2022Official:
    if M <= sum(GROUPS):
        raise ConfigError(f"elic: M={M} leaves no channel for the last group "
                          f"(groups {', '.join(map(str, GROUPS))} and M - {sum(GROUPS)}): M must exceed {sum(GROUPS)}")
    return Elic2022Official(N=N, M=M)


def config_from_weights(state_dict: dict) -> dict:
    """N and M from a CompressAI state dict: the first and last analysis
    convolutions (``Elic2022Official.from_state_dict`` reads N alone and
    assumes M = 320)."""
    return {"N": int(state_dict["g_a.0.weight"].size(0)), "M": int(state_dict["g_a.13.weight"].size(0))}


ELIC = register(Architecture(
    "elic", build, ("N", "M"), pad_multiple=64, streams=("y", "z"),
    coder="scctx", config_from_weights=config_from_weights,
    reference="He, Yang, Peng, Ma, Qin, Wang, CVPR 2022 (ELIC, CompressAI's Elic2022Official)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 136}, minimum={"M": sum(GROUPS) + 1},
))
