"""The device a stage ran on, in words, for the records (summaries, MLflow tags):
``cpu: <processor>, <n> threads`` or ``cuda:0: <GPU>``. Nothing computed
depends on it; where a stage runs is ``<section>.device``
(:func:`licbench.config.resolve_device`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def device_name(device: torch.device | str) -> str:
    """The device in words: ``cpu: <processor>, <n> threads`` or ``cuda:0: <GPU>``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}: {torch.cuda.get_device_name(index)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or f"{os.cpu_count()} cores"
