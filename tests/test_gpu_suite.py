"""bench/gpu_suite.py: its --smoke run (every part on the CPU at tiny sizes)
really runs each part and reports what the GPU run reports; budgets are kept.

The smoke run is what says the suite works before a GPU is ever lent: the
device machine's short lease has no time for a second try at a broken script.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from licbench.models import ARCHITECTURES, compressai_architectures
from licbench.report import published

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench" / "gpu_suite.py"
PARTS = ("throughput", "decode", "sam", "train", "ddp")


def run_suite(out: Path, mirror: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", str(out), *args],
                          env=dict(os.environ, LICBENCH_MIRROR=str(mirror)), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, mirror):
    out = tmp_path_factory.mktemp("gpu-suite")
    return out, run_suite(out, mirror)


@pytest.fixture(scope="module")
def suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_last_line_has_the_device_and_every_part(smoke):
    out, result = smoke
    assert {"device", *PARTS} <= set(result)
    assert json.loads((out / "gpu_suite.json").read_text()) == result  # the file holds what was printed
    log = (out / "gpu_suite.log").read_text()
    assert all(f"=== {part}" in log for part in PARTS)
    assert result["device"]["smoke"] is True and result["device"]["bf16_matmul_tflops"] > 0
    for part in PARTS:
        assert result[part]["status"] in ("ok", "partial"), (part, result[part])
        assert 0 < result[part]["seconds"] <= result[part]["budget_s"] * 1.25 + 20


def test_throughput_times_the_pipeline_against_the_plain_loop(smoke):
    t = smoke[1]["throughput"]
    assert set(t["archs"]) == {"mbt2018-mean", "mbt2018", "wacnn", "segpic"}
    assert set(t["archs"]["mbt2018-mean"]["variants"]) == {"fp32", "bf16", "channels_last"}
    for arch, entry in t["archs"].items():
        assert entry["gflop_per_image"] > 0, arch
        for variant, r in entry["variants"].items():
            pipeline, plain = r["pipeline"], r["plain"]
            assert pipeline["images_per_second"] > 0 and plain["images_per_second"] > 0, (arch, variant)
            assert len(pipeline["runs"]) == len(plain["runs"]) == t["settings"]["repeats"] == 2
            # The ratio pairs each pipeline run with the plain run next to it.
            pairs = [p / q for p, q in zip(pipeline["runs"], plain["runs"])]
            assert r["ratio_runs"] == pytest.approx(pairs, rel=1e-2)
            assert min(pairs) * 0.99 <= r["ratio"] <= max(pairs) * 1.01
            assert 0 < pipeline["fraction_of_bf16_matmul"]
    # Only torch.compile is left out on the CPU, and it says so.
    assert t["skipped"] and all(k.endswith("/compile") and "--smoke" in v for k, v in t["skipped"].items())
    rd = t["rd_check"]
    assert set(rd["val"]) == {"fp32", "fp32_seed1", "bf16", "channels_last"}
    assert all(math.isfinite(v["loss"]) for v in rd["val"].values())
    assert set(rd["within_noise"]) == {"bf16", "channels_last"}


def test_decode_codes_every_architecture_and_compressai_for_its_own(smoke):
    d = smoke[1]["decode"]
    assert set(d["archs"]) == set(ARCHITECTURES)
    for arch, e in d["archs"].items():
        # Encoder and decoder both on the CPU here: every decode equals the sender's.
        assert e["images"] == d["images"] == 2, arch
        assert e["latent_identical"] == e["pixels_identical"] == 2, arch
        assert e["bpp"] > 0 and e["decode_seconds"] > 0 and not e["errors"], arch
        assert ("compressai" in e) == (arch in compressai_architectures()), arch
        if "compressai" in e:
            assert e["compressai"]["latent_identical"] == e["compressai"]["images"] == 2, arch


def test_sam_segments_and_the_masks_stage_writes(smoke):
    sam = smoke[1]["sam"]
    assert sam["images"] == 2 and sam["seconds_per_image"] > 0 and sam["image_encoder_seconds"] > 0
    assert sam["stage"]["images"] == 2 and sam["stage"]["images_per_second"] > 0
    assert sam["stage"]["masks_per_image"] > 0


def test_short_training_gives_a_kodak_point_beside_the_references(smoke):
    train = smoke[1]["train"]
    assert train["steps"] >= 1 and train["train_seconds"] > 0
    assert train["kodak"]["images"] == 2 and train["kodak"]["bpp"] > 0 and train["kodak"]["psnr"] > 0
    curve = published.load("kodak", "compressai-mbt2018-mean")["results"]
    q3 = train["reference"]["compressai_quality3"]
    assert (q3["bpp"], q3["psnr"]) == (round(curve["bpp"][2], 4), round(curve["psnr-rgb"][2], 3))
    assert "quick_default_cpu" in train["reference"]


def test_ddp_runs_the_train_stage_under_torchrun(smoke):
    ddp = smoke[1]["ddp"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1
    [run] = ddp["runs"]  # the first run (with validation) passed: no second one
    assert run["validation"] and run["exit_code"] == 0
    assert run["wrote"] == {"checkpoint": True, "train_json": True, "state": True, "mlflow_run": True}
    assert run["summary"]["processes"] == 1 and run["summary"]["steps"] >= 1


def test_a_spent_budget_skips_the_rest_with_the_reason(tmp_path, mirror):
    result = run_suite(tmp_path, mirror, "--parts", "throughput", "--budget", "3")
    t = result["throughput"]
    assert t["status"] == "partial" and t["budget_s"] == 3.0
    assert any(v.startswith("budget") for v in t["skipped"].values())
    assert all(result[p]["status"] == "not run" for p in PARTS if p != "throughput")


def test_a_part_past_its_budget_is_stopped_and_what_it_had_is_kept(tmp_path, suite_module):
    results = suite_module.Results(tmp_path / "r.json", {})

    def slow(ctx, part):
        part.record["measured"] = 1
        part.save()
        time.sleep(30)

    def failing(ctx, part):
        raise RuntimeError("boom\nsecond line")

    t0 = time.monotonic()
    suite_module.run_part("slow", slow, None, results, seconds=0.2, grace=0.5)
    suite_module.run_part("failing", failing, None, results, seconds=5)
    assert time.monotonic() - t0 < 10
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["slow"]["status"] == "stopped" and data["slow"]["measured"] == 1
    assert "budget" in data["slow"]["reason"]
    assert data["failing"] == {**data["failing"], "status": "error", "error": "RuntimeError: boom"}
