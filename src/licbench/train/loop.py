"""The training loop: ``train_model``, from a seeded or resumed state to the checkpoint."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from compressai.losses import RateDistortionLoss

from ..config import TrainConfig, resolve_device
from ..data.crops import PartitionedCrops, RandomCrops, center_crops
from ..errors import ConfigError, TrainingError
from ..models import (
    build_model, get_architecture, model_key, save_checkpoint, trains_with_partition, weights_digest,
)
from ..progress import progress as progress_bar
from .distributed import (
    all_reduce_mean, all_reduce_sum, broadcast_from_first, gather_from_all, rank_and_world, wrap_ddp,
)
from .state import (
    STATE_FORMAT, STATE_VERSION, cpu_copy, load_train_state, no_state_or_last_good, rng_state, save_train_state,
    set_rng_state, training_digest,
)

# The stage's log lines under one name, however the package is split.
log = logging.getLogger(__package__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


# --- the loop --------------------------------------------------------------

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


def step_decay_lr(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * cfg.lr_factor ** sum(step > m for m in cfg.lr_milestones)


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
    if trains_with_partition(arch, arch_config) != (partitions is not None):
        raise ConfigError(
            f"{arch} with {arch_config} trains {'with' if partitions is None else 'without'} region "
            f"partitions, but {'none were' if partitions is None else 'some were'} given")
    rank, world = rank_and_world()
    device = check_settings(arch, cfg, world)
    validating = bool(val_images) and cfg.val_split is not None
    if cfg.val_split is not None and not val_images:
        raise ConfigError(f"train.val_split = '{cfg.val_split}' but no validation image was given")
    # Repeatable runs: cuDNN's benchmark picks algorithms by timing, so two runs
    # of the same seed could train (and so code) differently.
    torch.backends.cudnn.benchmark = False

    seed_everything(cfg.seed)
    core = build_model(arch, arch_config).to(device).train()
    crops = RandomCrops(images, cfg.crop, cfg.seed) if partitions is None else \
        PartitionedCrops(images, partitions, cfg.crop, cfg.seed)
    val_batch = center_crops(val_images[rank::world], cfg.val_crop) if validating else None
    criterion = RateDistortionLoss(lmbda=lmbda)
    main_params, aux_params = split_parameters(core)
    optimizer = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=cfg.aux_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience,
    ) if cfg.lr_schedule == "plateau" else None
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    progress = {"step": 0, "best_loss": math.inf, "best_step": 0, "bad_validations": 0,
                "stopped_early": False, "seconds": 0.0, "last_train": {}}
    best_weights: dict = {}
    last_val: dict = {}
    run_id = (meta or {}).get("mlflow_run_id")

    digest = training_digest(arch, arch_config, lmbda, cfg, images, val_images, partitions)
    state = load_train_state(state_path, digest) if state_path is not None and rank == 0 else None
    state = broadcast_from_first(state)
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        aux_optimizer.load_state_dict(state["aux_optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        crops.set_state(state["data_rng"])
        progress.update(state["progress"])
        best_weights = dict(state["best_model"])
        last_val = dict(state["last_val"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
        else:
            log.warning("state saved by %d process(es), resumed by %d: random generators reseeded",
                        len(state["rng"]), world)
            torch.manual_seed(cfg.seed + 1000 * progress["step"] + rank)
        log.info("resuming %s from step %d (%s)", model_key(arch, lmbda), progress["step"], state_path)
    elif rank:
        torch.manual_seed(cfg.seed + rank)  # its own quantization noise
    resumed_from = progress["step"] if state is not None else None
    del state

    model = wrap_ddp(core, device)
    forward = torch.compile(model) if cfg.compile else model
    amp_dtype = AMP_DTYPES[cfg.amp]

    def make_state(finished: bool) -> dict:
        rngs = gather_from_all(rng_state())
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "digest": digest,
            "step": progress["step"], "finished": finished,
            "model": cpu_copy(core.state_dict()),
            "optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "data_rng": crops.state(), "rng": rngs, "progress": dict(progress),
            "best_model": best_weights, "last_val": last_val, "mlflow_run_id": run_id,
        }

    def run_validation(step: int) -> None:
        nonlocal best_weights, last_val
        last_val = validate(core, val_batch, criterion, cfg.batch_size, device)
        if scheduler is not None:
            scheduler.step(last_val["loss"])
        if last_val["loss"] < progress["best_loss"]:
            progress.update(best_loss=last_val["loss"], best_step=step, bad_validations=0)
            best_weights = cpu_copy(core.state_dict())
        else:
            progress["bad_validations"] += 1
        if rank == 0:
            log.info("train %s: validation at step %d: loss %.4f, %.4f bpp, %.2f dB PSNR (best: step %d)",
                     model_key(arch, lmbda), step, last_val["loss"], last_val["bpp"], last_val["psnr"],
                     progress["best_step"])
        if rank == 0 and log_metrics is not None:
            log_metrics({f"val/{k}": v for k, v in last_val.items()}, step)

    window: list[dict] = []
    data_seconds = step_seconds = 0.0
    session_start = time.perf_counter()
    seconds_before = progress["seconds"]
    first = progress["step"] + 1
    bar = progress_bar(range(first, cfg.steps + 1), desc=f"train {model_key(arch, lmbda)}", unit="step",
                       initial=first - 1, total=cfg.steps, disable=rank != 0)
    for step in bar:
        t0 = time.perf_counter()
        if partitions is None:
            x = crops.batch(cfg.batch_size, rank, world).to(device, non_blocking=True)
            inputs = (x,)
        else:
            x, partition = crops.batch(cfg.batch_size, rank, world)
            x = x.to(device, non_blocking=True)
            inputs = (x, partition.to(device, non_blocking=True))
        t1 = time.perf_counter()
        if cfg.lr_schedule == "step":
            for group in optimizer.param_groups:
                group["lr"] = step_decay_lr(cfg, step)
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = forward(*inputs)
        if amp_dtype is not None:  # the loss in float32: likelihoods near 0 underflow in 16 bits
            out = {"x_hat": out["x_hat"].float(),
                   "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}
        losses = criterion(out, x)
        loss = losses["loss"]
        (scaler.scale(loss) if scaler is not None else loss).backward()
        terms = all_reduce_mean(torch.stack([loss, losses["bpp_loss"], losses["mse_loss"]]).detach())
        loss_v, bpp_v, mse_v = terms.tolist()
        if not math.isfinite(loss_v):
            raise TrainingError(
                f"training {model_key(arch, lmbda)}: loss is {loss_v} at step {step} "
                f"(bpp {bpp_v}, mse {mse_v}); {no_state_or_last_good(state_path)}. "
                "Lower the learning rate or check the data."
            )
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(main_params, cfg.clip_max_norm) \
            if cfg.clip_max_norm > 0 else \
            torch.nn.utils.get_total_norm([p.grad for p in main_params if p.grad is not None])
        # fp16's scaler skips a step with an overflowed gradient by design.
        if scaler is None and not math.isfinite(float(grad_norm)):
            raise TrainingError(
                f"training {model_key(arch, lmbda)}: gradient norm is {float(grad_norm)} at step {step} "
                f"(loss {loss_v:.6g}); {no_state_or_last_good(state_path)}. "
                "Lower the learning rate or check the data."
            )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        aux_loss = core.aux_loss()  # on the module itself: DDP's wrapper has no aux_loss
        aux_loss.backward()
        aux_optimizer.step()
        t2 = time.perf_counter()
        data_seconds += t1 - t0
        step_seconds += t2 - t1
        progress["step"] = step

        record = {"loss": loss_v, "bpp": bpp_v, "mse": mse_v, "aux_loss": aux_loss.item(),
                  "grad_norm": float(grad_norm)}
        window.append(record)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
            mean["psnr"] = 10 * math.log10(1.0 / mean["mse"]) if mean["mse"] > 0 else math.inf
            mean["lr"] = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{mean['loss']:.3f}", bpp=f"{mean['bpp']:.3f}", psnr=f"{mean['psnr']:.2f}")
            if rank == 0 and log_metrics is not None:
                speed = (step - first + 1) * cfg.batch_size / (time.perf_counter() - session_start)
                log_metrics({**{f"train/{k}": v for k, v in mean.items()},
                             "train/images_per_second": speed}, step)
            progress["last_train"] = mean
            window.clear()
        if validating and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
            run_validation(step)
            if cfg.early_stopping and progress["bad_validations"] >= cfg.early_stopping:
                log.info("early stopping at step %d: %d validation(s) without improvement "
                         "(best at step %d)", step, progress["bad_validations"], progress["best_step"])
                progress["stopped_early"] = True
        progress["seconds"] = seconds_before + time.perf_counter() - session_start
        if progress["stopped_early"]:
            break
        if state_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 \
                and step < cfg.steps:
            final_state = make_state(finished=False)
            if rank == 0:
                save_train_state(state_path, final_state)
            del final_state
    session_seconds = time.perf_counter() - session_start
    session_steps = progress["step"] - first + 1

    # The final state is built before the model is changed below, and written
    # after the checkpoint: a kill in between resumes from the previous state.
    final_state = make_state(finished=True) if state_path is not None else None
    summary = {
        "arch": arch,
        **{k: int(v) for k, v in arch_config.items()},
        "lambda": float(lmbda),
        "steps": progress["step"],
        "stopped_early": progress["stopped_early"],
        "resumed_from": resumed_from,
        "processes": world,
        "device": str(device),
        "seconds": round(progress["seconds"], 3),
        "images_per_second": round(session_steps * cfg.batch_size / session_seconds, 3)
        if session_steps > 0 else None,
        "final": {k: round(v, 6) for k, v in progress.get("last_train", {}).items()},
        "data_seconds_per_batch": round(data_seconds / session_steps, 6) if session_steps > 0 else None,
        "step_seconds_per_batch": round(step_seconds / session_steps, 6) if session_steps > 0 else None,
    }
    # Every process: DDP must leave them all with the same weights.
    summary["last_weights_sha256"] = weights_digest(core.state_dict())
    if validating:
        summary.update(best_step=progress["best_step"],
                       val={k: round(v, 6) for k, v in last_val.items()})
    if rank == 0:
        model_out = core
        if best_weights:
            model_out = build_model(arch, arch_config).to(device)
            model_out.load_state_dict(best_weights)
        model_out.eval()
        # Quantiles by bisection on the learned density: exact where a short run
        # leaves the aux loss far from converged (CompressAI >= 1.2.7).
        model_out.update(force=True, update_quantiles=True)
        summary["weights_sha256"] = save_checkpoint(
            checkpoint_path, model_out, arch, arch_config, lmbda,
            meta={**(meta or {}), "steps": progress["step"], "seed": cfg.seed,
                  "best_step": progress["best_step"] if validating else progress["step"]},
        )
        if final_state is not None:
            save_train_state(state_path, final_state)
        log.info("%s", summary_line(summary, checkpoint_path))
    return summary


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
