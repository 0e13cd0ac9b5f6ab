"""MLflow: one run per trained model, found again by its weights' hash.

The default store is a SQLite file in the working directory, so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run;
``MLFLOW_TRACKING_URI`` points elsewhere.

Every run starts through :func:`start_run`, which tags it with the Prefect flow
run that ran the stage (``prefect.flow_run_id``), when one did: the flows in
``licbench.flows`` pass its id to the stage commands in ``LICBENCH_PREFECT_FLOW_RUN_ID``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
TAG_MODEL_KEY = "licbench.model_key"
TAG_WEIGHTS = "licbench.weights_sha256"
TAG_FLOW_RUN = "prefect.flow_run_id"
FLOW_RUN_ENV = "LICBENCH_PREFECT_FLOW_RUN_ID"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_experiment(name: str) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id.

    A SQLite store is opened (so created, on first use) and the experiment
    created under a file lock beside the database: MLflow creates a fresh
    store's tables without one, and two stages starting at once on it (two
    ``dvc exp run --queue`` workers, two ``python stages/train.py``) would
    crash one of them (``table experiments already exists``).
    """
    # MLflow is slow to import; only the stages that log pay for it.
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    database = sqlite_path(uri)
    lock = FileLock(f"{database}.lock") if database else contextlib.nullcontext()
    with lock:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            mlflow.set_experiment(experiment_id=experiment.experiment_id)
            return experiment.experiment_id
        artifact_location = None
        if uri == DEFAULT_TRACKING_URI:
            # Keep artifacts beside the database, wherever `mlflow ui` is started from.
            artifact_location = Path("mlartifacts").resolve().as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def run_tags() -> dict[str, str]:
    """Tags every run gets: the Prefect flow run that started this stage, if any."""
    flow_run_id = os.environ.get(FLOW_RUN_ENV)
    return {TAG_FLOW_RUN: flow_run_id} if flow_run_id else {}


def start_run(**kwargs):
    """``mlflow.start_run`` with :func:`run_tags` added (also to a resumed run,
    which then names the flow run that last wrote to it)."""
    import mlflow

    tags = {**run_tags(), **(kwargs.pop("tags", None) or {})}
    return mlflow.start_run(**kwargs, tags=tags or None)


def find_model_run(experiment_id: str, weights_sha256: str) -> str | None:
    """The newest run that logged the model with these weights, if any."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_WEIGHTS}` = '{weights_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def git_commit(cwd: str | os.PathLike = ".") -> str:
    """HEAD's commit, with '-dirty' when tracked files changed; 'unknown' outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")
