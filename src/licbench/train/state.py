"""A training run's resumable state: what it is made of (:class:`TrainingState`),
the digest of what decides its weights, the random generators, and the state
file (read, checked, written, resumed from).

A state saved under a digest resumes only a run with the same digest; every
``checkpoint_every`` steps the loop writes one atomically, and a rerun with the
same settings resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.crops import RandomCrops
from ..errors import CheckpointError, PickledCodeError
from ..fileio import load_tensors, save_tensors
from .distributed import broadcast_from_first, gather_from_all, rank_and_world

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


@dataclass
class Optimizers:
    """The main and the aux optimizer, the plateau schedule (None under the
    other schedules, which set the rate themselves) and fp16's gradient scaler
    (None without fp16)."""

    main_params: list[torch.nn.Parameter]  # what the gradient clipping measures
    main: torch.optim.Optimizer
    aux: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler | None

    def state_dict(self) -> dict:
        """Their states, under the state file's keys."""
        return {"optimizer": self.main.state_dict(), "aux_optimizer": self.aux.state_dict(),
                "scheduler": self.plateau.state_dict() if self.plateau is not None else {},
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, saved: dict) -> None:
        self.main.load_state_dict(saved["optimizer"])
        self.aux.load_state_dict(saved["aux_optimizer"])
        if self.plateau is not None:
            self.plateau.load_state_dict(saved["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])


@dataclass
class Progress:
    """How far a run has come; the state file holds it as a dict under "progress"."""

    step: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    bad_validations: int = 0  # since the best one: what early stopping counts
    stopped_early: bool = False
    seconds: float = 0.0  # training time over every session of the run
    last_train: dict = field(default_factory=dict)  # the last logged running means


@dataclass
class TrainingState:
    """A run between two steps: everything its state file holds but the settings."""

    model: torch.nn.Module  # the module itself, not DDP's wrapper
    optimizers: Optimizers
    crops: RandomCrops  # or PartitionedCrops, its subclass
    progress: Progress = field(default_factory=Progress)
    best_weights: dict = field(default_factory=dict)  # on the CPU; empty before a validation
    last_val: dict = field(default_factory=dict)

    def snapshot(self, digest: str, finished: bool, run_id: str | None) -> dict:
        """What the state file holds; a collective: every process calls it
        (the random generators of them all are saved)."""
        rngs = gather_from_all(rng_state())
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "digest": digest,
            "step": self.progress.step, "finished": finished,
            "model": cpu_copy(self.model.state_dict()),
            **self.optimizers.state_dict(),
            "data_rng": self.crops.state(), "rng": rngs, "progress": asdict(self.progress),
            "best_model": self.best_weights, "last_val": self.last_val, "mlflow_run_id": run_id,
        }

    def restore(self, saved: dict, seed: int) -> None:
        """Continue from ``saved`` (a :meth:`snapshot`): each process takes its
        own random generators back, if as many processes saved them."""
        rank, world = rank_and_world()
        self.model.load_state_dict(saved["model"])
        self.optimizers.load_state_dict(saved)
        self.crops.set_state(saved["data_rng"])
        self.progress = Progress(**saved["progress"])
        self.best_weights = dict(saved["best_model"])
        self.last_val = dict(saved["last_val"])
        if len(saved["rng"]) == world:
            set_rng_state(saved["rng"][rank])
        else:
            log.warning("state saved by %d process(es), resumed by %d: random generators reseeded",
                        len(saved["rng"]), world)
            torch.manual_seed(seed + 1000 * self.progress.step + rank)


def resume_or_start(training: TrainingState, state_path: str | Path | None, digest: str, seed: int,
                    key: str) -> int | None:
    """Resume ``training`` (a new run, at step 0) from ``state_path`` when it
    holds an unfinished run with this digest; return the step resumed from, or
    None for a run from the start. The first process reads the file and sends
    the state to the others."""
    rank = rank_and_world()[0]
    saved = load_train_state(state_path, digest) if state_path is not None and rank == 0 else None
    saved = broadcast_from_first(saved)
    if saved is None:
        if rank:
            torch.manual_seed(seed + rank)  # its own quantization noise
        return None
    training.restore(saved, seed)
    log.info("resuming %s from step %d (%s)", key, training.progress.step, state_path)
    return training.progress.step
