"""Minnen, Ballé, Toderici, "Joint Autoregressive and Hierarchical Priors for
Learned Image Compression", NeurIPS 2018: the mean-scale hyperprior and the
joint model with its 5x5 masked context, CompressAI's
``MeanScaleHyperprior`` and ``JointAutoregressiveHierarchicalPriors`` as they
are (the joint model is coded along wavefronts, coding/autoregressive.py)."""

from __future__ import annotations

from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior

from .bmshj2018 import config_from_weights
from .registry import Architecture, register

# CompressAI's zoo: mbt2018-mean N=128, M=192 and mbt2018 N=192, M=192 at
# qualities 1-4; N=192, M=320 above.
MEAN = register(Architecture(
    "mbt2018-mean", MeanScaleHyperprior, ("N", "M"), pad_multiple=64, streams=("y", "z"),
    coder="hyperprior", coder_options={"means": True, "abs_y": False}, config_from_weights=config_from_weights,
    reference="Minnen, Balle, Toderici, NeurIPS 2018 (mean-scale hyperprior)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))

JOINT = register(Architecture(
    "mbt2018", JointAutoregressiveHierarchicalPriors, ("N", "M"), pad_multiple=64, streams=("y", "z"),
    coder="wavefront", config_from_weights=config_from_weights,
    reference="Minnen, Balle, Toderici, NeurIPS 2018 (joint autoregressive and hierarchical priors)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))
