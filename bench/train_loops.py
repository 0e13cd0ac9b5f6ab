"""The two training loops that throughput figures compare, timed step by step.

- :func:`pipeline_steps`: licbench's own ``train_model`` (crop sampler, loss,
  both optimizers, clipping, the per-step loss read-back, logging, the final
  checkpoint), timed by the wall clock at each step's ``log_metrics`` call:
  the loop reads its losses back every step, so that is when the step ended.
- :class:`PlainLoop`: CompressAI's ``examples/train.py`` step (forward,
  ``RateDistortionLoss``, backward, clipping, the main and the aux optimizer)
  on tensors already on the device: no sampler, no read-back, no logging.

Both give seconds per step. A figure is the batch over the median step of the
timed steps (warm-up steps dropped), so that one slow step (another job on a
shared CPU, a page fault) does not move it, and :func:`interleave` runs the
repeats of several loops in turn, reversing the order every other round
(A B B A ...), so that a slow minute or a drift touches all of them alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from compressai.losses import RateDistortionLoss

import licbench.train.loop as licbench_loop
from licbench.models import build_model
from licbench.config import TrainConfig
from licbench.config import train_config as params_train_config
from licbench.train import AMP_DTYPES, split_parameters, train_model

REPO = Path(__file__).resolve().parents[1]
# What a bench's training differs in from params.yaml's unless it says otherwise:
# no validation, a constant learning rate, no resumable state.
BENCH_TRAIN = {"val_split": None, "lr_schedule": "none", "early_stopping": 0, "checkpoint_every": 0}


def train_config(steps: int, batch_size: int, crop: int, **settings) -> TrainConfig:
    """The one place the benches build a training configuration: params.yaml's
    ``train`` section with BENCH_TRAIN and ``settings`` (its keys) over it."""
    return params_train_config(REPO / "params.yaml", **{**BENCH_TRAIN, "steps": steps, "batch_size": batch_size,
                                                       "crop": crop, **settings})


@contextlib.contextmanager
def channels_last_models(enabled: bool):
    """``train_model`` with its model in channels-last memory format, which is
    what a ``train.channels_last`` setting would do (licbench has none yet):
    the model is built through ``licbench.train.loop.build_model``, wrapped here."""
    if not enabled:
        yield
        return
    original = licbench_loop.build_model
    built = []

    def build(arch: str, config: dict) -> torch.nn.Module:
        built.append(arch)
        return original(arch, config).to(memory_format=torch.channels_last)

    licbench_loop.build_model = build
    try:
        yield
    finally:
        licbench_loop.build_model = original
    if not built:  # a run that measured NCHW under this name would be worse than none
        raise RuntimeError("train_model no longer builds its model through licbench.train.loop.build_model: "
                           "the channels-last run could not convert it")


def pipeline_steps(arch: str, arch_config: dict, lmbda: float, images: list, workdir: str | Path, *,
                   steps: int, batch_size: int, crop: int, channels_last: bool = False,
                   partitions: list | None = None, val_images: list | None = None,
                   **settings) -> tuple[list[float], dict]:
    """Seconds of steps 2..``steps`` of one ``train_model`` run, and its summary.

    ``settings``: the run's other ``train`` keys (device, amp, compile, lr,
    val_split, ...); ``log_every`` is 1 so that every step reports when it ended.
    """
    ends: list[float] = []

    def log_metrics(metrics: dict, step: int) -> None:
        if "train/loss" in metrics:
            ends.append(time.perf_counter())

    cfg = train_config(steps, batch_size, crop, log_every=1, **settings)
    with channels_last_models(channels_last):
        summary = train_model(arch, arch_config, lmbda, cfg, images, Path(workdir) / "checkpoint.pt",
                              log_metrics=log_metrics, partitions=partitions, val_images=val_images)
    return [b - a for a, b in zip(ends, ends[1:])], summary


class PlainLoop:
    """CompressAI's training step on ``inputs`` random batches kept on the device.

    ``channels_last_input``: the batches in channels-last layout (what the
    pipeline's sampler gives: it permutes H x W x 3 crops); ``channels_last_model``:
    the weights too. ``amp`` autocasts the forward pass and computes the loss
    in float32, as ``train_model`` does; ``compile`` wraps the model in
    ``torch.compile``. ``partitions``: region maps to call ``model(x, partition)``
    with (SegPIC), one per input batch.
    """

    def __init__(self, arch: str, arch_config: dict, lmbda: float, device: torch.device, batch_size: int,
                 crop: int, *, amp: str = "none", channels_last_input: bool = False,
                 channels_last_model: bool = False, compile: bool = False,
                 partitions: list[torch.Tensor] | None = None, inputs: int = 4, seed: int = 0):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        model = build_model(arch, arch_config).to(self.device).train()
        if channels_last_model:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if compile else model
        self.main, aux = split_parameters(model)
        self.optimizer = torch.optim.Adam(self.main, lr=1e-4)
        self.aux_optimizer = torch.optim.Adam(aux, lr=1e-3)
        self.criterion = RateDistortionLoss(lmbda=lmbda)
        self.amp_dtype = AMP_DTYPES[amp]
        layout = torch.channels_last if channels_last_input else torch.contiguous_format
        self.inputs = [torch.rand(batch_size, 3, crop, crop, device=self.device).contiguous(memory_format=layout)
                       for _ in range(inputs)]
        self.partitions = [p.to(self.device) for p in partitions] if partitions is not None else None
        self.batch_size = batch_size

    def step(self, i: int) -> None:
        x = self.inputs[i % len(self.inputs)]
        args = (x,) if self.partitions is None else (x, self.partitions[i % len(self.partitions)])
        self.optimizer.zero_grad(set_to_none=True)
        self.aux_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.forward(*args)
        if self.amp_dtype is not None:
            out = {"x_hat": out["x_hat"].float(),
                   "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}
        self.criterion(out, x)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.main, 1.0)
        self.optimizer.step()
        self.model.aux_loss().backward()
        self.aux_optimizer.step()

    def run(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps: CUDA events recorded at each step's
        start (no synchronisation inside the loop, as in CompressAI's), or the
        wall clock on the CPU."""
        if self.device.type == "cuda":
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            for i in range(steps):
                events[i].record()
                self.step(i)
            events[-1].record()
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1e3 for a, b in zip(events, events[1:])]
        durations = []
        for i in range(steps):
            t0 = time.perf_counter()
            self.step(i)
            durations.append(time.perf_counter() - t0)
        return durations


