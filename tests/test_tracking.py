"""The MLflow store and its records.

Two stage processes that start at once on a fresh SQLite store both get it
(MLflow's own first creation races: `table ... already exists`). One run per
training, one per evaluation keyed by weights, set and settings, each with its
provenance; a run a killed process left RUNNING is closed when its stage reruns."""

import json
import os
import subprocess
import sys

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import REPO
from licbench import tracking
from licbench.config import load_section
from licbench.data.datasets import manifest_digest
from licbench.evaluate import log_evaluation
from licbench.train.mlflow_run import train_with_mlflow

# Both processes import MLflow first, then meet (each waits for the other's
# file), then open the store: the race is in creating it, not in the imports.
WORKER = """
import sys, time
from pathlib import Path
import mlflow
from licbench.tracking import use_experiment
me, other = Path(sys.argv[1] + ".ready"), Path(sys.argv[2] + ".ready")
me.touch()
while not other.exists():
    time.sleep(0.001)
print(use_experiment("licbench"))
"""


def test_two_processes_create_a_fresh_store_at_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                     os.environ.get("PYTHONPATH")])))
    for attempt in range(2):  # each a fresh store: without the lock, one of two crashed every time here
        db = tmp_path / f"mlruns-{attempt}.db"
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
        a, b = tmp_path / f"a{attempt}", tmp_path / f"b{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(x), str(y)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for x, y in ((a, b), (b, a))]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        # One experiment, the same for both.
        assert outs[0][0].split() == outs[1][0].split() and len(outs[0][0].split()) == 1


# --- the records: one run per training, per evaluation, per report ---------------


TO = tracking.Target("licbench", "p" * 64)
TRAIN = load_section(REPO / "params.yaml", "train", {"device": "cpu"})
EVALUATE = load_section(REPO / "params.yaml", "evaluate", {"device": "cpu"})
MANIFEST = pa.table({"path": ["kodak/kodim01.png"], "sha256": ["a" * 64], "split": ["test"]})


def summary_of(lmbda, bpp, psnr, arch="toy"):
    """An evaluation summary with the keys the evaluate stage writes."""
    return {"dataset": "kodak", "model": f"{arch}-{lmbda!r}", "arch": arch, "lambda": lmbda,
            "weights_sha256": f"{arch}-{lmbda}".ljust(64, "0"), "manifest_sha256": "m" * 64,
            "images": 1, "bpp": bpp, "bpp_stream": bpp * 0.99, "psnr": psnr, "ms_ssim": 0.9,
            "encode_seconds": 0.1, "decode_seconds": 0.2, "device": "cpu: test, 1 threads",
            "complexity": {"params_total": 1000, "kmac_per_pixel": 12.5, "measured_on": "kodak/kodim01.png"},
            "metrics": {"psnr": "licbench", "ms_ssim": "pytorch-msssim"}}


def log_training(summary, to=TO):
    """The train stage's run (its own function), around a training that logs two steps."""
    def train(log_metrics, meta):
        for step in (1, 2):
            log_metrics({"train/loss": 1.0 / step, "train/bpp": summary["bpp"],
                         "train/psnr": summary["psnr"]}, step)
        return {"weights_sha256": summary["weights_sha256"], "seconds": 1.0, "images_per_second": 8.0}

    train_with_mlflow(to, summary["arch"], {"N": 8, "M": 8}, summary["lambda"], TRAIN, MANIFEST,
                      ["kodak/kodim01.png"], [], None, 1, train)


def log_evaluated(summary, tmp_path, cfg=EVALUATE, to=TO):
    per_image = tmp_path / "per_image.parquet"
    pq.write_table(pa.table({"image": ["kodak/kodim01.png"], "bpp": [summary["bpp"]]}), per_image)
    return log_evaluation(to, summary, cfg, per_image)


