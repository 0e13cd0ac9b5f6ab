"""A training run's resumable state: the digest of what decides its weights,
the random generators, and the state file (read, checked, written).

A state saved under a digest resumes only a run with the same digest; every
``checkpoint_every`` steps the loop writes one atomically, and a rerun with the
same settings resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import CheckpointError, PickledCodeError
from ..fileio import load_tensors, save_tensors

# The stage's log lines under one name, however the package is split.
log = logging.getLogger(__package__)

STATE_FORMAT = "licbench-train-state"
STATE_VERSION = 1
# Settings that do not change the trained weights: a state saved under other
# values of these still resumes (e.g. a run moved from one machine to another).
NOT_IN_DIGEST = ("log_every", "checkpoint_every", "device")


def training_digest(arch: str, arch_config: dict, lmbda: float, cfg: TrainConfig,
                    images: list[np.ndarray], val_images: list[np.ndarray] | None,
                    partitions: list[np.ndarray] | None = None) -> str:
    """sha256 of everything that decides the trained weights: a saved state
    resumes only a run with the same digest (the training partitions too,
    when the model takes them: new masks start a new run)."""
    h = hashlib.sha256()
    settings = {k: v for k, v in cfg.model_dump().items() if k not in NOT_IN_DIGEST}
    h.update(json.dumps([arch, {k: int(v) for k, v in arch_config.items()}, float(lmbda), settings],
                        sort_keys=True, default=list).encode())
    for im in [*images, None, *(val_images or [])]:
        h.update(b"|" if im is None else f"{im.shape}".encode() + np.ascontiguousarray(im).tobytes())
    if partitions is not None:
        h.update(b"|partitions")
        for part in partitions:
            h.update(f"{part.shape}{part.dtype}".encode() + np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    """This process's random generators, as tensors and numbers (weights_only-safe)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(path: str | Path, digest: str) -> dict | None:
    """The state saved at ``path`` if it resumes a run with this digest, else None
    (saying why in the log); a state holding pickled code is refused
    (PickledCodeError). ``mmap`` makes a peek at a large state cheap."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = load_tensors(path, "training state", mmap=True)
    except PickledCodeError:
        raise
    except CheckpointError as exc:  # a torn write cannot happen (atomic rename); anything else: start afresh
        log.warning("%s; training from the start", exc)
        return None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT \
            or state.get("version") != STATE_VERSION:
        log.warning("%s: not a licbench training state of version %d; training from the start",
                    path, STATE_VERSION)
        return None
    if state["digest"] != digest:
        log.warning("%s: saved under other settings or data (step %d); ignoring it and "
                    "training from the start", path, state["step"])
        return None
    if state["finished"]:
        log.info("%s: a finished run (step %d); training from the start", path, state["step"])
        return None
    return state


def no_state_or_last_good(state_path: str | Path | None) -> str:
    return "no resumable state is kept (no state file)" if state_path is None else \
        f"the last good state ({state_path}) stays on disk"


def save_train_state(path: str | Path, state: dict) -> None:
    save_tensors(path, state)


def cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}
