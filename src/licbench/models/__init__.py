"""Architectures by name, and checkpoints that load without unpickling code.

CompressAI's reference architectures are used as they are; ChARM and WACNN,
not in CompressAI, are written here on its layers and entropy models
(channelwise.py, charm.py, wacnn.py). Each entry records the constructor and
the spatial factor an input must be a multiple of.
"""

from __future__ import annotations

import copy
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from compressai.models import (
    FactorizedPrior,
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, load_tensors
from .charm import ChARM
from .segpic import SegPIC
from .wacnn import WACNN

CHECKPOINT_FORMAT = "licbench-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., torch.nn.Module]
    config_keys: tuple[str, ...]
    pad_multiple: int  # total downsampling of the analysis and hyper-analysis transforms
    n_streams: int  # entropy-coded streams per image (latent, hyper-latent, ...)
    reference: str
    # The config key (0/1) that says whether training feeds region partitions
    # (the masks stage's) to forward(x, partition); None: never.
    partition_key: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "bmshj2018-factorized", FactorizedPrior, ("N", "M"), 16, 1,
            "Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (factorized prior)",
        ),
        Architecture(
            "bmshj2018-hyperprior", ScaleHyperprior, ("N", "M"), 64, 2,
            "Balle, Minnen, Singh, Hwang, Johnston, ICLR 2018 (scale hyperprior)",
        ),
        Architecture(
            "mbt2018-mean", MeanScaleHyperprior, ("N", "M"), 64, 2,
            "Minnen, Balle, Toderici, NeurIPS 2018 (mean-scale hyperprior)",
        ),
        Architecture(
            "mbt2018", JointAutoregressiveHierarchicalPriors, ("N", "M"), 64, 2,
            "Minnen, Balle, Toderici, NeurIPS 2018 (joint autoregressive and hierarchical priors)",
        ),
        Architecture(
            "charm", ChARM, ("N", "M"), 64, 2,
            "Minnen, Singh, ICIP 2020 (channel-wise autoregressive entropy model, ChARM)",
        ),
        Architecture(
            "wacnn", WACNN, ("N", "M"), 64, 2,
            "Zou, Song, Zhang, CVPR 2022 (window-based attention CNN, channel-wise entropy model)",
        ),
        Architecture(
            "segpic", SegPIC, ("N", "M", "grid", "use_mask"), 64, 4,
            "Liu, Yang, Bai, Wei, Zhao, ECCV 2024 (region-adaptive transform with segmentation prior)",
            partition_key="use_mask",
        ),
    )
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture '{name}'; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def trains_with_partition(arch: str, config: dict) -> bool:
    """Whether training ``arch`` with ``config`` feeds region partitions to the model."""
    key = get_architecture(arch).partition_key
    return key is not None and bool(int(config[key]))


def build_model(arch: str, config: dict) -> torch.nn.Module:
    spec = get_architecture(arch)
    missing = [k for k in spec.config_keys if k not in config]
    unknown = [k for k in config if k not in spec.config_keys]
    if missing or unknown:
        raise ConfigError(
            f"architecture '{arch}' takes {list(spec.config_keys)}; "
            f"missing {missing}, unknown {unknown}"
        )
    return spec.build(**{k: int(config[k]) for k in spec.config_keys})


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names, dtypes, shapes and values, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    arch: str
    config: dict
    lmbda: float
    model: torch.nn.Module
    weights_sha256: str
    meta: dict
    _float64_cpu: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        return model_key(self.arch, self.lmbda)

    def float64_cpu(self) -> torch.nn.Module:
        """A float64 copy of the model on the CPU (made once): what computes the
        entropy parameters, identically on every machine (see coding/codec.py)."""
        if self._float64_cpu is None:
            self._float64_cpu = copy.deepcopy(self.model).to("cpu", torch.float64).eval()
        return self._float64_cpu


def model_key(arch: str, lmbda: float) -> str:
    """The name of a trained model: architecture and lambda, as in dvc.yaml paths."""
    return f"{arch}-{float(lmbda)!r}"


