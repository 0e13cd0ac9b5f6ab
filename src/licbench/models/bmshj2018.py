"""Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with
a scale hyperprior", ICLR 2018: the factorized prior and the scale
hyperprior, CompressAI's ``FactorizedPrior`` and ``ScaleHyperprior`` as they are."""

from __future__ import annotations

from compressai.models import FactorizedPrior, ScaleHyperprior

from .registry import Architecture, register

# CompressAI's zoo: N=128, M=192 at qualities 1-5, N=192, M=320 above.
FACTORIZED = register(Architecture(
    "bmshj2018-factorized", FactorizedPrior, ("N", "M"), pad_multiple=16, streams=("y",),
    coder="factorized",
    reference="Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (factorized prior)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))

HYPERPRIOR = register(Architecture(
    "bmshj2018-hyperprior", ScaleHyperprior, ("N", "M"), pad_multiple=64, streams=("y", "z"),
    coder="hyperprior", coder_options={"means": False, "abs_y": True},
    reference="Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (scale hyperprior)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))
