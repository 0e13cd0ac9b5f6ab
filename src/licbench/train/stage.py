"""What ``stages/train.py`` runs: the stage's data read, checked and loaded,
the model trained on every process, the outputs written by the first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import TrainConfig
from ..data.trainset import load_training_set
from ..fileio import write_json_atomic
from ..models import trains_with_partition
from .distributed import process_group, rank_and_world
from .loop import check_settings, train_model
from .mlflow_run import train_with_mlflow
from ..tracking import Target

log = logging.getLogger(__package__)


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
    mlflow_to: Target,
) -> dict:
    """What ``stages/train.py`` runs: train, log to MLflow (``mlflow_to``, a
    :class:`licbench.tracking.Target`), write outs.

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

    with process_group(cfg.device):
        rank, world = rank_and_world()

        def train(log_metrics=None, meta=None) -> dict:
            return train_model(arch, arch_config, lmbda, cfg, images, checkpoint_path,
                               val_images=val_images, state_path=state_path,
                               log_metrics=log_metrics, meta=meta, partitions=partitions)

        if rank != 0:
            return train()
        summary = train_with_mlflow(mlflow_to, arch, arch_config, lmbda, cfg, manifest, images,
                                    val_images, state_path, world, train, partitions, masks_info)
        write_json_atomic(summary_path, summary)
        return summary
