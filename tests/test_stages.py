"""Each stage function on small inputs: 2 Kodak images, a tiny model, a few steps."""

import json
import math

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from licbench.tracking import target
from licbench.data.images import load_rgb8
from licbench.evaluate import run_evaluate_stage
from licbench.coding.codec import decompress_image
from licbench.coding.container import read_bitstream
from licbench.metrics import bpp_from_bytes, ms_ssim, psnr
from licbench.models import load_checkpoint
from licbench.config import load_params, train_config, with_overrides
from licbench.errors import ParamsError
from licbench.train import run_train_stage, train_model

from conftest import REPO

TINY = {
    "datasets": {"sets": ["kodak"]},
    "architectures": {"mbt2018-mean": {"N": 16, "M": 24}},
    "train": {"datasets": ["kodak"], "split": "test", "steps": 4, "batch_size": 2, "crop": 64,
              "lr": 1e-3, "seed": 0, "device": "cpu", "log_every": 2, "lr_schedule": "none",
              "val_split": None},
    "evaluate": {"datasets": ["kodak"], "device": "cpu", "max_images": 2},
    "masks": {"sets": {"kodak": ["test"]}},
    "mlflow": {"experiment": "test"},
}
PARAMS = load_params(REPO / "params.yaml", TINY)


def train_stage(params, ckpt_path, summary_path, data_root, arch="mbt2018-mean", lmbda=0.01):
    return run_train_stage(params.train, arch, params.architecture(arch, lmbda), lmbda, ckpt_path,
                           summary_path, data_root, mlflow_to=target(params))


@pytest.fixture
def trained(data_root, tmp_path):
    ckpt_path = tmp_path / "models" / "m" / "checkpoint.pt"
    summary = train_stage(PARAMS, ckpt_path, tmp_path / "models" / "m" / "train.json", data_root)
    return ckpt_path, summary


def test_train_stage_writes_a_codec_ready_checkpoint(trained, tmp_path):
    ckpt_path, summary = trained
    assert json.loads((tmp_path / "models/m/train.json").read_text()) == summary
    assert summary["steps"] == 4 and math.isfinite(summary["final"]["loss"])
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.arch == "mbt2018-mean" and ckpt.lmbda == 0.01
    assert ckpt.weights_sha256 == summary["weights_sha256"]
    # The CDF tables were updated before saving: the model can code at once.
    assert ckpt.model.gaussian_conditional._quantized_cdf.numel() > 0
    run = mlflow.search_runs(experiment_names=["test"], output_format="list")[0]
    assert run.data.params["lambda"] == "0.01" and run.data.params["N"] == "16"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/bpp")
    assert [m.step for m in history] == [2, 4]


def test_training_is_repeatable_with_a_seed(data_root, tmp_path):
    images = [load_rgb8(data_root / "kodak" / f"kodim0{i}.png").array for i in (1, 2)]
    cfg = train_config(REPO / "params.yaml", steps=3, batch_size=2, crop=64, seed=5, device="cpu",
                       lr=1e-3, lr_schedule="none", val_split=None)
    a = train_model("mbt2018-mean", {"N": 16, "M": 24}, 0.01, cfg, images, tmp_path / "a.pt")
    b = train_model("mbt2018-mean", {"N": 16, "M": 24}, 0.01, cfg, images, tmp_path / "b.pt")
    assert a["weights_sha256"] == b["weights_sha256"]


