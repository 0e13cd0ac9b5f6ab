"""Every architecture of the registry trains and evaluates through `dvc repro`
(tiny sizes, two steps, one Kodak image), in a copy of the repository."""

import json
import os
import subprocess
import sys

import yaml

from licbench.models import ARCHITECTURES, build_model

from conftest import REPO, copy_repo
from licbench.config import with_overrides
from test_pipeline import TINY

SIZES = {name: arch.tiny for name, arch in ARCHITECTURES.items()}

PARAMS = with_overrides(TINY, {
    "archs": sorted(ARCHITECTURES),
    "lambdas": [0.01],
    "architectures": SIZES,
    "train": {"steps": 2},
    "evaluate": {"max_images": 1},
    "masks": {"max_images": None, "overlays": 0, "fallback": {"downscale": 4}},
})


def test_declared_sizes_build_and_the_paper_configs_agree():
    """Each declaration's tiny size builds; its paper size is what
    configs/paper-<arch>.yaml trains at its highest rate, where there is one."""
    for name, arch in ARCHITECTURES.items():
        build_model(name, arch.tiny)
        config = REPO / "configs" / f"paper-{name}.yaml"
        if config.is_file():
            settings = yaml.safe_load(config.read_text())["architectures"][name]
            top = settings.get("by_lambda", {}).get(max(settings.get("by_lambda", {}) or [0]), {})
            at_top = {k: top.get(k, settings[k]) for k in arch.config_keys}
            assert at_top == arch.paper, name


def test_every_architecture_trains_and_evaluates_through_dvc_repro(tmp_path, mirror):
    repo_copy = copy_repo(tmp_path / "repo", PARAMS)
    env = dict(os.environ, LICBENCH_MIRROR=str(mirror),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("MLFLOW_TRACKING_URI", None)
    dvc = os.path.join(os.path.dirname(sys.executable), "dvc")

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=repo_copy, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd}:\\n{proc.stdout[-3000:]}\\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def repro(params):
        (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run(dvc, "repro", "evaluate")
        return sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))

    keys = [f"{arch}-0.01" for arch in sorted(ARCHITECTURES)]
    assert repro(PARAMS) == sorted(["datasets@kodak", "masks@kodak", "trainset"] + [f"train@{k}" for k in keys]
                                   + [f"evaluate@{k}-kodak" for k in keys])
    for arch in ARCHITECTURES:
        summary = json.loads((repo_copy / f"data/metrics/kodak/{arch}-0.01.json").read_text())
        stream = (repo_copy / f"data/eval/kodak/{arch}-0.01/bitstreams/kodim01.lic").read_bytes()
        assert summary["images"] == 1, arch
        # bpp is the file's: every stream (SegPIC's prototypes too) and the header.
        assert summary["bpp"] == 8 * len(stream) / (768 * 512), arch
        assert 5 < summary["psnr"] < 60, arch
        trained = json.loads((repo_copy / f"models/{arch}-0.01/train.json").read_text())
        assert trained["steps"] == 2 and trained["N"] == SIZES[arch]["N"], arch
    assert json.loads((repo_copy / "models/segpic-0.01/train.json").read_text())["use_mask"] == 1

    # SegPIC on the grid (the paper's ablation): the masks stay, only SegPIC trains again.
    grid = dict(PARAMS, architectures=dict(SIZES, segpic=dict(SIZES["segpic"], use_mask=0)))
    assert repro(grid) == ["evaluate@segpic-0.01-kodak", "train@segpic-0.01"]
    assert json.loads((repo_copy / "models/segpic-0.01/train.json").read_text())["use_mask"] == 0