def save_checkpoint(path: str | Path, model: torch.nn.Module, arch: str, config: dict,
                    lmbda: float, meta: dict | None = None) -> str:
    """Write a checkpoint atomically; return the weights' sha256.

    Only tensors, numbers and strings are stored, so it loads with
    ``torch.load(weights_only=True)``. Call ``model.update()`` first so the
    stored CDF tables can drive the entropy coder.
    """
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "config": {k: int(v) for k, v in config.items()},
        "lmbda": float(lmbda),
        "weights_sha256": digest,
        "meta": dict(meta or {}),
        "state_dict": state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return digest


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    payload = load_tensors(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a licbench checkpoint")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload['version']} is newer than this "
            f"licbench reads ({CHECKPOINT_VERSION})"
        )
    try:
        model = build_model(payload["arch"], payload["config"])
        state = payload["state_dict"]
        model.load_state_dict(state)
    except (ConfigError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture: {exc}") from None
    digest = weights_digest(state)
    if digest != payload.get("weights_sha256"):
        raise CheckpointError(f"{path}: weights hash mismatch; the file is damaged")
    model.to(device).eval()
    return Checkpoint(payload["arch"], payload["config"], payload["lmbda"], model, digest,
                      payload.get("meta", {}))


# --- CompressAI interop -----------------------------------------------------

def compressai_state_dict(payload, source: str) -> dict[str, torch.Tensor]:
    """The model weights in what ``torch.load`` gave for a CompressAI file: a
    bare ``model.state_dict()``, or one wrapped as ``{"state_dict": ...}``
    (CompressAI's examples/train.py), keys with DataParallel's ``module.``
    prefix or the entropy bottleneck's pre-1.2 names (renamed as CompressAI's
    zoo does)."""
    from compressai.zoo.pretrained import load_pretrained

    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: already a licbench checkpoint")
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise CheckpointError(f"{source}: not a state dict (a mapping of parameter names to tensors)")
    return load_pretrained(payload)


def compressai_architectures() -> list[str]:
    """The registry's architectures that are CompressAI's own classes."""
    return [name for name, a in ARCHITECTURES.items() if a.build.__module__.startswith("compressai.")]


def from_compressai(state_dict: dict[str, torch.Tensor], arch: str, config: dict | None = None,
                    source: str = "<state dict>") -> tuple[torch.nn.Module, dict]:
    """Our model for ``arch`` holding a CompressAI state dict's weights, and its config.

    N and M are read from the weights as CompressAI's ``from_state_dict`` does
    (the first and last analysis convolutions) and checked against ``config``
    when given. CompressAI's ``load_state_dict`` resizes the CDF tables to the
    stored ones; a state dict saved before ``update()`` has none, and they are
    built here.
    """
    spec = get_architecture(arch)
    if arch not in compressai_architectures():
        raise ConfigError(f"architecture '{arch}' is not one of CompressAI's: "
                          f"{', '.join(compressai_architectures())}")
    try:
        inferred = {"N": int(state_dict["g_a.0.weight"].size(0)), "M": int(state_dict["g_a.6.weight"].size(0))}
    except (KeyError, IndexError):
        raise CheckpointError(f"{source}: no analysis transform weights g_a.0 / g_a.6; "
                              f"not a CompressAI {arch} state dict") from None
    for key, value in (config or {}).items():
        if key in inferred and int(value) != inferred[key]:
            raise CheckpointError(f"{source}: the weights have {key}={inferred[key]}, not {int(value)}")
    config = {k: inferred[k] for k in spec.config_keys}
    model = build_model(arch, config)
    try:
        model.load_state_dict(dict(state_dict))
    except (RuntimeError, KeyError, ValueError) as exc:
        fits = [name for name in compressai_architectures() if name != arch and _fits(name, config, state_dict)]
        hint = f" (they fit {', '.join(fits)})" if fits else ""
        raise CheckpointError(
            f"{source}: the weights do not fit {arch} with N={config['N']}, M={config['M']}{hint}: "
            + " ".join(str(exc).split())[:500]
        ) from None
    tables = [m._offset for m in model.modules() if hasattr(m, "_offset")]
    if any(t.numel() == 0 for t in tables):
        model.update(force=True)
    return model.eval(), config


def _fits(arch: str, config: dict, state_dict: dict) -> bool:
    try:
        build_model(arch, config).load_state_dict(dict(state_dict))
        return True
    except (RuntimeError, KeyError, ValueError):
        return False


def import_compressai(path: str | Path, arch: str, lmbda: float, output: str | Path,
                      config: dict | None = None) -> str:
    """Write a licbench checkpoint from a file saved by CompressAI
    (``torch.save(model.state_dict(), path)``, or a zoo download); return its weights' sha256."""
    path = Path(path)
    payload = load_tensors(path, "CompressAI weights file")
    model, config = from_compressai(compressai_state_dict(payload, str(path)), arch, config, str(path))
    return save_checkpoint(output, model, arch, config, lmbda,
                           meta={"imported_from": path.name, "source": "compressai"})
