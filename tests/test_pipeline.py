"""End to end: `dvc repro` on tiny params in a temporary copy of the repository."""

import json
import os
import runpy
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO, copy_repo
from test_dvc_tables import assert_numbers_only, check_exp_show
from licbench.config import read_params_file, with_overrides

# Tiny settings: params.yaml with these overrides (a complete params file).
TINY = with_overrides(read_params_file(REPO / "params.yaml"), {
    "datasets": {"sets": ["kodak"], "mirror": None},
    "archs": ["mbt2018-mean"],
    "lambdas": [0.01, 0.05],
    "architectures": {"mbt2018-mean": {"N": 16, "M": 24}},
    "train": {"datasets": ["kodak"], "split": "test", "steps": 3, "batch_size": 2, "crop": 64,
              "lr": 0.001, "aux_lr": 0.001, "clip_max_norm": 1.0, "seed": 0, "device": "cpu",
              "log_every": 1, "lr_schedule": "none", "val_split": None},
    "evaluate": {"datasets": ["kodak"], "device": "cpu", "max_images": 2},
    "anchors": {"codecs": {"jpeg": [20, 80], "vtm": [32]}, "binaries": {}, "workers": 2,
                "max_images": 2},
    "report": {"method": "pchip", "published": ["vtm"]},
    "masks": {"sets": {"kodak": ["test"]}, "generator": "fallback", "fallback_when_unavailable": True,
              "device": "cpu", "workers": 1, "max_images": 2, "overlays": 1,
              "sam": {"model_type": "vit_b"}, "fallback": {"downscale": 2}},
    "mlflow": {"experiment": "licbench"},
})


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def repo_copy(tmp_path):
    return copy_repo(tmp_path / "repo", TINY)


