"""Prefect flows (licbench.flows) on tiny params, against Prefect's test harness:
the DAG flow leaves what `dvc repro` leaves, the lambda fan-out runs at once (on
a local Dask cluster of 2 workers), a failed item fails its task once (downloads
retry inside the stage command), bad input fails at once. The deployments, on
a real server and worker: test_deployments.py."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId,
                                            FlowRunFilterParentFlowRunId)
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO, copy_repo
from test_pipeline import TINY

from licbench import flows
from licbench.config import load_section, read_params_file, validate_params, with_overrides
from licbench.errors import ConfigError
from licbench.flows import StageFailed

BIN = Path(sys.executable).parent
# Two workers.
TINY_FLOWS = dict(TINY, prefect={"dask_address": None, "workers": 2})
LAMBDAS = ("mbt2018-mean-0.01", "mbt2018-mean-0.05")


def run(cmd, cwd, env=None, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc(*args, cwd, env=None):
    return run([str(BIN / "dvc"), *args], cwd, env).stdout


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def stage_env(mirror, monkeypatch):
    """What the stage commands see: the mirror, and the default MLflow store
    (mlruns.db in the repository)."""
    monkeypatch.setenv("LICBENCH_MIRROR", str(mirror))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(flows.DASK_ADDRESS_ENV, raising=False)


def subflow_task_runs(outer_flow_run_id) -> dict:
    """Task runs of the stage-items subflow of a flow run: name -> task run."""
    with get_client(sync_client=True) as client:
        [sub] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[outer_flow_run_id])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[sub.id])))
    return {r.name: r for r in runs}


def training_intervals(db: Path) -> dict[str, tuple[float, float]]:
    """Each training run's first and last logged train/loss (epoch seconds),
    as the stage processes themselves wrote them."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT r.name, MIN(m.timestamp), MAX(m.timestamp) FROM metrics m "
            "JOIN runs r ON r.run_uuid = m.run_uuid WHERE m.key = 'train/loss' GROUP BY r.name").fetchall()
    return {name: (lo / 1000, hi / 1000) for name, lo, hi in rows}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def show(title, intervals, origin):
    print(title)
    for name, (lo, hi) in sorted(intervals.items(), key=lambda kv: kv[1]):
        print(f"  {name:40s} {lo - origin:7.2f} .. {hi - origin:7.2f} s")


# ---------------------------------------------------------------- no flow runs


def test_stage_commands_exit_75_on_a_transient_download_and_1_on_bad_input(tmp_path):
    script = ("import sys\nfrom licbench.entry import run_main\nfrom licbench import errors\n"
              "def main():\n    raise getattr(errors, sys.argv[1])('kodim01.png: ' + sys.argv[1])\n"
              "run_main(main)\n")
    (tmp_path / "fail.py").write_text(script)
    for error, code in [("TransientDownloadError", 75), ("DownloadError", 1), ("ImageError", 1),
                        ("ChecksumError", 1)]:
        proc = run([sys.executable, "fail.py", error], tmp_path, check=False)
        assert proc.returncode == code, (error, proc.stderr)
        assert f"error: kodim01.png: {error}" in proc.stderr


