"""The ``train`` stage: one model per lambda, loss R + lambda * 255^2 * MSE."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from compressai.losses import RateDistortionLoss
from tqdm import tqdm

from .data.crops import RandomCrops, load_split
from .data.datasets import manifest_digest, read_manifest
from .errors import ConfigError, LicbenchError
from .fileio import write_json_atomic
from .models import build_model, get_architecture, model_key, save_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    crop: int
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    log_every: int = 10
    dataset: str = "bsds500"
    split: str = "train"

    @classmethod
    def from_params(cls, section: dict) -> "TrainConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"params.yaml train: unknown key(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**section)
        for name in ("steps", "batch_size", "crop", "log_every"):
            if int(getattr(cfg, name)) < 1:
                raise ConfigError(f"params.yaml train.{name} must be at least 1")
        return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available")
    return torch.device(name)


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


def train_model(
    arch: str,
    arch_config: dict,
    lmbda: float,
    cfg: TrainConfig,
    images: list[np.ndarray],
    checkpoint_path: str | Path,
    *,
    log_metrics=None,
    meta: dict | None = None,
) -> dict:
    """Train, then write a checkpoint with updated CDF tables; return a summary.

    ``log_metrics(metrics: dict, step: int)`` receives the running losses.
    """
    spec = get_architecture(arch)
    if cfg.crop % spec.pad_multiple:
        raise ConfigError(
            f"train.crop = {cfg.crop}: {arch} needs crops that are a multiple of {spec.pad_multiple}"
        )
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(arch, arch_config).to(device).train()
    crops = RandomCrops(images, cfg.crop, cfg.seed)
    criterion = RateDistortionLoss(lmbda=lmbda)
    main_params, aux_params = split_parameters(model)
    optimizer = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=cfg.aux_lr)

    window: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"train {model_key(arch, lmbda)}", unit="step")
    for step in bar:
        x = crops.batch(cfg.batch_size).to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        out = model(x)
        losses = criterion(out, x)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise LicbenchError(
                f"training {model_key(arch, lmbda)}: loss is {loss.item()} at step {step}; "
                "no checkpoint written (lower the learning rate or check the data)"
            )
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(main_params, cfg.clip_max_norm) \
            if cfg.clip_max_norm > 0 else None
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()

        record = {
            "loss": loss.item(),
            "bpp": losses["bpp_loss"].item(),
            "mse": losses["mse_loss"].item(),
            "aux_loss": aux_loss.item(),
        }
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        window.append(record)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = {k: float(np.mean([r[k] for r in window])) for k in window[0]}
            mean["psnr"] = 10 * math.log10(1.0 / mean["mse"]) if mean["mse"] > 0 else math.inf
            bar.set_postfix(loss=f"{mean['loss']:.3f}", bpp=f"{mean['bpp']:.3f}", psnr=f"{mean['psnr']:.2f}")
            if log_metrics is not None:
                log_metrics({f"train/{k}": v for k, v in mean.items()}, step)
            last = mean
            window.clear()
    seconds = time.perf_counter() - start

    model.eval()
    # Quantiles by bisection on the learned density: exact where a short run
    # leaves the aux loss far from converged (CompressAI >= 1.2.7).
    model.update(force=True, update_quantiles=True)
    digest = save_checkpoint(
        checkpoint_path, model, arch, arch_config, lmbda,
        meta={**(meta or {}), "steps": cfg.steps, "seed": cfg.seed},
    )
    return {
        "arch": arch,
        **{k: int(v) for k, v in arch_config.items()},
        "lambda": float(lmbda),
        "steps": cfg.steps,
        "device": str(device),
        "seconds": round(seconds, 3),
        "images_per_second": round(cfg.steps * cfg.batch_size / seconds, 3),
        "final": {k: round(v, 6) for k, v in last.items()},
        "weights_sha256": digest,
    }


def architecture_config(params: dict, arch: str, lmbda: float) -> dict:
    """``architectures.<arch>`` from params, with its ``by_lambda`` override for
    this lambda applied (CompressAI, for one, uses larger N and M at high rates)."""
    try:
        config = dict(params["architectures"][arch])
    except (KeyError, TypeError):
        raise ConfigError(f"params.yaml architectures: no settings for '{arch}'") from None
    overrides = config.pop("by_lambda", None) or {}
    for key, values in overrides.items():
        if float(key) == float(lmbda):
            config.update(values)
    return config


def run_train_stage(
    params: dict,
    arch: str,
    lmbda: float,
    checkpoint_path: str | Path,
    summary_path: str | Path,
    data_root: str | Path = "data",
) -> dict:
    """What ``stages/train.py`` runs: read params, train, log to MLflow, write outs."""
    from . import tracking

    cfg = TrainConfig.from_params(dict(params["train"]))
    arch_config = architecture_config(params, arch, lmbda)
    data_root = Path(data_root)
    manifest = read_manifest(data_root / "manifests" / f"{cfg.dataset}.parquet")
    images, conversions = load_split(manifest, data_root, cfg.split)
    for conversion, count in conversions.items():
        log.warning("%d training image(s) converted: %s", count, conversion)

    import mlflow

    experiment_id = tracking.use_experiment(params.get("mlflow", {}).get("experiment", "licbench"))
    key = model_key(arch, lmbda)
    with mlflow.start_run(experiment_id=experiment_id, run_name=key) as run:
        mlflow.set_tags({tracking.TAG_MODEL_KEY: key, "licbench.stage": "train"})
        mlflow.log_params({
            "arch": arch,
            **arch_config,
            "lambda": lmbda,
            **{f"train.{k}": v for k, v in asdict(cfg).items()},
            "git_commit": tracking.git_commit(),
            "manifest_sha256": manifest_digest(manifest),
            "train_images": len(images),
        })
        summary = train_model(
            arch, arch_config, lmbda, cfg, images, checkpoint_path,
            log_metrics=lambda m, step: mlflow.log_metrics(m, step=step),
            meta={"mlflow_run_id": run.info.run_id, "manifest_sha256": manifest_digest(manifest)},
        )
        mlflow.set_tag(tracking.TAG_WEIGHTS, summary["weights_sha256"])
        mlflow.log_metrics({"train/seconds": summary["seconds"],
                            "train/images_per_second": summary["images_per_second"]})
    write_json_atomic(summary_path, summary)
    return summary
