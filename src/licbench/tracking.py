"""MLflow: where every stage records what it did, and how runs are found again.

The default store is a SQLite file in the working directory, so
``mlflow ui --backend-store-uri sqlite:///mlruns.db`` shows every run;
``MLFLOW_TRACKING_URI`` points elsewhere (docs/team.md: a shared server).

The experiment is a model-training experiment (``mlflow.experimentKind``), and
carries saved views of its run list (``?viewStateShareKey=<key>``,
:data:`VIEWS`). Every run is started by :func:`stage_run`, which

- tags it with its stage, its item and its provenance (:func:`provenance_tags`:
  git commit, params hash, manifest hash, device, the versions of python and of
  the packages that make the results) and with the Prefect flow run that ran
  the stage, if one did (``prefect.flow_run_id``, from
  ``LICBENCH_PREFECT_FLOW_RUN_ID``, which the flows in ``licbench.flows`` set);
- finds the run again by a key, when the record has one: an evaluation is
  keyed by its weights, set and settings, a report by its inputs
  (:func:`run_key`), so that rerunning the same thing updates its record and
  anything else adds one;
- closes, as KILLED, the runs of the same stage item that a killed process
  on this host left RUNNING.

One run per training (train/mlflow_run.py), one per evaluation of a model on a
set, linked to the training run by the weights' hash (evaluate.py), one per
report and one per architecture it compares, linked to it (report/rd.py), one
per mask table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
TAG_STAGE = "licbench.stage"
TAG_ITEM = "licbench.item"          # the stage item: one record per item and key
TAG_KEY = "licbench.run_key"        # what the record is of (run_key), where it has one
TAG_MODEL_KEY = "licbench.model_key"
TAG_WEIGHTS = "licbench.weights_sha256"
TAG_TRAIN_RUN = "licbench.train_run_id"
TAG_REPORT_RUN = "licbench.report_run_id"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_HOST = "licbench.host"
TAG_COMMIT = "mlflow.source.git.commit"  # MLflow's own: the run list's Version column
FLOW_RUN_ENV = "LICBENCH_PREFECT_FLOW_RUN_ID"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# The packages whose versions can change a result or a record.
PACKAGES = ("torch", "compressai", "licbench", "dvc", "prefect", "mlflow")

# Saved views of the run list, opened by `#/experiments/<id>/runs?viewStateShareKey=<key>`
# (MLflow's shared view state: an experiment tag holding the search and the
# columns); `workflowType=machine_learning` opens the UI in its model-training
# mode, whatever it was left in (GenAI by default).
VIEWS = {
    "evaluations": {
        "searchFilter": f"tags.`{TAG_STAGE}` = 'evaluate'",
        "orderByKey": "metrics.`bpp`", "orderByAsc": True,
        "selectedColumns": ["params.`arch`", "params.`lambda`", "params.`dataset`",
                            "metrics.`bpp`", "metrics.`psnr`", "metrics.`ms_ssim`",
                            "metrics.`bpp_stream`", "metrics.`decode_seconds`"],
    },
    "trainings": {
        "searchFilter": f"tags.`{TAG_STAGE}` = 'train'",
        "orderByKey": "attributes.start_time", "orderByAsc": False,
        "selectedColumns": ["params.`arch`", "params.`lambda`", "params.`train.steps`",
                            "metrics.`train/loss`", "metrics.`train/bpp`", "metrics.`train/psnr`",
                            "metrics.`train/seconds`"],
    },
    "reports": {
        # One run per architecture (the BD-rates); the report run holds the files.
        "searchFilter": f"tags.`{TAG_STAGE}` = 'report' AND params.arch LIKE '%'",
        "orderByKey": "attributes.start_time", "orderByAsc": False,
        "selectedColumns": ["params.`arch`", "params.`dataset`", "metrics.`bd_rate_vs_jpeg`",
                            "metrics.`bd_psnr_vs_jpeg`", "metrics.`bd_rate_vs_published_vtm`"],
    },
}
VIEW_TAG = "mlflow.sharedViewState."
ML_MODE = "workflowType=machine_learning"


@dataclass(frozen=True)
class Target:
    """Where a stage logs (the experiment) and the params it ran with (their hash)."""

    experiment: str
    params_sha256: str


def target(params) -> Target:
    """The :class:`Target` of a stage run on ``params`` (a :class:`licbench.config.Params`)."""
    return Target(params.mlflow.experiment, params_sha256(params))


def params_sha256(params) -> str:
    """A hash of the validated params (every key, as the schema reads them), not of
    the file's bytes: comments and key order do not change it."""
    return run_key(params=params.model_dump(mode="json"))


