
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from licbench.anchors import CODECS, code_image, curves, run_anchors, run_anchors_stage
from licbench.config import AnchorsConfig, BinariesConfig, load_params, load_section
from licbench.data.datasets import prepare_dataset
from licbench.data.sources import kodak
from licbench.errors import LicbenchError, ParamsError

from conftest import REPO

LOW_HIGH = {"jpeg": [10, 90], "webp": [10, 90], "jpeg2000": [100, 10], "avif": [20, 80],
            "hevc444": [10, 70], "jpegxl": [20, 80]}


def anchors_config(overrides: dict) -> AnchorsConfig:
    return load_section(REPO / "params.yaml", "anchors", overrides)


@pytest.fixture(scope="module")
def crop_path(mirror, tmp_path_factory):
    path = tmp_path_factory.mktemp("anchors") / "crop.png"
    image = np.asarray(Image.open(mirror / "kodak" / "kodim23.png"))[100:292, 200:392]
    Image.fromarray(image).save(path)
    return path


def test_every_built_in_codec_is_tested():
    assert set(LOW_HIGH) == {name for name, c in CODECS.items() if not c.needs}


@pytest.mark.parametrize("codec", sorted(LOW_HIGH))
def test_each_codec_codes_and_rate_follows_quality(codec, crop_path):
    low, high = (code_image(codec, s, "crop.png", str(crop_path), metrics=("psnr", "ms_ssim"))
                 for s in LOW_HIGH[codec])
    assert 0 < low["bpp"] < high["bpp"]
    assert 15 < low["psnr"] < high["psnr"] < 60
    assert 0 < low["ms_ssim"] < high["ms_ssim"] <= 1
    assert low["bpp"] == pytest.approx(8 * low["bytes"] / (192 * 192))
    assert CODECS[codec].version({})


def test_bytes_are_those_of_the_file(crop_path, tmp_path):
    row = code_image("jpeg", 50, "crop.png", str(crop_path))
    Image.open(crop_path).save(tmp_path / "c.jpg", quality=50)
    assert row["bytes"] == (tmp_path / "c.jpg").stat().st_size


def test_parallel_run_matches_serial_and_curves_use_compressai_layout(crop_path):
    sweeps = {"jpeg": [30, 80], "jpeg2000": [50, 20]}
    images = [("a.png", crop_path), ("b.png", crop_path)]
    serial = run_anchors(images, anchors_config({"codecs": sweeps, "workers": 1}))
    parallel = run_anchors(images, anchors_config({"codecs": sweeps, "workers": 2}))
    assert serial.column("bytes").to_pylist() == parallel.column("bytes").to_pylist()
    assert serial.column("psnr").to_pylist() == parallel.column("psnr").to_pylist()
    result = curves(parallel)
    assert set(result) == {"jpeg", "jpeg2000"}
    res = result["jpeg2000"]["results"]
    assert res["bpp"] == sorted(res["bpp"]) and res["compression_ratio"] == [50.0, 20.0]
    assert set(res) >= {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}
    # Every column of anchors.metrics (the quick default's YUV PSNRs), under its own name.
    assert {"psnr_y_bt709", "psnr_u_bt709", "psnr_v_bt709", "psnr_yuv_bt709", "psnr_yuv_bt601"} <= set(res)
    assert result["jpeg2000"]["description"].startswith("OpenJPEG 2.")


def test_unknown_codec_is_named():
    with pytest.raises(ParamsError, match=r"params.yaml: anchors.codecs.x264: unknown codec; one of avif, bpg"):
        load_params(REPO / "params.yaml", {"anchors": {"codecs": {"x264": [30]}}}, codecs=CODECS)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_codec_times_setting_times_image(crop_path, workers, caplog, monkeypatch):
    """Off a terminal (as here), a log line per step at the shortest interval."""
    import logging

    from licbench import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)
    caplog.set_level(logging.INFO, logger="licbench.progress")
    images = [("a.png", crop_path), ("b.png", crop_path)]
    cfg = anchors_config({"codecs": {"jpeg": [30, 80], "webp": [50]}, "workers": workers})
    run_anchors(images, cfg, desc="anchors crops")
    counts = [r.getMessage().split(" image")[0] for r in caplog.records]
    assert counts[:6] == [f"anchors crops: {i}/6" for i in range(1, 7)]


def test_stage_writes_rows_and_curves(mirror, tmp_path):
    root = tmp_path / "data"
    prepare_dataset(kodak(), root, root / "manifests" / "kodak.parquet", mirror=mirror)
    cfg = anchors_config({"codecs": {"jpeg": [20, 60], "webp": [30]}, "workers": 2, "max_images": 2})
    result = run_anchors_stage(cfg, "kodak", tmp_path / "out", root)
    rows = pq.read_table(tmp_path / "out" / "per_image.parquet").to_pylist()
    assert len(rows) == 6 and {r["image"] for r in rows} == {"kodak/kodim01.png", "kodak/kodim02.png"}
    assert len(result["jpeg"]["results"]["bpp"]) == 2
    assert (tmp_path / "out" / "curves.json").is_file()


def test_jpeg2000_uses_the_colour_transform(mirror):
    # Without JPEG 2000's colour transform (Pillow's default), kodim01 at
    # 0.6 bpp comes out near 24.8 dB; with it, near 28.1 dB.
    row = code_image("jpeg2000", 40, "kodim01.png", str(mirror / "kodak" / "kodim01.png"))
    assert row["bpp"] == pytest.approx(0.6, abs=0.01)
    assert row["psnr"] > 27.5


