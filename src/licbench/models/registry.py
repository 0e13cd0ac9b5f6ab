"""The architectures, each declared once, in its own module (``register``).

A declaration says what the rest of licbench needs to know about a model:
how to build it from its config, the spatial multiple its input is padded
to, the streams a bitstream of it holds, the coding style of
``licbench.coding`` that writes them (with that style's options), the
paper, and two sizes: the paper's and the smallest its constraints allow
(what tests and smoke runs train). params.yaml's ``architectures`` section
chooses the sizes a pipeline trains; these are references, not defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., torch.nn.Module]
    config_keys: tuple[str, ...]
    pad_multiple: int  # total downsampling of the analysis and hyper-analysis transforms
    streams: tuple[str, ...]  # the entropy-coded streams of an image, in container order
    coder: str  # the coding style of licbench.coding.codec.CODERS that writes them
    reference: str
    paper: dict  # the paper's configuration (at its highest rate, where sizes differ)
    tiny: dict  # the smallest configuration its constraints allow
    coder_options: dict = field(default_factory=dict)
    # The config key (0/1) that says whether training feeds region partitions
    # (the masks stage's) to forward(x, partition); None: never.
    partition_key: str | None = None
    # The smallest value of a size its constraints allow, where that is more
    # than 1 (params.yaml is checked against it: licbench.config).
    minimum: dict = field(default_factory=dict)
    # CompressAI's own classes: the config read from one of its state dicts
    # (what the class's from_state_dict reads); licbench import-compressai takes
    # the architectures that have one. A KeyError: not such a state dict.
    config_from_weights: Callable[[dict], dict] | None = None

    @property
    def n_streams(self) -> int:
        return len(self.streams)


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry (once per name); return it."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture '{arch.name}' is declared twice")
    for size in (arch.paper, arch.tiny):
        if sorted(size) != sorted(arch.config_keys):
            raise ValueError(f"architecture '{arch.name}': sizes must give exactly {arch.config_keys}")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture '{name}'; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
