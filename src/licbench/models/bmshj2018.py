"""Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with
a scale hyperprior", ICLR 2018: the factorized prior and the scale
hyperprior, CompressAI's ``FactorizedPrior`` and ``ScaleHyperprior`` as they are."""

from __future__ import annotations

from compressai.models import FactorizedPrior, ScaleHyperprior

from .registry import Architecture, register


def config_from_weights(state_dict: dict) -> dict:
    """N and M from a CompressAI state dict of these models or mbt2018's, as their
    ``from_state_dict`` reads them: the first and last analysis convolutions."""
    return {"N": int(state_dict["g_a.0.weight"].size(0)), "M": int(state_dict["g_a.6.weight"].size(0))}


# CompressAI's zoo: N=128, M=192 at qualities 1-5, N=192, M=320 above.
FACTORIZED = register(Architecture(
    "bmshj2018-factorized", FactorizedPrior, ("N", "M"), pad_multiple=16, streams=("y",),
    coder="factorized", config_from_weights=config_from_weights,
    reference="Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (factorized prior)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))

HYPERPRIOR = register(Architecture(
    "bmshj2018-hyperprior", ScaleHyperprior, ("N", "M"), pad_multiple=64, streams=("y", "z"),
    coder="hyperprior", coder_options={"means": False, "abs_y": True}, config_from_weights=config_from_weights,
    reference="Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (scale hyperprior)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 24},
))
