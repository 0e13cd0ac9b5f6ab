"""Architectures by name, and checkpoints that load without unpickling code.

Each architecture declares itself in its own module (registry.py):
CompressAI's reference models as they are (bmshj2018.py, mbt2018.py,
cheng2020.py); ChARM,
WACNN and SegPIC, not in CompressAI, written here on its layers and entropy
models (channelwise.py, charm.py, wacnn.py, segpic.py).
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from compressai.models.base import SCALES_LEVELS, SCALES_MAX, SCALES_MIN

from ..digests import weights_digest  # noqa: F401  (re-exported)
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, load_tensors
# Each module declares its architectures; imported in the papers' order, the registry's.
from . import bmshj2018, mbt2018, cheng2020, charm, elic, wacnn, segpic  # noqa: F401, I001
from .registry import ARCHITECTURES, Architecture, get_architecture  # noqa: F401

CHECKPOINT_FORMAT = "licbench-checkpoint"
CHECKPOINT_VERSION = 1


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
        entropy parameters, identically on every machine (coding/latent: ``Exact``)."""
        if self._float64_cpu is None:
            self._float64_cpu = copy.deepcopy(self.model).to("cpu", torch.float64).eval()
        return self._float64_cpu


def update_entropy_models(model: torch.nn.Module, update_quantiles: bool = False) -> None:
    """Build the CDF tables the rANS coder uses (CompressAI's
    ``update(force=True)``) with CompressAI's default scale table (64 scales,
    log-spaced from 0.11 to 256) computed in float64, then rounded to float32.
    CompressAI computes it with a float32 ``exp``, whose last bit differs between
    CPUs with other vector units (AVX2, AVX-512, none): the same weights then
    made checkpoints of other digests on another machine."""
    table = torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS,
                                     dtype=torch.float64)).float()
    model.update(scale_table=table, force=True, update_quantiles=update_quantiles)


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
    """The registry's architectures that are CompressAI's own classes (their
    declarations say how a CompressAI state dict gives their config)."""
    return [name for name, a in ARCHITECTURES.items() if a.config_from_weights is not None]


def from_compressai(state_dict: dict[str, torch.Tensor], arch: str, config: dict | None = None,
                    source: str = "<state dict>") -> tuple[torch.nn.Module, dict]:
    """Our model for ``arch`` holding a CompressAI state dict's weights, and its config.

    The config is read from the weights as CompressAI's ``from_state_dict``
    does (the declaration's ``config_from_weights``: for most, N and M from the
    first and last analysis convolutions) and checked against ``config`` when
    given. CompressAI's ``load_state_dict`` resizes the CDF tables to the
    stored ones; a state dict saved before ``update()`` has none, and they are
    built here.
    """
    spec = get_architecture(arch)
    if arch not in compressai_architectures():
        raise ConfigError(f"architecture '{arch}' is not one of CompressAI's: "
                          f"{', '.join(compressai_architectures())}")
    for key in config or {}:
        if key not in spec.config_keys:
            raise ConfigError(f"architecture '{arch}' takes {', '.join(spec.config_keys)}, not {key}")
    try:
        inferred = spec.config_from_weights(state_dict)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{source}: no weights {exc}; not a CompressAI {arch} state dict"
                              + _fit_hint(arch, state_dict)) from None
    for key, value in (config or {}).items():
        if int(value) != inferred[key]:
            raise CheckpointError(f"{source}: the weights have {key}={inferred[key]}, not {int(value)}")
    config = {k: inferred[k] for k in spec.config_keys}
    model = build_model(arch, config)
    try:
        model.load_state_dict(dict(state_dict))
    except (RuntimeError, KeyError, ValueError) as exc:
        sizes = ", ".join(f"{k}={v}" for k, v in config.items())
        raise CheckpointError(
            f"{source}: the weights do not fit {arch} with {sizes}{_fit_hint(arch, state_dict)}: "
            + " ".join(str(exc).split())[:500]
        ) from None
    tables = [m._offset for m in model.modules() if hasattr(m, "_offset")]
    if any(t.numel() == 0 for t in tables):
        model.update(force=True)
    return model.eval(), config


def _fit_hint(arch: str, state_dict: dict) -> str:
    """`` (they fit X, Y)``: the other CompressAI architectures the weights load into."""
    fits = [name for name in compressai_architectures() if name != arch and _fits(name, state_dict)]
    return f" (they fit {', '.join(fits)})" if fits else ""


def _fits(arch: str, state_dict: dict) -> bool:
    try:
        config = get_architecture(arch).config_from_weights(state_dict)
        build_model(arch, config).load_state_dict(dict(state_dict))
        return True
    except (RuntimeError, KeyError, IndexError, ValueError):
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