def test_settings_items_and_their_errors(tmp_path, monkeypatch):
    repo = copy_repo(tmp_path / "repo", TINY)
    graph = flows.stage_graph(repo)
    assert list(graph)[0] == "datasets@kodak" and list(graph)[-1] == "report@kodak"
    assert graph["evaluate@mbt2018-mean-0.05-kodak"] == ["datasets@kodak", "train@mbt2018-mean-0.05"]
    items = flows.lambda_items(graph, validate_params(TINY), [0.05])
    # Every train item depends on the training set (the trainset stage), which
    # depends on every manifest and mask table index (SegPIC's partitions).
    assert flows.upstream_closure(graph, items) == [
        "datasets@kodak", "masks@kodak", "trainset", "train@mbt2018-mean-0.05",
        "evaluate@mbt2018-mean-0.05-kodak"]
    assert flows.upstream_closure(graph, ["report@kodak"], cut=("train",)) == [
        "datasets@kodak", "anchors@kodak", "evaluate@mbt2018-mean-0.01-kodak",
        "evaluate@mbt2018-mean-0.05-kodak", "report@kodak"]
    with pytest.raises(ConfigError, match=r"lambda 0.02 is not in params.yaml lambdas \['0.01', '0.05'\]"):
        flows.lambda_items(graph, validate_params(TINY), [0.02])
    with pytest.raises(ConfigError, match="no stage or stage item 'trian'"):
        flows.select(graph, ["trian"])
    assert flows.find_repo(repo / "src" / "licbench") == repo

    monkeypatch.delenv(flows.DASK_ADDRESS_ENV, raising=False)
    prefect = load_section(REPO / "params.yaml", "prefect", {"workers": 2, "dask_address": "tcp://a:1"})
    settings = flows.flow_settings(prefect)
    assert settings["dask_address"] == "tcp://a:1"
    assert settings["threads_per_task"] == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv(flows.DASK_ADDRESS_ENV, "tcp://b:2")
    assert flows.flow_settings(prefect)["dask_address"] == "tcp://b:2"
    with pytest.raises(ConfigError, match="params.yaml: prefect.workers: 0 is out of range; an integer >= 1"):
        load_section(REPO / "params.yaml", "prefect", {"workers": 0})
    with pytest.raises(ConfigError, match="params.yaml: prefect.retries: unknown key; known keys: dask_address"):
        load_section(REPO / "params.yaml", "prefect", {"retries": 2})


# ---------------------------------------------------------------- flow runs


