"""The team setup of docs/team.md: a shared `mlflow server` with a PostgreSQL
backend store and an artifact root of its own, and the train and evaluate
stages (tiny params, `dvc repro` in a copy of the repository) logging to it
through MLFLOW_TRACKING_URI.

PostgreSQL is Debian's (`make postgres` installs it; CI does): a throwaway
cluster (initdb, then the server in the foreground on 127.0.0.1 and a free
port, password authentication) in a temporary folder. PostgreSQL refuses to
run as root; as root (CI) the cluster belongs to, and runs as, the `postgres`
system user Debian's package creates. Without PostgreSQL the test is skipped,
unless LICBENCH_REQUIRE_POSTGRES=1 (set by .ci/run) makes that a failure.
"""

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import copy_repo
from services import Service, free_port
from test_pipeline import TINY, run

BIN = Path(sys.executable).parent
KEY = "mbt2018-mean-0.01"


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: on PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                  key=lambda p: [int(n) for n in Path(p).parts[-3].split(".") if n.isdigit()])
    return Path(dirs[-1]).parent if dirs else None


def absent(reason: str):
    if os.environ.get("LICBENCH_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason}: run `make postgres` (Debian's postgresql)")
    pytest.skip(f"{reason}: `make postgres` installs Debian's postgresql")


