"""Prefect flow: reproduce the DVC pipeline, or some of its stages.

    python pipelines/repro.py                       # the whole DAG, like `dvc repro`
    python pipelines/repro.py train evaluate        # named stages (and what they need)

Each target runs as a Prefect task that calls `dvc repro <target>`, so DVC
stays the one place that decides what is stale, runs the stage commands (the
same `stages/*.py` entry points) and records dvc.lock: a flow run leaves the
repository exactly as `dvc repro` would. Per-lambda fan-out, schedules and
remote workers build on this flow (issue 7).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

REPO = Path(__file__).resolve().parents[1]


@task(retries=0)
def dvc_repro(target: str | None, repo: str) -> str:
    """Run `dvc repro [target]` in ``repo``; fail the task with DVC's output."""
    logger = get_run_logger()
    dvc = Path(sys.executable).with_name("dvc")
    cmd = [str(dvc) if dvc.exists() else "dvc", "repro"] + ([target] if target else [])
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(("Running stage", "Stage", "Data and pipelines")):
            logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


@flow(name="licbench-repro")
def repro(targets: list[str] | None = None, repo: str = str(REPO)) -> list[str]:
    """Reproduce ``targets`` (stage names, in order) or the whole pipeline."""
    return [dvc_repro(t, repo) for t in (targets or [None])]


if __name__ == "__main__":
    repro(sys.argv[1:] or None)
