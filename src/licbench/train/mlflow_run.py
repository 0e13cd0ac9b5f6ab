"""The train stage's MLflow run: started, or continued when the saved state
names one; its parameters, tags and metrics. What it hands the checkpoint
(the run's id, the manifest's digest) says where the weights come from, not
what they are."""

from __future__ import annotations

import logging

from ..device import device_name
from ..config import resolve_device
from ..data.datasets import manifest_digest
from ..models import model_key
from ..tracking import Target
from .state import load_train_state, training_digest

log = logging.getLogger(__package__)


def train_with_mlflow(to: Target, arch, arch_config, lmbda, cfg, manifest, images, val_images,
                      state_path, world, train, partitions=None, masks_info=None) -> dict:
    """Run ``train`` inside the model's MLflow run (``to``: a
    :class:`licbench.tracking.Target`): one run per training, continued by a
    resumed one."""
    import mlflow

    from .. import tracking

    key = model_key(arch, lmbda)
    saved = None
    if state_path is not None:
        saved = load_train_state(state_path, training_digest(arch, arch_config, lmbda, cfg, images,
                                                             val_images, partitions))
    run_id = saved["mlflow_run_id"] if saved is not None else None
    if run_id is not None:
        tracking.use_experiment(to.experiment)
        try:
            mlflow.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s of the saved state is not in this store: starting a new run", run_id)
            run_id = None
    digest = manifest_digest(manifest)
    with tracking.stage_run(to, stage="train", item=key, resume_run_id=run_id,
                            device=device_name(resolve_device(cfg)), manifest_sha256=digest,
                            tags={tracking.TAG_MODEL_KEY: key}) as (run, resumed):
        if not resumed:
            mlflow.log_params({
                "arch": arch,
                **arch_config,
                "lambda": lmbda,
                **{f"train.{k}": v for k, v in cfg.model_dump().items()},
                "train_images": len(images),
                "processes": world,
                **(masks_info or {}),
            })
        else:
            mlflow.set_tag("licbench.resumed_at_step", saved["step"])
        del saved
        summary = train(
            log_metrics=lambda m, step: mlflow.log_metrics(m, step=step),
            meta={"mlflow_run_id": run.info.run_id, "manifest_sha256": digest},
        )
        mlflow.set_tag(tracking.TAG_WEIGHTS, summary["weights_sha256"])
        mlflow.log_metrics({"train/seconds": summary["seconds"],
                            "train/images_per_second": summary["images_per_second"] or 0.0})
    return summary
