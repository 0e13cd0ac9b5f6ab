"""The training loop: ``train_model``, from a seeded or resumed state to the
checkpoint, and the parts it is made of: the optimizers, one step, the running
means, validation, the final entropy-model update and the checkpoint."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import numpy as np
import torch
from compressai.losses import RateDistortionLoss

from ..config import TrainConfig, resolve_device
from ..data.crops import PartitionedCrops, RandomCrops, center_crops
from ..errors import ConfigError, TrainingError
from ..models import (
    build_model, get_architecture, model_key, save_checkpoint, trains_with_partition, update_entropy_models,
    weights_digest,
)
from ..progress import progress as progress_bar
from .distributed import all_reduce_mean, all_reduce_sum, rank_and_world, wrap_ddp
from .state import (
    Optimizers, Progress, TrainingState, cpu_copy, no_state_or_last_good, resume_or_start, save_train_state,
    training_digest,
)

# The stage's log lines under one name, however the package is split.
log = logging.getLogger(__package__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_model(
    arch: str,
    arch_config: dict,
    lmbda: float,
    cfg: TrainConfig,
    images: list[np.ndarray],
    checkpoint_path: str | Path,
    *,
    val_images: list[np.ndarray] | None = None,
    state_path: str | Path | None = None,
    log_metrics=None,
    meta: dict | None = None,
    partitions: list[np.ndarray] | None = None,
) -> dict:
    """Train (resuming from ``state_path`` when it holds a run with the same
    settings), then write a checkpoint with updated CDF tables; return a summary.

    The checkpoint holds the weights of the best validation (the last weights
    without validation). ``log_metrics(metrics: dict, step: int)`` receives the
    running losses and each validation, on the first process only.

    ``partitions``: one region map per training image (H x W ids), for the
    architectures that train with them (SegPIC with ``use_mask``); the crops
    then cut and flip image and partition together and the model is called as
    ``model(x, partition)``. Validation crops get none: the model validates on
    what it codes with (SegPIC: the uniform grid).
    """
    check_inputs(arch, arch_config, cfg, partitions, val_images)
    rank, world = rank_and_world()
    device = check_settings(arch, cfg, world)
    # Repeatable runs: cuDNN's benchmark picks algorithms by timing, so two runs
    # of the same seed could train (and so code) differently.
    torch.backends.cudnn.benchmark = False

    training = new_training(arch, arch_config, cfg, images, partitions, device)
    digest = training_digest(arch, arch_config, lmbda, cfg, images, val_images, partitions)
    resumed_from = resume_or_start(training, state_path, digest, cfg.seed, model_key(arch, lmbda))
    loop = Loop(arch, arch_config, lmbda, cfg, device, rank, world, for_steps(training.model, cfg, device),
                state_path, log_metrics)
    val_batch = center_crops(val_images[rank::world], cfg.val_crop) if cfg.val_split is not None else None
    run_id = (meta or {}).get("mlflow_run_id")
    progress, session = training.progress, Session.begin(loop, training.progress)
    for step in session.bar:
        t0 = time.perf_counter()
        batch = next_batch(loop, training.crops)
        t1 = time.perf_counter()
        session.window.append(train_step(loop, training, batch, step))
        session.data_seconds += t1 - t0
        session.step_seconds += time.perf_counter() - t1
        progress.step = step
        if step % cfg.log_every == 0 or step == cfg.steps:
            log_running_means(loop, training, session, step)
        if val_batch is not None and (every(cfg.val_every, step) or step == cfg.steps):
            run_validation(loop, training, val_batch, step)
        progress.seconds = session.seconds_before + time.perf_counter() - session.start
        if progress.stopped_early:
            break
        if state_path is not None and every(cfg.checkpoint_every, step) and step < cfg.steps:
            state = training.snapshot(digest, finished=False, run_id=run_id)  # every process: a collective
            if rank == 0:
                save_train_state(state_path, state)
            del state
    elapsed = time.perf_counter() - session.start

    # The final state is built before the model is changed below, and written
    # after the checkpoint: a kill in between resumes from the previous state.
    final_state = training.snapshot(digest, finished=True, run_id=run_id) if state_path is not None else None
    summary = summarize(loop, training, session, resumed_from, elapsed)
    if rank == 0:
        summary["weights_sha256"] = write_checkpoint(checkpoint_path, final_model(loop, training), loop,
                                                     progress, meta)
        if final_state is not None:
            save_train_state(state_path, final_state)
        log.info("%s", summary_line(summary, checkpoint_path))
    return summary


# --- settings, the model and its optimizers --------------------------------

def check_inputs(arch: str, arch_config: dict, cfg: TrainConfig, partitions: list | None,
                 val_images: list | None) -> None:
    """Refuse partitions the model does not take (or none when it needs
    them), and a validation split without images."""
    if trains_with_partition(arch, arch_config) != (partitions is not None):
        raise ConfigError(
            f"{arch} with {arch_config} trains {'with' if partitions is None else 'without'} region "
            f"partitions, but {'none were' if partitions is None else 'some were'} given")
    if cfg.val_split is not None and not val_images:
        raise ConfigError(f"train.val_split = '{cfg.val_split}' but no validation image was given")


def check_settings(arch: str, cfg: TrainConfig, world: int) -> torch.device:
    """Refuse what ``arch``, ``world`` processes or this machine cannot train
    with; return the device to train on."""
    spec = get_architecture(arch)
    for name, size in (("crop", cfg.crop), ("val_crop", cfg.val_crop)):
        if size % spec.pad_multiple:
            raise cfg.error(name, f"{size} is not a multiple of {spec.pad_multiple}",
                            f"{arch} needs a multiple of {spec.pad_multiple}")
    if cfg.batch_size % world:
        raise cfg.error("batch_size", f"{cfg.batch_size} does not split among {world} processes",
                        f"a multiple of {world}")
    device = resolve_device(cfg)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise cfg.error("amp", "'fp16' needs CUDA", "none or bf16 on the CPU")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_parameters(model: torch.nn.Module):
    """CompressAI's convention: entropy-bottleneck quantiles train on the aux loss alone."""
    main, aux = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (aux if name.endswith(".quantiles") else main).append(p)
    return main, aux


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """Adam on the main loss and Adam on the aux loss (CompressAI's
    examples/train.py), the plateau schedule and fp16's scaler when chosen."""
    main_params, aux_params = split_parameters(model)
    main = torch.optim.Adam(main_params, lr=cfg.lr)
    aux = torch.optim.Adam(aux_params, lr=cfg.aux_lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        main, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience,
    ) if cfg.lr_schedule == "plateau" else None
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return Optimizers(main_params, main, aux, plateau, scaler)


