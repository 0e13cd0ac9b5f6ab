"""The ``train`` stage: one model per lambda, loss R + lambda * 255^2 * MSE.

A run survives being killed: every ``checkpoint_every`` steps the whole
training state (model, both optimizers, learning-rate schedule, AMP scaler,
step, the random generators of Python, NumPy, torch, CUDA and the crop
sampler) is written atomically to a state file, and a rerun with the same
settings resumes from it; on the CPU the resumed run ends with exactly the
weights of an uninterrupted one. Several GPUs or machines are used through
PyTorch DDP when the stage is launched by ``torchrun``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from compressai.losses import RateDistortionLoss

from .data.crops import PartitionedCrops, RandomCrops, center_crops
from .data.datasets import manifest_digest
from .data.trainset import load_training_set
from .config import TrainConfig, resolve_device
from .errors import CheckpointError, ConfigError, PickledCodeError, TrainingError
from .fileio import load_tensors, save_tensors, write_json_atomic
from .models import (
    build_model, get_architecture, model_key, save_checkpoint, trains_with_partition, weights_digest,
)
from .progress import progress as progress_bar

log = logging.getLogger(__name__)

STATE_FORMAT = "licbench-train-state"
STATE_VERSION = 1
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Settings that do not change the trained weights: a state saved under other
# values of these still resumes (e.g. a run moved from one machine to another).
NOT_IN_DIGEST = ("log_every", "checkpoint_every", "device")


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


# --- several processes (torchrun) ------------------------------------------

def init_distributed(device_name: str) -> bool:
    """Join the process group when torchrun started more than one process.

    Returns whether this call created the group (and should destroy it).
    gloo on the CPU, NCCL on CUDA; torchrun's environment (MASTER_ADDR, RANK,
    WORLD_SIZE, LOCAL_RANK) says where the others are.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over processes (each process's values are means over its equal share)."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# --- resumable state -------------------------------------------------------

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


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


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
    if world > 1:
        box = [state]
        dist.broadcast_object_list(box, src=0)  # no shared file system needed
        state = box[0]
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

    model = core
    if world > 1:
        # The quantiles train on the aux loss alone, outside the forward pass:
        # DDP would wait for their gradients forever. The aux loss depends only
        # on parameters every process holds equal, so each process computes the
        # same aux gradients and their copies stay equal without a reduction.
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            core, [n for n, p in core.named_parameters() if n.endswith(".quantiles")])
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,  # CDF tables: constant while training
        )
    forward = torch.compile(model) if cfg.compile else model
    amp_dtype = AMP_DTYPES[cfg.amp]

    def make_state(finished: bool) -> dict:
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION, "digest": digest,
            "step": progress["step"], "finished": finished,
            "model": _cpu_copy(core.state_dict()),
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
            best_weights = _cpu_copy(core.state_dict())
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


def run_train_stage(
    cfg: TrainConfig,
    arch: str,
    arch_config: dict,
    lmbda: float,
    checkpoint_path: str | Path,
    summary_path: str | Path,
    data_root: str | Path = "data",
    state_path: str | Path | None = None,
    *,
    experiment: str,
) -> dict:
    """What ``stages/train.py`` runs: train, log to MLflow (``experiment``), write outs.

    ``arch_config``: ``architectures.<arch>`` for this lambda
    (:meth:`licbench.config.Params.architecture`). Under ``torchrun`` every
    process trains; the first one alone logs to MLflow and writes files. A run
    resumed from ``state_path`` logs into the MLflow run it started. The
    training set is the union of ``train.datasets``
    (:func:`licbench.data.trainset.load_training_set`); an architecture that
    trains with region partitions reads them from each set's mask table.
    """
    # Before any work: torchrun's WORLD_SIZE is the number of processes to come.
    check_settings(arch, cfg, int(os.environ.get("WORLD_SIZE", "1")))
    manifest, images, val_images, partitions, masks_info = load_training_set(
        cfg, data_root, partitions=trains_with_partition(arch, arch_config))

    created_group = init_distributed(cfg.device)
    try:
        rank, world = rank_and_world()

        def train(log_metrics=None, meta=None) -> dict:
            return train_model(arch, arch_config, lmbda, cfg, images, checkpoint_path,
                               val_images=val_images, state_path=state_path,
                               log_metrics=log_metrics, meta=meta, partitions=partitions)

        if rank != 0:
            return train()
        summary = _train_with_mlflow(experiment, arch, arch_config, lmbda, cfg, manifest, images,
                                     val_images, state_path, world, train, partitions, masks_info)
        write_json_atomic(summary_path, summary)
        return summary
    finally:
        if created_group:
            dist.destroy_process_group()


def _train_with_mlflow(experiment, arch, arch_config, lmbda, cfg, manifest, images, val_images,
                       state_path, world, train, partitions=None, masks_info=None) -> dict:
    import mlflow

    from . import tracking

    experiment_id = tracking.use_experiment(experiment)
    key = model_key(arch, lmbda)
    saved = None
    if state_path is not None:
        saved = load_train_state(state_path, training_digest(arch, arch_config, lmbda, cfg, images,
                                                             val_images, partitions))
    run_id = saved["mlflow_run_id"] if saved is not None else None
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of the saved state is not in this store: starting a new run", run_id)
            run_id = None
    with tracking.start_run(run_id=run_id, experiment_id=experiment_id, run_name=key) as run:
        if run_id is None:
            mlflow.set_tags({tracking.TAG_MODEL_KEY: key, "licbench.stage": "train"})
            mlflow.log_params({
                "arch": arch,
                **arch_config,
                "lambda": lmbda,
                **{f"train.{k}": v for k, v in cfg.model_dump().items()},
                "git_commit": tracking.git_commit(),
                "manifest_sha256": manifest_digest(manifest),
                "train_images": len(images),
                "processes": world,
                **(masks_info or {}),
            })
        else:
            mlflow.set_tag("licbench.resumed_at_step", saved["step"])
        del saved
        summary = train(
            log_metrics=lambda m, step: mlflow.log_metrics(m, step=step),
            meta={"mlflow_run_id": run.info.run_id, "manifest_sha256": manifest_digest(manifest)},
        )
        mlflow.set_tag(tracking.TAG_WEIGHTS, summary["weights_sha256"])
        mlflow.log_metrics({"train/seconds": summary["seconds"],
                            "train/images_per_second": summary["images_per_second"] or 0.0})
    return summary
