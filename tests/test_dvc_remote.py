"""Versioned means retrievable (docs/team.md): a tiny run's outputs, pushed to
a directory remote, come back byte for byte in a fresh clone of the commit
that records them, and DVC finds that clone up to date."""

import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path

import yaml

from conftest import copy_repo, git_env
from test_pipeline import TINY, run

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def output_files(repo: Path) -> dict[str, str]:
    """Every file of every output and metric dvc.lock records -> its sha256."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    files = {}
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = repo / out["path"]
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if f.is_file():
                    files[str(f.relative_to(repo))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return files


def test_outputs_pushed_to_a_directory_remote_come_back_in_a_fresh_clone(mirror, tmp_path):
    repo = copy_repo(tmp_path / "repo", TINY)
    remote = tmp_path / "shared" / "licbench-dvc"
    env = dict(git_env(), LICBENCH_MIRROR=str(mirror), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    run([DVC, "repro"], repo, env)
    print(f"dvc repro (tiny): {time.monotonic() - started:.1f} s")

    # docs/team.md: the remote in the repository's config, the run in a commit.
    run([DVC, "remote", "add", "--default", "team", str(remote)], repo, env)
    run([DVC, "remote", "modify", "team", "shared", "group"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny run"], repo, env)
    started = time.monotonic()
    pushed = run([DVC, "push"], repo, env)
    print(f"dvc push: {time.monotonic() - started:.1f} s: {pushed.strip().splitlines()[-1]}")
    assert " pushed" in pushed
    assert json.loads(run([DVC, "status", "--cloud", "--json"], repo, env)) == {}
    # Group-writable, as several users pushing to one folder need (`shared group`).
    assert all(os.stat(d).st_mode & (stat.S_IWGRP | stat.S_ISGID) == stat.S_IWGRP | stat.S_ISGID
               for d in remote.rglob("*") if d.is_dir())

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models").exists() and not (clone / ".dvc" / "cache").exists()
    started = time.monotonic()
    pulled = run([DVC, "pull"], clone, env)
    print(f"dvc pull: {time.monotonic() - started:.1f} s: {pulled.strip().splitlines()[-1]}")

    assert json.loads(run([DVC, "status", "--json"], clone, env)) == {}
    assert "Running stage" not in run([DVC, "repro", "--dry"], clone, env)
    expected = output_files(repo)
    for kind in ("models/mbt2018-mean-0.01/checkpoint.pt",
                 "data/eval/kodak/mbt2018-mean-0.01/bitstreams/kodim01.lic",
                 "data/metrics/kodak/mbt2018-mean-0.01.json", "models/mbt2018-mean-0.01/train.json",
                 "data/report/kodak/metrics.json"):
        assert kind in expected
    assert output_files(clone) == expected