# --- external codecs (VTM, HM, bpgenc), driven through stand-in programs ----

import json
import logging

from fake_codecs import install as install_fake_codecs

from licbench.anchors import available_codecs


@pytest.fixture
def fake_binaries(tmp_path, monkeypatch):
    log_file = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CODEC_LOG", str(log_file))
    return install_fake_codecs(tmp_path / "bin"), log_file


@pytest.mark.parametrize("codec", ["vtm", "hm", "bpg"])
def test_external_codec_rate_and_quality_follow_qp(codec, crop_path, fake_binaries):
    binaries, log_file = fake_binaries
    fine, coarse = (code_image(codec, qp, "crop.png", str(crop_path), BinariesConfig(**binaries[codec]))
                    for qp in (22, 42))
    assert 0 < coarse["bpp"] < fine["bpp"]
    assert 15 < coarse["psnr"] < fine["psnr"]
    calls = [json.loads(line) for line in log_file.read_text().splitlines()]
    encode = calls[0]
    if codec == "bpg":
        assert encode[:4] == ["-o", encode[1], "-q", "22"]
    else:
        # width and height as the reference software takes them, 4:4:4 8-bit
        assert encode[encode.index("-wdt") + 1] == "192" and encode[encode.index("-hgt") + 1] == "192"
        assert "--InputChromaFormat=444" in encode and encode[encode.index("-q") + 1] == "22"
        assert ("--ConformanceWindowMode=1" in encode) == (codec == "vtm")
        assert ("--SEIDecodedPictureHash" in encode) == (codec == "hm")


def test_reference_software_in_rgb_is_lossless_at_step_one(crop_path, fake_binaries):
    binaries, log_file = fake_binaries
    rgb = code_image("vtm", 0, "crop.png", str(crop_path), BinariesConfig(**binaries["vtm"], colour="rgb"))
    assert rgb["psnr"] == float("inf")
    assert "--InputColourSpaceConvert=RGBtoGBR" in log_file.read_text()
    # In YCbCr the 8-bit conversion there and back costs a little, no more.
    ycc = code_image("vtm", 0, "crop.png", str(crop_path), BinariesConfig(**binaries["vtm"]))
    assert 45 < ycc["psnr"] < float("inf")


def test_external_codec_bytes_are_the_bitstream(crop_path, fake_binaries, tmp_path):
    binaries, _ = fake_binaries
    row = code_image("vtm", 30, "crop.png", str(crop_path), BinariesConfig(**binaries["vtm"]))
    # Rerun the stand-in encoder by hand on the same YCbCr input.
    from licbench.anchors import _rgb_to_planes

    image = np.asarray(Image.open(crop_path).convert("RGB"))
    (tmp_path / "in.yuv").write_bytes(_rgb_to_planes(image, "ycbcr").tobytes())
    import subprocess

    subprocess.run([binaries["vtm"]["encoder"], "-c", binaries["vtm"]["config"], "-i",
                    tmp_path / "in.yuv", "-b", tmp_path / "o.bin", "-q", "30", "-wdt", "192",
                    "-hgt", "192", "--InputChromaFormat=444", "--InputBitDepth=8"], check=True)
    assert row["bytes"] == (tmp_path / "o.bin").stat().st_size


def test_external_codecs_without_binaries_are_skipped_in_one_line(caplog):
    with caplog.at_level(logging.WARNING):
        runnable = available_codecs(anchors_config({"codecs": {"jpeg": [50], "vtm": [32], "bpg": [30]},
                                                    "binaries": {"vtm": {"encoder": None}}}))
    assert list(runnable) == ["jpeg"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "vtm skipped: set anchors.binaries.vtm.{encoder,decoder,config}" in lines[0]


def test_external_codec_pointing_at_nothing_is_an_error(tmp_path):
    cfg = anchors_config({"codecs": {"bpg": [30]},
                          "binaries": {"bpg": {"encoder": str(tmp_path / "nope"),
                                               "decoder": str(tmp_path / "nope2")}}})
    with pytest.raises(ParamsError, match=r"params.yaml: anchors.binaries.bpg.encoder: .*nope is not a file"):
        available_codecs(cfg)


def test_failing_external_codec_names_itself(crop_path, fake_binaries, tmp_path):
    binaries, _ = fake_binaries
    broken = BinariesConfig(**{**binaries["vtm"], "config": str(tmp_path / "missing.cfg")})
    with pytest.raises(LicbenchError, match=r"crop.png: anchors: vtm: EncoderApp failed \(exit 1\) on QP 30: .*config missing"):
        code_image("vtm", 30, "crop.png", str(crop_path), broken)


def test_stage_records_external_codec_version(mirror, tmp_path, fake_binaries):
    binaries, _ = fake_binaries
    root = tmp_path / "data"
    prepare_dataset(kodak(), root, root / "manifests" / "kodak.parquet", mirror=mirror)
    cfg = anchors_config({"codecs": {"bpg": [30, 40], "hm": [37]}, "workers": 1, "max_images": 1,
                          "binaries": {"bpg": binaries["bpg"]}})
    result = run_anchors_stage(cfg, "kodak", tmp_path / "out", root)
    assert set(result) == {"bpg"}
    assert "BPG Image Encoder version 0.9.8-fake" in result["bpg"]["description"]
    assert result["bpg"]["results"]["qp"] == [40.0, 30.0]