def run_key(**parts) -> str:
    """The sha256 of ``parts`` as canonical JSON: the key of a record."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_experiment(name: str) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id.

    The experiment is created a model-training experiment with the saved views
    of :data:`VIEWS` (an existing one is given them). A SQLite store is opened
    (so created, on first use) and the experiment created under a file lock
    beside the database: MLflow creates a fresh store's tables without one, and
    two stages starting at once on it (two ``dvc exp run --queue`` workers, two
    ``python stages/train.py``) would crash one of them (``table experiments
    already exists``).
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
        if experiment is None:
            artifact_location = None
            if uri == DEFAULT_TRACKING_URI:
                # Keep artifacts beside the database, wherever `mlflow ui` is started from.
                artifact_location = Path("mlartifacts").resolve().as_uri()
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location,
                                                     tags=experiment_tags())
        else:
            experiment_id = experiment.experiment_id
            wanted = experiment_tags()
            client = mlflow.MlflowClient()
            for key, value in wanted.items():
                if experiment.tags.get(key) != value:
                    client.set_experiment_tag(experiment_id, key, value)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def experiment_tags() -> dict[str, str]:
    """The experiment's kind and its saved views (columns in the order listed)."""
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
            **{VIEW_TAG + key: json.dumps({**view, "columnOrder": view["selectedColumns"]})
               for key, view in VIEWS.items()}}


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def versions() -> dict[str, str]:
    """python's version and those of :data:`PACKAGES`."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance_tags(params_hash: str, *, device: str | None = None,
                    manifest_sha256: str | None = None) -> dict[str, str]:
    """Where a record comes from: the commit (``-dirty`` when tracked files
    changed), the params hash, the dataset manifest's hash, the device and the
    versions; the Prefect flow run that ran the stage, if any."""
    commit = git_commit()
    tags = {TAG_COMMIT: commit.removesuffix("-dirty"), "licbench.git_dirty": str(commit.endswith("-dirty")).lower(),
            "licbench.params_sha256": params_hash, TAG_HOST: socket.gethostname(),
            **{f"licbench.version.{k}": v for k, v in versions().items()}}
    if device is not None:
        tags["licbench.device"] = device
    if manifest_sha256 is not None:
        tags["licbench.manifest_sha256"] = manifest_sha256
    flow_run_id = os.environ.get(FLOW_RUN_ENV)
    if flow_run_id:
        tags[TAG_FLOW_RUN] = flow_run_id
    return tags


@contextlib.contextmanager
def stage_run(to: Target, *, stage: str, item: str, key: str | None = None,
              resume_run_id: str | None = None,
              device: str | None = None, manifest_sha256: str | None = None,
              tags: dict | None = None):
    """The MLflow run of one stage item, with its tags (:func:`provenance_tags`).

    Continues ``resume_run_id`` (a resumed training), else the run recorded
    under ``key``, if any, else starts one; first closes as KILLED the runs of
    the same item that a killed process left RUNNING. Yields ``(run, continued)``.
    """
    import mlflow

    experiment_id = use_experiment(to.experiment)
    run_id = resume_run_id or (find_run(experiment_id, {TAG_KEY: key}) if key else None)
    close_abandoned(experiment_id, stage, item, keep=run_id)
    all_tags = {TAG_STAGE: stage, TAG_ITEM: item, **({TAG_KEY: key} if key else {}),
                **provenance_tags(to.params_sha256, device=device, manifest_sha256=manifest_sha256),
                **(tags or {})}
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=item, tags=all_tags) as run:
        yield run, run_id is not None


def close_abandoned(experiment_id: str, stage: str, item: str, keep: str | None = None) -> list[str]:
    """Mark as KILLED the RUNNING runs of ``stage``'s ``item`` started on this
    host (but ``keep``): on one machine a stage item runs once at a time (DVC
    locks the workspace; a flow runs an item once), so a RUNNING one is what a
    killed process left. Another machine's, on a shared server, may be alive."""
    import mlflow

    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' AND tags.`{TAG_ITEM}` = '{item}' "
                      f"AND tags.`{TAG_HOST}` = '{socket.gethostname()}' AND attributes.status = 'RUNNING'",
        output_format="list")
    client = mlflow.MlflowClient()
    closed = []
    for run in found:
        if run.info.run_id != keep:
            client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("MLflow run %s of %s was left RUNNING (a killed process): closed as KILLED",
                        run.info.run_id, item)
            closed.append(run.info.run_id)
    return closed


def find_run(experiment_id: str, tags: dict[str, str]) -> str | None:
    """The newest run with these tags, if any."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=" AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items()),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def find_model_run(experiment_id: str, weights_sha256: str) -> str | None:
    """The newest training run that logged the model with these weights, if any."""
    return find_run(experiment_id, {TAG_STAGE: "train", TAG_WEIGHTS: weights_sha256})


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


def ui_links(experiment: str, base: str = "http://127.0.0.1:5000") -> list[tuple[str, str]]:
    """Links into ``mlflow ui`` at ``base``: the saved run lists (:data:`VIEWS`),
    then, per architecture and set, the compare view of its evaluations (the
    newest evaluation of each lambda). Raises LicbenchError when the store has
    no such experiment."""
    import mlflow

    from .errors import LicbenchError

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise LicbenchError(f"{uri}: no MLflow experiment {experiment!r}; run the pipeline first "
                            "(or set MLFLOW_TRACKING_URI to the store it logged to)")
    eid = found.experiment_id
    links = [(f"{view} (run list)", f"{base}/#/experiments/{eid}/runs?viewStateShareKey={view}&{ML_MODE}")
             for view in VIEWS]
    runs = mlflow.search_runs(experiment_ids=[eid], output_format="list",
                              filter_string=f"tags.`{TAG_STAGE}` = 'evaluate' AND attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    newest: dict[tuple[str, str], dict[float, str]] = {}
    for run in runs:
        p = run.data.params
        group = newest.setdefault((p.get("arch", "?"), p.get("dataset", "?")), {})
        group.setdefault(float(p.get("lambda", "nan")), run.info.run_id)
    for (arch, dataset), by_lambda in sorted(newest.items()):
        ids = [by_lambda[lm] for lm in sorted(by_lambda)]
        links.append((f"compare {arch} on {dataset} ({len(ids)} lambdas)",
                      f"{base}/#/compare-runs?runs={json.dumps(ids, separators=(',', ':'))}"
                      f"&experiments={json.dumps([eid])}&{ML_MODE}"))
    return links