def test_dag_flow_leaves_what_dvc_repro_leaves(harness, stage_env, tmp_path):
    repo = copy_repo(tmp_path / "flow", TINY_FLOWS)
    state = flows.dag(repo=str(repo), return_state=True)
    results = {r["item"]: r for r in state.result()}
    flow_run_id = str(state.state_details.flow_run_id)

    graph = flows.stage_graph(repo)
    assert sorted(results) == sorted(graph)
    assert {r["outcome"] for r in results.values()} == {"ran"}
    for item, deps in graph.items():  # every item started after what it needs had finished
        assert all(results[d]["end"] <= results[item]["start"] for d in deps), item
    # DVC's records are true: nothing is stale, and `dvc repro` has nothing to do.
    assert json.loads(dvc("status", "--json", cwd=repo)) == {}
    assert "Running stage" not in dvc("repro", cwd=repo)

    # Independent items ran at the same time (here anchors, masks and the
    # trainings compete for the 2 workers; the fan-out test below times the trainings).
    origin = min(r["start"] for r in results.values())
    show("items (thread pool, 2 workers):", {i: (r["start"], r["end"]) for i, r in results.items()}, origin)
    assert max(overlap((a["start"], a["end"]), (b["start"], b["end"]))
               for a in results.values() for b in results.values() if a is not b) > 0
    assert {r["slot"] for r in results.values()} == {0, 1}

    # Every MLflow run is tagged with the flow run that started it.
    with sqlite3.connect(repo / "mlruns.db") as con:
        tagged = dict(con.execute(
            "SELECT r.name, t.value FROM runs r LEFT JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'prefect.flow_run_id'").fetchall())
    assert sorted(tagged) == ["masks-kodak", "mbt2018-mean-0.01", "mbt2018-mean-0.01@kodak",
                              "mbt2018-mean-0.05", "mbt2018-mean-0.05@kodak",
                              "report-kodak", "report-kodak-mbt2018-mean"]
    assert set(tagged.values()) == {flow_run_id}

    # The same params through a plain `dvc repro` (same thread count: float32
    # training depends on it) record the same commands, parameters, data and
    # trained weights. Two runs of `dvc repro` differ, in any case, in the
    # checkpoint's MLflow run id and in the timings the metrics files and the
    # anchors' curves hold: those are compared by content (weights hash,
    # bitstream bytes, rates and qualities, BD-rates).
    plain = copy_repo(tmp_path / "plain", TINY_FLOWS)
    threads = str(results["train@mbt2018-mean-0.01"]["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    dvc("repro", cwd=plain, env=env)
    lock_flow = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    lock_plain = yaml.safe_load((plain / "dvc.lock").read_text())["stages"]
    assert sorted(lock_flow) == sorted(lock_plain) == sorted(graph)

    def with_run_ids_or_timings(path):
        return path.endswith("checkpoint.pt") or path.startswith(("data/metrics/", "data/anchors/"))

    def without_timings(curves):
        return {codec: {k: v for k, v in c["results"].items() if "time" not in k}
                for codec, c in curves.items()}

    def deps(lock, item):
        return [d for d in lock[item]["deps"] if not with_run_ids_or_timings(d["path"])]

    for item in graph:
        assert lock_flow[item]["cmd"] == lock_plain[item]["cmd"], item
        assert lock_flow[item].get("params") == lock_plain[item].get("params"), item
        assert deps(lock_flow, item) == deps(lock_plain, item), item
    assert lock_flow["datasets@kodak"]["outs"] == lock_plain["datasets@kodak"]["outs"]
    for key in LAMBDAS:
        summaries = [json.loads((r / f"models/{key}/train.json").read_text()) for r in (repo, plain)]
        assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]
        assert summaries[0]["final"] == summaries[1]["final"]
        streams = sorted((repo / f"data/eval/kodak/{key}/bitstreams").iterdir())
        assert [s.name for s in streams] == ["kodim01.lic", "kodim02.lic"]
        for s in streams:
            assert s.read_bytes() == (plain / f"data/eval/kodak/{key}/bitstreams" / s.name).read_bytes()
    curves = [json.loads((r / "data/anchors/kodak/curves.json").read_text()) for r in (repo, plain)]
    assert without_timings(curves[0]) == without_timings(curves[1])
    tables = [json.loads((r / "data/report/kodak/bd_table.json").read_text()) for r in (repo, plain)]
    for t in tables:  # the complexity rows hold each run's seconds per image
        t["complexity"] = [{k: v for k, v in row.items() if not k.endswith("_seconds")}
                           for row in t["complexity"]]
    assert tables[0] == tables[1]


def test_lambda_fanout_runs_at_once_on_dask_then_nightly_evaluation(harness, stage_env, tmp_path, monkeypatch):
    from distributed import LocalCluster

    # 200 steps (5 to 10 s here): longer than the few seconds by which DVC
    # staggers the start of two commands (each takes the repository lock to
    # check its item), so that trainings running at once overlap in what they log.
    params = dict(TINY_FLOWS, train=dict(TINY_FLOWS["train"], steps=200, log_every=25))
    repo = copy_repo(tmp_path / "repo", params)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, cluster.get_client() as client:
        # Warm both workers first (licbench.flows and torch imported, which a
        # task's first GPU count does): a cold worker starts its task seconds later.
        client.run(flows.visible_gpus)
        monkeypatch.setenv(flows.DASK_ADDRESS_ENV, cluster.scheduler_address)
        results = {r["item"]: r for r in flows.train_evaluate(lambdas=[0.01, 0.05], repo=str(repo))}
    assert sorted(results) == sorted(["datasets@kodak", "masks@kodak", "trainset"]
                                     + [f"train@{k}" for k in LAMBDAS]
                                     + [f"evaluate@{k}-kodak" for k in LAMBDAS])
    origin = min(r["start"] for r in results.values())
    tasks = {i: (results[f"train@{i}"]["start"], results[f"train@{i}"]["end"]) for i in LAMBDAS}
    logged = training_intervals(repo / "mlruns.db")
    workers = {i: results[f"train@{i}"]["dask_worker"] for i in LAMBDAS}
    show(f"train tasks on Dask workers {workers}:", tasks, origin)
    show("train/loss logged by the stage processes:", logged, origin)
    assert len(set(workers.values())) == 2 and None not in workers.values()
    assert overlap(*tasks.values()) > 0
    assert overlap(*(logged[i] for i in LAMBDAS)) > 0
    # Only what the flow was asked for (and needs) ran; the rest is still stale.
    assert set(json.loads(dvc("status", "--json", cwd=repo))) == {"anchors@kodak", "report@kodak"}

    # A newer checkpoint, trained outside the flows (as torchrun + `dvc commit` would leave it):
    # the nightly flow evaluates it, and only it, trains nothing, and writes the report.
    monkeypatch.delenv(flows.DASK_ADDRESS_ENV)
    params["train"] = dict(params["train"], steps=20)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "--single-item", "train@mbt2018-mean-0.05", cwd=repo)
    nightly = {r["item"]: r["outcome"] for r in flows.evaluate_newest(repo=str(repo))}
    print("nightly:", nightly)
    assert nightly == {"datasets@kodak": "up to date", "anchors@kodak": "ran",
                       "evaluate@mbt2018-mean-0.01-kodak": "up to date",
                       "evaluate@mbt2018-mean-0.05-kodak": "ran", "report@kodak": "ran"}
    # train@0.01 is stale (steps changed) and was left alone.
    assert set(json.loads(dvc("status", "--json", cwd=repo))) == {"train@mbt2018-mean-0.01"}