def test_evaluate_stage_measures_real_files(trained, data_root, tmp_path):
    ckpt_path, train_summary = trained
    ckpt = load_checkpoint(ckpt_path)
    out = tmp_path / "eval"
    summary = run_evaluate_stage(PARAMS.evaluate, ckpt_path, "kodak", out, tmp_path / "metrics.json",
                                 data_root, mlflow_to=target(PARAMS))
    rows = pq.read_table(out / "per_image.parquet").to_pylist()
    assert [r["image"] for r in rows] == ["kodak/kodim01.png", "kodak/kodim02.png"]
    for r in rows:
        size = (out / r["bitstream"]).stat().st_size
        assert r["bytes"] == size
        assert r["bpp"] == pytest.approx(bpp_from_bytes(size, r["height"], r["width"]))
        # Stream bpp counts the entropy-coded strings alone: file minus the
        # container's header, whose size follows from docs/bitstream.md's layout
        # (magic 4, version/flags/name length 3, the name, model id 8, image size
        # and padding 10, latent rank 1 and 4 per dimension, stream count 1 and
        # 8 per stream, header CRC 4): 67 bytes for mbt2018-mean's 2 streams
        # and its 2-D latent shape.
        bs = read_bitstream(out / r["bitstream"])
        header = 4 + 3 + len(bs.arch) + 8 + 10 + 1 + 4 * len(bs.shape) + 1 + 8 * len(bs.streams) + 4
        assert header == 67 and r["bytes"] - r["stream_bytes"] == header
        assert r["stream_bytes"] == sum(len(s) for s in bs.streams)
        assert (r["bpp"] - r["bpp_stream"]) * r["height"] * r["width"] / 8 == pytest.approx(header)
        # The quick default's metrics, each a column (licbench.metrics).
        for column in ("psnr_y_bt709", "psnr_yuv_bt709", "psnr_yuv_bt601"):
            assert math.isfinite(r[column])
        # The metrics are those of the image decoded from the file on disk.
        decoded = decompress_image(ckpt, read_bitstream(out / r["bitstream"]))
        original = load_rgb8(data_root / r["image"]).array
        assert r["psnr"] == pytest.approx(psnr(original, decoded))
        assert r["ms_ssim"] == pytest.approx(ms_ssim(original, decoded))
        assert 0 < r["ms_ssim"] <= 1
        assert r["conversion"] == ""
        # A 4-step model: its scales sit where the coder's discrete scale table
        # is coarse, so file and likelihood estimate agree only roughly here.
        assert r["bpp"] == pytest.approx(r["bpp_estimated"], rel=0.25)
    assert summary["images"] == 2
    cx = summary["complexity"]
    assert cx["params_total"] == sum(p.numel() for p in ckpt.model.parameters())
    assert cx["params_encoder"] > 0 and cx["params_decoder"] > 0 and cx["params_entropy_model"] > 0
    # The decoder runs the hyper-synthesis and g_s; the encoder g_a, h_a and the hyper-synthesis too.
    assert cx["kmac_per_pixel_encoder"] > 0 and cx["kmac_per_pixel_decoder"] > 0
    assert summary["device"].startswith("cpu: ")
    assert summary["metrics"]["ms_ssim"].startswith("pytorch-msssim ")
    assert summary["bpp"] == pytest.approx(np.mean([r["bpp"] for r in rows]))
    assert json.loads((tmp_path / "metrics.json").read_text())["psnr"] == pytest.approx(summary["psnr"])
    # A run of its own, linked to the training run of the same weights.
    runs = {r.data.tags["licbench.stage"]: r for r in mlflow.search_runs(experiment_names=["test"],
                                                                        output_format="list")}
    assert sorted(runs) == ["evaluate", "train"]
    evaluation = runs["evaluate"]
    assert evaluation.data.tags["licbench.train_run_id"] == runs["train"].info.run_id
    assert evaluation.data.metrics["bpp"] == pytest.approx(summary["bpp"])
    assert evaluation.data.metrics["bpp_stream"] == pytest.approx(summary["bpp_stream"])
    assert evaluation.data.metrics["complexity/kmac_per_pixel_decoder"] == pytest.approx(cx["kmac_per_pixel_decoder"])
    assert evaluation.data.tags["licbench.device"] == summary["device"]
    artifacts = mlflow.MlflowClient().list_artifacts(evaluation.info.run_id, "eval/kodak")
    assert [a.path for a in artifacts] == ["eval/kodak/per_image.parquet"]


def test_architecture_config_applies_the_lambda_override():
    params = load_params(REPO / "params.yaml", {"architectures": {
        "mbt2018-mean": {"N": 128, "M": 192, "by_lambda": {0.025: {"N": 192, "M": 320}}}}})
    assert params.architecture("mbt2018-mean", 0.0130) == {"N": 128, "M": 192}
    assert params.architecture("mbt2018-mean", 0.025) == {"N": 192, "M": 320}
    with pytest.raises(ParamsError, match="params.yaml: architectures.mbt2018: missing"):
        params.architecture("mbt2018", 0.01)


def test_bad_train_settings_are_named(data_root, tmp_path):
    bad = load_params(REPO / "params.yaml", with_overrides(TINY, {"train": {"crop": 96}}))
    with pytest.raises(ParamsError, match="params.yaml: train.crop: 96 is not a multiple of 64; "
                                          "mbt2018-mean needs a multiple of 64"):
        train_stage(bad, tmp_path / "c.pt", tmp_path / "t.json", data_root)
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "mlruns.db").exists()


def test_paper_config_is_valid():
    params = load_params(REPO / "configs" / "paper-mbt2018-mean.yaml")
    assert (params.train.crop, params.train.batch_size, params.train.lr) == (256, 16, 1e-4)
    sizes = [tuple(params.architecture("mbt2018-mean", l).values()) for l in params.lambdas]
    assert sizes == [(128, 192)] * 4 + [(192, 320)] * 4
