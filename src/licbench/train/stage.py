"""What ``stages/train.py`` runs: the stage's data read, checked and loaded,
the model trained on every process, the outputs written by the first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import TrainConfig
from ..data.crops import load_partitions, load_split
from ..data.datasets import read_manifest
from ..fileio import write_json_atomic
from ..models import trains_with_partition
from .distributed import process_group, rank_and_world
from .loop import check_settings, train_model
from .mlflow_run import train_with_mlflow

log = logging.getLogger(__package__)


def check_crops(cfg: TrainConfig, manifest) -> None:
    """Refuse crops larger than the smallest image they are cut from (the
    manifest's sizes: before any image is loaded)."""
    rows = list(zip(manifest["path"].to_pylist(), manifest["split"].to_pylist(),
                    manifest["width"].to_pylist(), manifest["height"].to_pylist()))
    for field, split, limit in (("crop", cfg.split, None), ("val_crop", cfg.val_split, cfg.val_images)):
        chosen = sorted(r for r in rows if r[1] == split)[:limit] if split is not None else []
        if not chosen:
            continue  # no image at all: load_split says so
        path, _, width, height = min(chosen, key=lambda r: min(r[2], r[3]))
        size = getattr(cfg, field)
        if size > min(width, height):
            raise cfg.error(field, f"{size} is larger than {path} ({width} x {height}), the smallest "
                            f"image of {cfg.dataset} {split}", f"at most {min(width, height)}")


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
    resumed from ``state_path`` logs into the MLflow run it started. An
    architecture that trains with region partitions reads them from the masks
    stage's table of the training set, ``<data_root>/masks/<train.dataset>``.
    """
    # Before any work: torchrun's WORLD_SIZE is the number of processes to come.
    check_settings(arch, cfg, int(os.environ.get("WORLD_SIZE", "1")))
    data_root = Path(data_root)
    manifest = read_manifest(data_root / "manifests" / f"{cfg.dataset}.parquet")
    check_crops(cfg, manifest)
    images, conversions = load_split(manifest, data_root, cfg.split)
    for conversion, count in conversions.items():
        log.warning("%d training image(s) converted: %s", count, conversion)
    val_images = None
    if cfg.val_split is not None:
        val_images, _ = load_split(manifest, data_root, cfg.val_split, limit=cfg.val_images)
    partitions, masks_info = None, {}
    if trains_with_partition(arch, arch_config):
        from ..masks import load_masks

        masks = load_masks(data_root / "masks" / cfg.dataset, manifest)
        partitions = load_partitions(masks, manifest, cfg.split, images)
        masks_info = {"masks_settings_sha256": masks.metadata.get("settings_sha256"),
                      "masks_generator": masks.metadata.get("generator")}

    with process_group(cfg.device):
        rank, world = rank_and_world()

        def train(log_metrics=None, meta=None) -> dict:
            return train_model(arch, arch_config, lmbda, cfg, images, checkpoint_path,
                               val_images=val_images, state_path=state_path,
                               log_metrics=log_metrics, meta=meta, partitions=partitions)

        if rank != 0:
            return train()
        summary = train_with_mlflow(experiment, arch, arch_config, lmbda, cfg, manifest, images,
                                    val_images, state_path, world, train, partitions, masks_info)
        write_json_atomic(summary_path, summary)
        return summary