def test_dvc_repro_end_to_end(repo_copy, mirror, monkeypatch):
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: sqlite:///mlruns.db
    env["LICBENCH_MIRROR"] = str(mirror)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    dvc = [str(Path(sys.executable).parent / "dvc")]

    # 1. A fresh repro runs every stage.
    out = run(dvc + ["repro"], repo_copy, env)
    for stage in ("datasets@kodak", "anchors@kodak", "masks@kodak", "train@mbt2018-mean-0.01",
                  "train@mbt2018-mean-0.05", "evaluate@mbt2018-mean-0.01-kodak",
                  "evaluate@mbt2018-mean-0.05-kodak", "report@kodak"):
        assert f"Running stage '{stage}'" in out
    assert "vtm skipped: set anchors.binaries.vtm" in out
    assert len(list((repo_copy / "data/kodak").glob("*.png"))) == 24
    ckpt = repo_copy / "models/mbt2018-mean-0.01/checkpoint.pt"
    assert ckpt.is_file()
    bitstreams = sorted((repo_copy / "data/eval/kodak/mbt2018-mean-0.01/bitstreams").iterdir())
    assert [b.name for b in bitstreams] == ["kodim01.lic", "kodim02.lic"]
    anchors = json.loads((repo_copy / "data/anchors/kodak/curves.json").read_text())
    assert len(anchors["jpeg"]["results"]["bpp"]) == 2
    masks = json.loads((repo_copy / "data/metrics/masks/kodak.json").read_text())
    assert masks["images"] == 2 and masks["covered_fraction"] == 1.0
    assert len(list((repo_copy / "data/masks/kodak/overlays").glob("*.png"))) == 1
    # DVC metrics: one file per evaluation set, numbers only (docs/dvc.md).
    [shown] = json.loads(run(dvc + ["metrics", "show", "--json"], repo_copy, env)).values()
    assert list(shown["data"]) == ["data/report/kodak/metrics.json"]
    metrics = shown["data"]["data/report/kodak/metrics.json"]["data"]
    assert_numbers_only(metrics, "data/report/kodak/metrics.json")
    assert metrics == json.loads((repo_copy / "data/report/kodak/metrics.json").read_text())
    evaluated = json.loads((repo_copy / "data/metrics/kodak/mbt2018-mean-0.05.json").read_text())
    assert metrics["mbt2018-mean-0.05"] == {
        "bpp": evaluated["bpp"], "bpp_est": evaluated["bpp_estimated"], "psnr": evaluated["psnr"],
        "ms_ssim": evaluated["ms_ssim"], "enc_s": evaluated["encode_seconds"],
        "dec_s": evaluated["decode_seconds"]}
    # Tiny models overlap no anchor in PSNR: no BD-rate (DVC shows "-"); the
    # table says why.
    assert "bd_rate" not in metrics
    table = json.loads((repo_copy / "data/report/kodak/bd_table.json").read_text())
    assert set(table["bd"]["mbt2018-mean"]) == {"jpeg", "published_vtm"}
    assert table["bd"]["mbt2018-mean"]["published_vtm"]["psnr"]["warnings"]
    assert "pub_vtm" in metrics["bd_psnr"]["mbt2018-mean"]  # the rates overlap
    assert set(metrics["bd_psnr"]["mbt2018-mean"]) <= {"jpeg", "pub_vtm"}
    assert (repo_copy / "data/report/kodak/rd_psnr.png").stat().st_size > 10_000
    assert (repo_copy / "data/report/kodak/compressai/mbt2018-mean.json").is_file()
    run(dvc + ["plots", "show", "--out", str(repo_copy / "plots_out")], repo_copy, env)
    page = (repo_copy / "plots_out" / "index.html").read_text()
    assert "rd_psnr.png" in page and "mbt2018-mean [trained here]" in page

    # MLflow: one run per training, per evaluation, per report (and per
    # architecture it compares) and per mask table, each with its provenance.
    with sqlite3.connect(repo_copy / "mlruns.db") as db:
        runs = dict(db.execute("SELECT name, run_uuid FROM runs").fetchall())
        assert sorted(runs) == ["masks-kodak", "mbt2018-mean-0.01", "mbt2018-mean-0.01@kodak",
                                "mbt2018-mean-0.05", "mbt2018-mean-0.05@kodak",
                                "report-kodak", "report-kodak-mbt2018-mean"]
        def keys(name):
            return {k for (k,) in db.execute("SELECT DISTINCT key FROM metrics WHERE run_uuid = ?",
                                             (runs[name],))}
        assert {"train/loss", "train/bpp", "train/mse"} <= keys("mbt2018-mean-0.05")
        assert {"bpp", "bpp_stream", "psnr", "ms_ssim", "decode_seconds"} <= keys("mbt2018-mean-0.05@kodak")
        params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?",
                                 (runs["mbt2018-mean-0.05"],)).fetchall())
        assert params["lambda"] == "0.05" and params["N"] == "16"
        for name, run_id in runs.items():
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
            assert len(tags["mlflow.source.git.commit"]) == 40, name
            assert len(tags["licbench.params_sha256"]) == 64 and tags["licbench.version.torch"], name
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?",
                               (runs["mbt2018-mean-0.05@kodak"],)).fetchall())
        assert tags["licbench.train_run_id"] == runs["mbt2018-mean-0.05"]
        assert len(tags["licbench.manifest_sha256"]) == 64

    # 2. A second repro runs nothing.
    mtime = ckpt.stat().st_mtime_ns
    out = run(dvc + ["repro"], repo_copy, env)
    assert "Running stage" not in out
    assert ckpt.stat().st_mtime_ns == mtime

    # 2b. Editing train.log_every changes no output: DVC sees no stage as
    # changed. Editing train.lr does change them (the params are tracked key by key).
    def status(params) -> dict:
        (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return json.loads(run(dvc + ["status", "--json"], repo_copy, env))

    assert status(with_overrides(TINY, {"train": {"log_every": 2}})) == {}
    changed = status(with_overrides(TINY, {"train": {"lr": 0.002}}))
    assert sorted(changed) == ["train@mbt2018-mean-0.01", "train@mbt2018-mean-0.05"]
    assert changed["train@mbt2018-mean-0.01"] == [{"changed deps": {"params.yaml": {"train.lr": "modified"}}}]

    # 2c. A set that is not trained on (a new evaluation set, say) reruns the
    # trainset stage, whose output keeps its bytes: nothing retrains.
    with_bsds = with_overrides(TINY, {"datasets": {"sets": ["kodak", "bsds500"]}})
    assert sorted(status(with_bsds)) == ["datasets@bsds500"]
    trainset = (repo_copy / "data/trainset.parquet").read_bytes()
    out = run(dvc + ["repro"], repo_copy, env)
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["datasets@bsds500", "trainset"]
    assert (repo_copy / "data/trainset.parquet").read_bytes() == trainset
    assert ckpt.stat().st_mtime_ns == mtime
    # Training on both reruns every training.
    both = with_overrides(with_bsds, {"train": {"datasets": ["kodak", "bsds500"]},
                                      "masks": {"sets": {"kodak": ["test"], "bsds500": ["test"]}}})
    assert sorted(status(both)) == ["masks@bsds500", "train@mbt2018-mean-0.01", "train@mbt2018-mean-0.05",
                                    "trainset"]
    assert status(TINY) == {}

    # 3. Changing one lambda reruns only that lambda's train and evaluate; here
    # through the Prefect flow, which must leave the same DVC state.
    TINY_CHANGED = dict(TINY, lambdas=[0.01, 0.02])
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(TINY_CHANGED, sort_keys=False))
    for key in ("MLFLOW_TRACKING_URI", "LICBENCH_MIRROR", "PATH"):
        if key in env:
            monkeypatch.setenv(key, env[key])
        else:
            monkeypatch.delenv(key, raising=False)
    flow_module = runpy.run_path(str(repo_copy / "pipelines" / "repro.py"))
    with prefect_test_harness():
        [out] = flow_module["repro"](repo=str(repo_copy))
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluate@mbt2018-mean-0.02-kodak", "report@kodak", "train@mbt2018-mean-0.02"]
    assert ckpt.stat().st_mtime_ns == mtime
    assert json.loads(run(dvc + ["status", "--json"], repo_copy, env)) == {}

    # 4. DVC leaves the resumable state (not an output) when it reruns a stage: a
    # state that is not finished (as after a kill) is resumed.
    import torch

    state_path = repo_copy / "models/mbt2018-mean-0.01/state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["finished"] and state["step"] == 3
    state["finished"] = False
    torch.save(state, state_path)
    out = run(dvc + ["repro", "--force", "--single-item", "train@mbt2018-mean-0.01"], repo_copy, env)
    assert "resuming mbt2018-mean-0.01 from step 3" in out

    # 5. One lambda: the pipeline completes; the report draws its point and
    # says in one line why there is no BD-rate.
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(dict(TINY, lambdas=[0.01]), sort_keys=False))
    out = run(dvc + ["repro"], repo_copy, env)
    assert "Running stage 'report@kodak'" in out
    assert "mbt2018-mean [trained here]: 1 point; BD-rate needs at least 2 points" in out  # the log
    said = [line for line in (repo_copy / "data/report/kodak/bd_rate.md").read_text().splitlines()
            if "needs at least 2 points" in line]
    assert len(said) == 1 and said[0].startswith("mbt2018-mean [trained here]: 1 point;")
    points = json.loads((repo_copy / "data/report/kodak/rd_points.json").read_text())
    assert len([p for p in points if p["kind"] == "trained"]) == 1
    assert json.loads(run(dvc + ["status", "--json"], repo_copy, env)) == {}

    # 6. Two experiments, a λ added by each: DVC's run cache restores the
    # models trained above (and the reports of those λ). docs/dvc.md's `dvc exp show`
    # fits 200 columns and shows each one's λ list, architectures, the models
    # that differ (bpp and PSNR) and the BD values.
    run(["git", "add", "-A"], repo_copy, env)
    run(["git", "commit", "-qm", "one lambda"], repo_copy, env)
    for lambdas in ("[0.01,0.05]", "[0.01,0.02]"):
        out = run(dvc + ["exp", "run", "-S", f"lambdas={lambdas}"], repo_copy, env)
        assert "Ran experiment(s)" in out and "Running stage 'train@" not in out
    metrics = json.loads((repo_copy / "data/report/kodak/metrics.json").read_text())
    assert_numbers_only(metrics, "data/report/kodak/metrics.json")
    # The BD-rate against JPEG, where it exists (the tiny models' 8 dB do not
    # overlap JPEG's qualities: docs/dvc.md shows the quick default's).
    expected = ["bd_rate.mbt2018-mean.jpeg"] if "jpeg" in metrics.get("bd_rate", {}).get("mbt2018-mean", {}) else []
    tables = check_exp_show(dvc[0], repo_copy, env, models=["mbt2018-mean-0.05", "mbt2018-mean-0.02"],
                            expected=expected)
    header = tables[200].splitlines()[1].split()
    assert "mbt2018-mean-0.01.psnr" not in header  # the same in every row (--only-changed)
