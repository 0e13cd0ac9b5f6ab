"""The MLflow store: two stage processes that start at once on a fresh SQLite
store both get it (MLflow's own first creation races: `table ... already exists`)."""

import os
import subprocess
import sys

from conftest import REPO

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
