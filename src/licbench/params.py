"""params.yaml: the single source of truth for every stage's settings."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from .errors import ConfigError

MIRROR_ENV = "LICBENCH_MIRROR"


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict, name: str, path: str = "params.yaml") -> dict:
    try:
        value = params[name]
    except KeyError:
        raise ConfigError(f"{path}: missing section '{name}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: section '{name}' must be a mapping")
    return value


def resolve_mirror(configured: str | None) -> Path | None:
    """The local mirror to read datasets from, or None for the real URLs.

    The environment variable LICBENCH_MIRROR wins over params.yaml's
    ``datasets.mirror``, so CI can point any checkout at its mirror.
    An empty value means "no mirror".
    """
    value = os.environ.get(MIRROR_ENV) or configured
    if not value:
        return None
    mirror = Path(value).expanduser()
    if not mirror.is_dir():
        source = MIRROR_ENV if os.environ.get(MIRROR_ENV) else "datasets.mirror"
        raise ConfigError(f"mirror folder {mirror} (from {source}) does not exist")
    return mirror