def new_training(arch: str, arch_config: dict, cfg: TrainConfig, images: list[np.ndarray],
                 partitions: list[np.ndarray] | None, device: torch.device) -> TrainingState:
    """A run at step 0: the seeded model, its crop sampler and its optimizers."""
    seed_everything(cfg.seed)
    model = build_model(arch, arch_config).to(device).train()
    crops = RandomCrops(images, cfg.crop, cfg.seed) if partitions is None else \
        PartitionedCrops(images, partitions, cfg.crop, cfg.seed)
    return TrainingState(model, make_optimizers(model, cfg, device), crops)


# --- the steps -------------------------------------------------------------

@dataclass
class Loop:
    """What every step of a run uses, fixed from its first step to its last."""

    arch: str
    arch_config: dict
    lmbda: float
    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    forward: Callable  # the model as the steps call it (for_steps)
    state_path: str | Path | None
    log_metrics: Callable[[dict, int], None] | None
    criterion: RateDistortionLoss = field(init=False)

    def __post_init__(self):
        self.criterion = RateDistortionLoss(lmbda=self.lmbda)

    @property
    def key(self) -> str:
        return model_key(self.arch, self.lmbda)

    def failure(self, problem: str) -> TrainingError:
        """The error that stops a run at a step that went wrong."""
        return TrainingError(f"training {self.key}: {problem}; {no_state_or_last_good(self.state_path)}. "
                             "Lower the learning rate or check the data.")


@dataclass
class Session:
    """This process's part of a run: its steps (from the one after the saved
    state's, when resumed), their timing and the running means between two
    log lines."""

    bar: Iterator  # the steps, under a progress bar on the first process
    first: int
    seconds_before: float  # of the run, before this session
    start: float = field(default_factory=time.perf_counter)
    data_seconds: float = 0.0
    step_seconds: float = 0.0
    window: list[dict] = field(default_factory=list)  # each step's figures since the last log line

    @classmethod
    def begin(cls, loop: Loop, progress: Progress) -> Session:
        first = progress.step + 1
        bar = progress_bar(range(first, loop.cfg.steps + 1), desc=f"train {loop.key}", unit="step",
                           initial=first - 1, total=loop.cfg.steps, disable=loop.rank != 0)
        return cls(bar, first, progress.seconds)