FLAKY = """\
import sys
from pathlib import Path
from licbench.entry import run_main
from licbench.errors import TransientDownloadError

def main():
    attempts = Path("attempts.txt")
    n = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(n))
    raise TransientDownloadError("http://example.org/set.tgz: failed after 6 attempt(s) without progress")

run_main(main)
"""


def test_a_transient_download_failure_fails_its_task_once(harness, tmp_path, monkeypatch):
    """Downloads retry inside the stage command (licbench.data.download): a
    datasets item that still exits 75 is not run again by the flow."""
    repo = tmp_path / "mini"
    repo.mkdir()
    (repo / "fetch.py").write_text(FLAKY)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"datasets": {
        "foreach": ["flaky"], "do": {"cmd": "python fetch.py ${item}", "deps": ["fetch.py"],
                                     "outs": ["data/${item}"]}}}}))
    # The flow reads a whole params file (it checks it as the stages do).
    (repo / "params.yaml").write_text(yaml.safe_dump(with_overrides(read_params_file(REPO / "params.yaml"), {
        "mlflow": {"experiment": "licbench"}, "prefect": {"workers": 1}}), sort_keys=False))
    (repo / ".gitignore").write_text("attempts.txt\nmlruns.db\nmlartifacts/\n")
    run(["git", "init", "-q"], repo)
    run([str(BIN / "dvc"), "init", "-q"], repo)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))

    state = flows.dag(repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match=r"datasets@flaky: error: http://example.org/set.tgz: failed") as caught:
        state.result()
    assert caught.value.exit_code == 75 and caught.value.transient
    assert (repo / "attempts.txt").read_text() == "1"
    task_run = subflow_task_runs(state.state_details.flow_run_id)["datasets@flaky"]
    assert task_run.run_count == 1 and task_run.state.is_failed()


def test_corrupt_image_fails_at_once(harness, stage_env, mirror, tmp_path, monkeypatch):
    """A corrupt image in the mirror is attempted once and named in the error."""
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror / "kodak", bad_mirror / "kodak")
    data = bytearray((bad_mirror / "kodak" / "kodim07.png").read_bytes())
    data[1000] ^= 0xFF
    (bad_mirror / "kodak" / "kodim07.png").write_bytes(bytes(data))
    monkeypatch.setenv("LICBENCH_MIRROR", str(bad_mirror))
    repo = copy_repo(tmp_path / "repo", TINY_FLOWS)

    state = flows.dag(targets=["datasets"], repo=str(repo), return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed, match=r"datasets@kodak: .*kodim07\.png.*sha256") as caught:
        state.result()
    assert caught.value.exit_code == 1 and not caught.value.transient
    task_run = subflow_task_runs(state.state_details.flow_run_id)["datasets@kodak"]
    assert task_run.run_count == 1 and task_run.state.is_failed()
    assert not (repo / "data/kodak/kodim07.png").exists()
