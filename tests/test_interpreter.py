"""Stages run under whichever `python` is first on PATH (dvc.yaml says
`python stages/...`): under one without licbench, or without one of its
dependencies, a stage says so in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py") if not p.name.startswith("_"))


def bare_python() -> str:
    """The interpreter this venv was made from: it has none of the venv's packages."""
    base = getattr(sys, "_base_executable", None)
    if not base or sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment: no interpreter without licbench at hand")
    probe = subprocess.run([base, "-c", "import licbench"], capture_output=True, env=clean_env())
    if probe.returncode == 0:
        pytest.skip(f"{base} has licbench installed")
    return base


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_under_an_interpreter_without_licbench_says_so(stage, tmp_path):
    python = bare_python()
    proc = subprocess.run([python, f"stages/{stage}", "--help"], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True)
    venv = REPO / ".venv"
    advice = (f"activate the project's environment (source {venv}/bin/activate) and run again"
              if (venv / "bin" / "python").exists() else
              f"create the project's environment (make install, in {REPO}), activate it and run again")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: stages/{stage} runs under {python}, which cannot import licbench: {advice}"]


def test_a_missing_dependency_is_named_in_one_line(tmp_path):
    """licbench found (from the source folder) but not its dependencies."""
    python = bare_python()
    env = dict(clean_env(), PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([python, "stages/datasets.py", "kodak"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: stages/datasets.py runs under {python}, which cannot import ")
    assert "Traceback" not in proc.stderr


def test_subprocesses_of_the_tests_find_this_interpreter_first():
    """conftest puts sys.executable's folder first on PATH: `python` and `dvc`
    in a test's subprocess (a stage command run by dvc) are this venv's."""
    found = subprocess.run(["python", "-c", "import sys; print(sys.executable)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(found).parent == Path(sys.executable).parent