@pytest.fixture
def postgres():
    """A PostgreSQL server with a database `mlflow`: its SQLAlchemy URI
    (no password: libpq reads it from a password file, as docs/team.md has
    it) and the password."""
    psycopg2 = pytest.importorskip("psycopg2")
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "postgres").is_file():
        absent("PostgreSQL's initdb and postgres not found on PATH or in /usr/lib/postgresql/*/bin")
    as_user = {}
    # Not pytest's tmp_path: its root folder is private to the user running the tests.
    root = Path(tempfile.mkdtemp(prefix="licbench-postgres-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            absent("running as root, which PostgreSQL refuses, and no `postgres` system user to run it as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = dict(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
    password = secrets.token_hex(16)
    (root / "password").write_text(password)
    if as_user:
        os.chown(root / "password", as_user["user"], as_user["group"])
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    port = free_port()
    try:
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "licbench", "--pwfile", str(root / "password"),
             "--auth", "scram-sha-256", "--no-locale", "--encoding", "UTF8", "--no-sync"],
            cwd=root, env=env, capture_output=True, text=True, **as_user)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        # SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client).
        server = Service("postgres", [str(bindir / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1",
                                      "-p", str(port), "-k", str(root), "-c", "fsync=off"],
                         root / "server.log", env=env, cwd=root, stop_signal=signal.SIGINT, **as_user)
        with server:
            deadline = time.monotonic() + 60
            while True:
                try:
                    con = psycopg2.connect(host="127.0.0.1", port=port, user="licbench", password=password,
                                           dbname="postgres", connect_timeout=2)
                    break
                except psycopg2.OperationalError:
                    server.check_alive()
                    assert time.monotonic() < deadline, f"PostgreSQL did not accept connections in 60 s\n{server.tail()}"
                    time.sleep(0.3)
            con.autocommit = True  # CREATE DATABASE runs outside a transaction
            with con.cursor() as cur:
                cur.execute("SELECT version()")
                print(cur.fetchone()[0])
                cur.execute("CREATE DATABASE mlflow")
            con.close()
            yield f"postgresql://licbench@127.0.0.1:{port}/mlflow", password
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_team_server(postgres, tmp_path):
    """`mlflow server` as docs/team.md runs it: the backend store in
    PostgreSQL, artifacts served from a folder (the shared storage)."""
    backend, password = postgres
    artifacts = tmp_path / "shared" / "mlartifacts"
    port = free_port()
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:mlflow:licbench:{password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    # As docs/team.md: no job runner (seven huey consumers, for MLflow's GenAI scorers).
    env = dict(os.environ, PGPASSFILE=str(pgpass), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("PGPASSWORD", None)
    server = Service("mlflow server",
                     [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                      "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1"],
                     tmp_path / "mlflow-server.log", env=env, cwd=tmp_path)
    with server:
        # The first start creates MLflow's tables in PostgreSQL.
        server.wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        yield f"http://127.0.0.1:{port}", artifacts, postgres, server


def test_train_and_evaluate_log_to_a_shared_mlflow_server_on_postgres(mlflow_team_server, mirror, tmp_path):
    import mlflow
    import psycopg2

    uri, artifacts, (backend, password), server = mlflow_team_server
    repo = copy_repo(tmp_path / "repo", TINY)
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, LICBENCH_MIRROR=str(mirror),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    out = run([str(BIN / "dvc"), "repro", f"evaluate@{KEY}-kodak"], repo, env)
    print(f"dvc repro evaluate@{KEY}-kodak (datasets, masks, train, evaluate): {time.monotonic() - started:.1f} s")
    assert f"Running stage 'train@{KEY}'" in out and f"Running stage 'evaluate@{KEY}-kodak'" in out
    trained = json.loads((repo / f"models/{KEY}/train.json").read_text())
    evaluated = json.loads((repo / f"data/metrics/kodak/{KEY}.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                            check=True).stdout.strip()

    # Through the server, as the MLflow UI and a colleague's client see them.
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("licbench")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {KEY, f"{KEY}@kodak", "masks-kodak"} <= set(runs), sorted(runs)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    model = runs[KEY]
    assert model.data.tags["licbench.model_key"] == KEY
    assert model.data.tags["licbench.stage"] == "train"
    assert model.data.tags["licbench.weights_sha256"] == trained["weights_sha256"]
    assert model.data.params["lambda"] == "0.01" and model.data.params["N"] == "16"
    assert model.data.tags["mlflow.source.git.commit"] == commit
    assert model.data.tags["licbench.version.mlflow"] == mlflow.__version__
    assert len(client.get_metric_history(model.info.run_id, "train/loss")) == TINY["train"]["steps"]
    # The evaluation is a run of its own, linked to the training run of its weights.
    evaluation = runs[f"{KEY}@kodak"]
    assert evaluation.data.tags["licbench.weights_sha256"] == trained["weights_sha256"]
    assert evaluation.data.tags["licbench.train_run_id"] == model.info.run_id
    assert evaluation.data.tags["licbench.manifest_sha256"] == evaluated["manifest_sha256"]
    assert evaluation.data.metrics["psnr"] == pytest.approx(evaluated["psnr"])
    assert evaluation.data.metrics["bpp"] == pytest.approx(evaluated["bpp"])

    # The artifacts went through the server into its artifact root, byte for byte.
    [logged] = client.list_artifacts(evaluation.info.run_id, "eval/kodak")
    assert logged.path == "eval/kodak/per_image.parquet"
    stored = list(artifacts.rglob("eval/kodak/per_image.parquet"))
    assert len(stored) == 1 and evaluation.info.run_id in stored[0].parts
    assert stored[0].read_bytes() == (repo / f"data/eval/kodak/{KEY}/per_image.parquet").read_bytes()
    assert list(artifacts.rglob("overlays/*.png")), "the masks stage's overlays are not in the artifact root"

    # And the records are PostgreSQL's.
    with psycopg2.connect(backend, password=password) as con, con.cursor() as cur:
        cur.execute("SELECT r.name, r.status, t.value FROM runs r LEFT JOIN tags t "
                    "ON t.run_uuid = r.run_uuid AND t.key = 'licbench.weights_sha256'")
        rows = {name: (status, weights) for name, status, weights in cur.fetchall()}
    con.close()
    assert rows[KEY] == rows[f"{KEY}@kodak"] == ("FINISHED", trained["weights_sha256"])
    assert rows["masks-kodak"] == ("FINISHED", None)
    server.check_alive()