def for_steps(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Callable:
    """``model`` as the steps call it: under DDP's wrapper when several
    processes train, compiled under ``train.compile``."""
    model = wrap_ddp(model, device)
    return torch.compile(model) if cfg.compile else model


def every(interval: int, step: int) -> bool:
    """Whether ``step`` is one of every ``interval`` (0: none is)."""
    return bool(interval) and step % interval == 0


def step_decay_lr(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * cfg.lr_factor ** sum(step > m for m in cfg.lr_milestones)


def next_batch(loop: Loop, crops: RandomCrops) -> tuple[torch.Tensor, ...]:
    """This process's share of the next batch, on the device: the images, then
    their partitions when the model takes them."""
    drawn = crops.batch(loop.cfg.batch_size, loop.rank, loop.world)
    tensors = drawn if isinstance(drawn, tuple) else (drawn,)
    return tuple(t.to(loop.device, non_blocking=True) for t in tensors)


def train_step(loop: Loop, training: TrainingState, batch: tuple[torch.Tensor, ...], step: int) -> dict:
    """One optimisation step on ``batch``: the rate-distortion loss through
    ``loop.forward`` (under DDP, gradients averaged over the processes), then
    the aux loss. Returns the step's figures, the losses averaged over the
    processes; a non-finite loss or gradient stops the run (``loop.failure``)."""
    cfg, opt, x = loop.cfg, training.optimizers, batch[0]
    if cfg.lr_schedule == "step":
        for group in opt.main.param_groups:
            group["lr"] = step_decay_lr(cfg, step)
    opt.main.zero_grad(set_to_none=True)
    opt.aux.zero_grad(set_to_none=True)
    amp_dtype = AMP_DTYPES[cfg.amp]
    with torch.autocast(loop.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = loop.forward(*batch)
    if amp_dtype is not None:  # the loss in float32: likelihoods near 0 underflow in 16 bits
        out = {"x_hat": out["x_hat"].float(),
               "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}
    losses = loop.criterion(out, x)
    loss = losses["loss"]
    (opt.scaler.scale(loss) if opt.scaler is not None else loss).backward()
    terms = all_reduce_mean(torch.stack([loss, losses["bpp_loss"], losses["mse_loss"]]).detach())
    loss_v, bpp_v, mse_v = terms.tolist()
    if not math.isfinite(loss_v):
        raise loop.failure(f"loss is {loss_v} at step {step} (bpp {bpp_v}, mse {mse_v})")
    if opt.scaler is not None:
        opt.scaler.unscale_(opt.main)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.main_params, cfg.clip_max_norm) \
        if cfg.clip_max_norm > 0 else \
        torch.nn.utils.get_total_norm([p.grad for p in opt.main_params if p.grad is not None])
    # fp16's scaler skips a step with an overflowed gradient by design.
    if opt.scaler is None and not math.isfinite(float(grad_norm)):
        raise loop.failure(f"gradient norm is {float(grad_norm)} at step {step} (loss {loss_v:.6g})")
    if opt.scaler is not None:
        opt.scaler.step(opt.main)
        opt.scaler.update()
    else:
        opt.main.step()
    aux_loss = training.model.aux_loss()  # on the module itself: DDP's wrapper has no aux_loss
    aux_loss.backward()
    opt.aux.step()
    return {"loss": loss_v, "bpp": bpp_v, "mse": mse_v, "aux_loss": aux_loss.item(),
            "grad_norm": float(grad_norm)}


def log_running_means(loop: Loop, training: TrainingState, session: Session, step: int) -> None:
    """The means of the steps since the last log line: on the progress bar, to
    ``log_metrics`` (first process) and into the progress (the summary's
    ``final``)."""
    window = session.window
    mean = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
    mean["psnr"] = 10 * math.log10(1.0 / mean["mse"]) if mean["mse"] > 0 else math.inf
    mean["lr"] = training.optimizers.main.param_groups[0]["lr"]
    session.bar.set_postfix(loss=f"{mean['loss']:.3f}", bpp=f"{mean['bpp']:.3f}", psnr=f"{mean['psnr']:.2f}")
    if loop.rank == 0 and loop.log_metrics is not None:
        speed = (step - session.first + 1) * loop.cfg.batch_size / (time.perf_counter() - session.start)
        loop.log_metrics({**{f"train/{k}": v for k, v in mean.items()}, "train/images_per_second": speed}, step)
    training.progress.last_train = mean
    window.clear()


# --- validation ------------------------------------------------------------

def validate(model, batch: torch.Tensor, criterion, batch_size: int, device) -> dict:
    """Loss, bpp, MSE and PSNR (of the mean MSE) on fixed crops, in eval mode
    (rounding instead of noise), averaged over the crops of every process."""
    sums = torch.zeros(4, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for chunk in batch.split(batch_size):
            x = chunk.to(device)
            losses = criterion(model(x), x)
            n = len(x)
            sums += torch.tensor([n, losses["loss"].item() * n, losses["bpp_loss"].item() * n,
                                  losses["mse_loss"].item() * n], dtype=torch.float64)
    model.train()
    sums = all_reduce_sum(sums)
    n, loss, bpp, mse = sums.tolist()
    mse /= n
    return {"loss": loss / n, "bpp": bpp / n, "mse": mse,
            "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf}


def run_validation(loop: Loop, training: TrainingState, batch: torch.Tensor, step: int) -> None:
    """Validate at ``step``: step the plateau schedule, keep the best weights,
    log one line, and stop early after ``early_stopping`` validations without
    improvement."""
    progress, cfg = training.progress, loop.cfg
    val = training.last_val = validate(training.model, batch, loop.criterion, cfg.batch_size, loop.device)
    if training.optimizers.plateau is not None:
        training.optimizers.plateau.step(val["loss"])
    if val["loss"] < progress.best_loss:
        progress.best_loss, progress.best_step, progress.bad_validations = val["loss"], step, 0
        training.best_weights = cpu_copy(training.model.state_dict())
    else:
        progress.bad_validations += 1
    if loop.rank == 0:
        log.info("train %s: validation at step %d: loss %.4f, %.4f bpp, %.2f dB PSNR (best: step %d)",
                 loop.key, step, val["loss"], val["bpp"], val["psnr"], progress.best_step)
        if loop.log_metrics is not None:
            loop.log_metrics({f"val/{k}": v for k, v in val.items()}, step)
    if cfg.early_stopping and progress.bad_validations >= cfg.early_stopping:
        log.info("early stopping at step %d: %d validation(s) without improvement "
                 "(best at step %d)", step, progress.bad_validations, progress.best_step)
        progress.stopped_early = True


# --- the end: summary, entropy models, checkpoint --------------------------

def summarize(loop: Loop, training: TrainingState, session: Session, resumed_from: int | None,
              elapsed: float) -> dict:
    """The run's summary (the stage's train.json), on every process: DDP must
    leave them all with the same weights, and ``last_weights_sha256`` shows it."""
    progress, batch_size = training.progress, loop.cfg.batch_size
    steps = progress.step - session.first + 1  # of this session

    def per_batch(seconds: float) -> float | None:
        return round(seconds / steps, 6) if steps > 0 else None

    summary = {
        "arch": loop.arch,
        **{k: int(v) for k, v in loop.arch_config.items()},
        "lambda": float(loop.lmbda),
        "steps": progress.step,
        "stopped_early": progress.stopped_early,
        "resumed_from": resumed_from,
        "processes": loop.world,
        "device": str(loop.device),
        "seconds": round(progress.seconds, 3),
        "images_per_second": round(steps * batch_size / elapsed, 3) if steps > 0 else None,
        "final": {k: round(v, 6) for k, v in progress.last_train.items()},
        "data_seconds_per_batch": per_batch(session.data_seconds),
        "step_seconds_per_batch": per_batch(session.step_seconds),
        "last_weights_sha256": weights_digest(training.model.state_dict()),
    }
    if loop.cfg.val_split is not None:
        summary.update(best_step=progress.best_step,
                       val={k: round(v, 6) for k, v in training.last_val.items()})
    return summary


def final_model(loop: Loop, training: TrainingState) -> torch.nn.Module:
    """The weights of the best validation (the last ones without validation),
    in eval mode, their entropy models updated for coding."""
    model = training.model
    if training.best_weights:
        model = build_model(loop.arch, loop.arch_config).to(loop.device)
        model.load_state_dict(training.best_weights)
    model.eval()
    # Quantiles by bisection on the learned density: exact where a short run
    # leaves the aux loss far from converged (CompressAI >= 1.2.7).
    update_entropy_models(model, update_quantiles=True)
    return model


def write_checkpoint(path: str | Path, model: torch.nn.Module, loop: Loop, progress: Progress,
                     meta: dict | None) -> str:
    """Write ``model``'s checkpoint to ``path``; return its weights' sha256."""
    best_step = progress.best_step if loop.cfg.val_split is not None else progress.step
    return save_checkpoint(path, model, loop.arch, loop.arch_config, loop.lmbda,
                           meta={**(meta or {}), "steps": progress.step, "seed": loop.cfg.seed,
                                 "best_step": best_step})


def summary_line(summary: dict, checkpoint_path: str | Path) -> str:
    """A finished training in one line: steps, time, last losses, best validation, checkpoint."""
    final = summary["final"]
    text = (f"train {model_key(summary['arch'], summary['lambda'])}: {summary['steps']} steps"
            f"{' (stopped early)' if summary['stopped_early'] else ''} in {summary['seconds']:.1f} s")
    if final:
        text += f"; last {final['loss']:.4f} loss, {final['bpp']:.4f} bpp, {final['psnr']:.2f} dB"
    if summary.get("val"):
        val = summary["val"]
        text += (f"; validation {val['loss']:.4f} loss, {val['bpp']:.4f} bpp, {val['psnr']:.2f} dB, "
                 f"best at step {summary['best_step']}")
    return f"{text}; {checkpoint_path} (weights {summary['weights_sha256'][:12]})"