def test_an_evaluation_is_a_run_of_its_own_keyed_by_weights_set_and_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = summary_of(0.01, 0.3, 30.0)
    log_training(summary)
    first = log_evaluated(summary, tmp_path)
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name("licbench")
    # A model-training experiment, with the saved run lists.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.evaluations"])
    assert "metrics.`psnr`" in view["selectedColumns"] and "params.`lambda`" in view["selectedColumns"]

    train_run = client.get_run(tracking.find_model_run(experiment.experiment_id, summary["weights_sha256"]))
    run = client.get_run(first)
    assert run.info.run_id != train_run.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "toy-0.01@kodak"
    assert run.data.params["lambda"] == "0.01" and run.data.params["dataset"] == "kodak"
    assert run.data.metrics["bpp"] == 0.3 and run.data.metrics["psnr"] == 30.0
    assert run.data.metrics["complexity/kmac_per_pixel"] == 12.5
    assert run.data.tags[tracking.TAG_TRAIN_RUN] == train_run.info.run_id
    assert f"runs/{train_run.info.run_id})" in run.data.tags["mlflow.note.content"]
    assert train_run.data.metrics["train/loss"] == 0.5
    assert len(client.get_metric_history(train_run.info.run_id, "train/loss")) == 2

    # The same evaluation again updates its record; another setting adds one,
    # and the first keeps its value.
    assert log_evaluated(summary, tmp_path) == first
    other = log_evaluated({**summary, "psnr": 29.0}, tmp_path,
                          cfg=load_section(REPO / "params.yaml", "evaluate", {"device": "cpu", "max_images": 1}))
    assert other != first
    assert client.get_run(first).data.metrics["psnr"] == 30.0
    assert client.get_run(other).data.params["evaluate.max_images"] == "1"
    evaluations = client.search_runs([experiment.experiment_id], "tags.`licbench.stage` = 'evaluate'")
    assert len(evaluations) == 2


def test_every_run_carries_its_provenance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.FLOW_RUN_ENV, "flow-run-1")
    summary = summary_of(0.01, 0.3, 30.0)
    log_training(summary)
    log_evaluated(summary, tmp_path)
    experiment = mlflow.get_experiment_by_name("licbench")
    runs = mlflow.MlflowClient().search_runs([experiment.experiment_id])
    assert {r.data.tags["licbench.stage"] for r in runs} == {"train", "evaluate"}
    for run in runs:
        tags = run.data.tags
        assert tags["licbench.params_sha256"] == "p" * 64
        assert len(tags["mlflow.source.git.commit"]) in (7, 40) or tags["mlflow.source.git.commit"] == "unknown"
        assert tags["licbench.git_dirty"] in ("true", "false")
        assert tags["licbench.device"].startswith("cpu")
        assert tags["prefect.flow_run_id"] == "flow-run-1"
        for package in ("python", "torch", "compressai", "licbench", "dvc", "prefect", "mlflow"):
            assert tags[f"licbench.version.{package}"][0].isdigit(), (package, tags[f"licbench.version.{package}"])
    by_stage = {r.data.tags["licbench.stage"]: r.data.tags for r in runs}
    assert by_stage["train"]["licbench.manifest_sha256"] == manifest_digest(MANIFEST)
    assert by_stage["evaluate"]["licbench.manifest_sha256"] == "m" * 64


# A stage process killed inside its run (os._exit: no clean-up, as kill -9).
KILLED = """
import os, sys
from licbench import tracking
with tracking.stage_run(tracking.Target("licbench", "p" * 64), stage="train", item="toy-0.01"):
    os._exit(9)
"""


def test_a_run_killed_before_it_ended_is_closed_when_its_stage_reruns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                     os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", KILLED], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr[-2000:]
    tracking.use_experiment("licbench")
    (left,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert left.info.status == "RUNNING"
    # The rerun (a training from scratch: no saved state) closes it and opens its own run.
    log_training(summary_of(0.01, 0.3, 30.0))
    runs = {r.info.run_id: r.info.status for r in mlflow.search_runs(search_all_experiments=True,
                                                                      output_format="list")}
    assert runs.pop(left.info.run_id) == "KILLED"
    assert list(runs.values()) == ["FINISHED"]