def interleave(loops: dict[str, Callable[[], list[float]]], repeats: int) -> dict[str, list[list[float]]]:
    """Run each loop ``repeats`` times, in turn, the order reversed every other
    round; return each loop's list of runs (each a list of step seconds)."""
    runs: dict[str, list[list[float]]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(loops[name]())
    return runs


def rate(runs: list[list[float]], batch_size: int) -> dict:
    """Images per second over a loop's runs: ``images_per_second`` from the
    median of all their steps; ``runs``, each run's own figure; ``spread``,
    (max - min) / median of those, which says whether two runs of the same
    loop agree (``agree_2pct``)."""
    per_run = [batch_size / statistics.median(r) for r in runs]
    pooled = batch_size / statistics.median([d for r in runs for d in r])
    spread = (max(per_run) - min(per_run)) / statistics.median(per_run) if len(per_run) > 1 else None
    return {
        "images_per_second": round(pooled, 3),
        "runs": [round(v, 3) for v in per_run],
        "steps_per_run": [len(r) for r in runs],
        "spread": None if spread is None else round(spread, 4),
        "agree_2pct": None if spread is None else spread <= 0.02,
    }


def paired_ratio(runs_a: list[list[float]], runs_b: list[list[float]]) -> dict:
    """Images/s of loop A over loop B, run by run: :func:`interleave` ran the
    i-th runs of the two next to each other, so each pair saw the same load;
    ``ratio`` is the median of the pairs' ratios, ``spread`` their
    (max - min) / median."""
    ratios = [statistics.median(b) / statistics.median(a) for a, b in zip(runs_a, runs_b)]
    mid = statistics.median(ratios)
    return {"ratio": round(mid, 4), "runs": [round(r, 4) for r in ratios],
            "spread": round((max(ratios) - min(ratios)) / mid, 4) if len(ratios) > 1 else None}
