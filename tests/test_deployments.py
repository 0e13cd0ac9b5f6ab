"""prefect.yaml on a real `prefect server` (127.0.0.1, its own PREFECT_HOME and
SQLite database in the test's folder), as docs/prefect.md has a user
do it: the deployments register, the scheduler creates the nightly
deployment's Scheduled flow runs, and a `prefect worker` picks up a deployment
run of stage items on tiny params and completes it."""

import datetime
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import REPO, copy_repo
from services import Service, free_port
from test_flows import TINY_FLOWS, run

BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
# The scheduler's loop for deployments changed in the last seconds runs every
# 5 s (PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS); on
# two busy cores the first runs may take a few loops.
SCHEDULED_WITHIN_S = 90


class PrefectServer:
    def __init__(self, api: str, env: dict, repo: Path, service: Service, deployed_at: datetime.datetime):
        self.api, self.env, self.repo, self.service, self.deployed_at = api, env, repo, service, deployed_at

    def client(self):
        """A synchronous client of this server (the test process's own
        settings name no server)."""
        with temporary_settings(updates={PREFECT_API_URL: self.api}):
            return get_client(sync_client=True)

    def assert_scheduler_ok(self) -> None:
        """No scheduler loop has failed (SQLAlchemy 2.1 failed every one of them)."""
        failed = [line for line in self.service.log.read_text(errors="replace").splitlines()
                  if "ERROR" in line and "schedule_" in line]
        assert not failed, f"the scheduler failed: {failed[0]}\n{self.service.tail()}"

    def deployment(self, name: str):
        with self.client() as client:
            return client.read_deployment_by_name(name)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """The server, the `licbench` process work pool and `prefect deploy --all`
    run in a tiny copy of the repository."""
    tmp = tmp_path_factory.mktemp("prefect")
    repo = copy_repo(tmp / "repo", TINY_FLOWS)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp / "home"), PREFECT_API_URL=api,
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="false",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlruns.db'}", LICBENCH_CACHE=str(tmp / "cache"),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PWD=str(repo),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    env.pop("LICBENCH_MIRROR", None)
    server = Service("prefect server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     tmp / "server.log", env=env, cwd=tmp)
    with server:
        server.wait_http(f"{api}/health", timeout=120)
        run([PREFECT, "work-pool", "create", "licbench", "--type", "process"], repo, env)
        deployed_at = datetime.datetime.now(datetime.timezone.utc)
        out = run([PREFECT, "--no-prompt", "deploy", "--all"], repo, env).stdout
        assert "prefect worker start --pool 'licbench'" in out
        yield PrefectServer(api, env, repo, server, deployed_at)


def test_deployments_register_and_the_nightly_schedule_fires(prefect_server):
    with prefect_server.client() as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
    assert sorted(deployments) == ["licbench-dag/manual", "licbench-evaluate-newest/nightly",
                                   "licbench-train-evaluate/manual"]
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(prefect_server.repo)}}]
    for d in deployments.values():
        assert d.work_pool_name == "licbench" and d.pull_steps == pull
    nightly = deployments["licbench-evaluate-newest/nightly"]
    assert nightly.entrypoint == "pipelines/evaluate_newest.py:evaluate_newest"
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [
        ("0 2 * * *", "UTC", True)]
    assert deployments["licbench-dag/manual"].schedules == []

    # The scheduler creates the next nights' runs by itself.
    deadline = time.monotonic() + SCHEDULED_WITHIN_S
    while True:
        with prefect_server.client() as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
        if runs:
            break
        prefect_server.service.check_alive()
        prefect_server.assert_scheduler_ok()
        assert time.monotonic() < deadline, (
            f"no flow run of the nightly deployment {SCHEDULED_WITHIN_S} s after `prefect deploy`\n"
            + prefect_server.service.tail())
        time.sleep(1)
    starts = sorted(r.expected_start_time for r in runs)
    print(f"{len(runs)} scheduled runs of licbench-evaluate-newest/nightly, from {starts[0]} to {starts[-1]}")
    assert {r.state.type.value for r in runs} == {"SCHEDULED"}
    assert {r.state.name for r in runs} == {"Scheduled"}
    # 02:00 UTC on consecutive nights, the first within a day of the deployment.
    assert all((s.hour, s.minute, s.second) == (2, 0, 0) for s in starts)
    assert [b - a for a, b in zip(starts, starts[1:])] == [datetime.timedelta(days=1)] * (len(starts) - 1)
    prefect_server.assert_scheduler_ok()
    assert prefect_server.deployed_at < starts[0] <= prefect_server.deployed_at + datetime.timedelta(days=1)


def test_worker_runs_a_deployment_run_of_stage_items(prefect_server, mirror):
    """`prefect deployment run licbench-dag/manual` with targets = masks@kodak
    (the datasets and masks items on tiny params): a process worker picks the
    run up, runs both items in the deployed checkout, and the run completes."""
    repo = prefect_server.repo
    # Poll every second, and take only runs that are due (not the nightly ones).
    env = dict(prefect_server.env, LICBENCH_MIRROR=str(mirror), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_WORKER_PREFETCH_SECONDS="1")
    log = prefect_server.service.log.with_name("worker.log")
    with Service("prefect worker", [PREFECT, "worker", "start", "--pool", "licbench", "--type", "process"],
                 log, env=env, cwd=repo.parent) as worker:
        out = run([PREFECT, "deployment", "run", "licbench-dag/manual",
                   "--param", 'targets=["masks@kodak"]'], repo, env).stdout
        deployment = prefect_server.deployment("licbench-dag/manual")
        deadline = time.monotonic() + 300
        while True:
            with prefect_server.client() as client:
                [flow_run] = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            if flow_run.state.is_final():
                break
            worker.check_alive()
            assert time.monotonic() < deadline, (
                f"flow run {flow_run.id} still {flow_run.state.name} after 300 s\n{worker.tail()}")
            time.sleep(1)
    assert str(flow_run.id) in out
    assert flow_run.state.is_completed(), f"{flow_run.state.name}: {flow_run.state.message}\n{worker.tail()}"
    assert flow_run.parameters == {"targets": ["masks@kodak"]}
    worker_log = log.read_text()
    assert f"submitting flow run '{flow_run.id}'" in worker_log, worker.tail()

    # The stage items ran in the deployed checkout, as `dvc repro` would have
    # run them, and the masks stage's MLflow run names the flow run.
    status = run([str(BIN / "dvc"), "status", "--json", "datasets@kodak", "masks@kodak"], repo, env).stdout
    assert status.strip() == "{}"
    assert (repo / "data/metrics/masks/kodak.json").is_file()
    with sqlite3.connect(Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))) as con:
        tagged = dict(con.execute(
            "SELECT r.name, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "AND t.key = 'prefect.flow_run_id'").fetchall())
    assert tagged == {"masks-kodak": str(flow_run.id)}
