"""The `licbench` command: compress, decompress, info, eval, and its exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from licbench.cli import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_USAGE, main
from licbench.models import build_model, save_checkpoint


def make_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = build_model("mbt2018-mean", {"N": 16, "M": 24}).eval()
    model.update(force=True)
    save_checkpoint(path, model, "mbt2018-mean", {"N": 16, "M": 24}, 0.01)
    return path


@pytest.fixture
def setup(tmp_path, rng):
    models = tmp_path / "models" / "m"
    ckpt = make_checkpoint(models / "checkpoint.pt")
    image = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(image)
    return tmp_path, ckpt, image


def test_compress_info_decompress(setup, capsys):
    tmp, ckpt, image = setup
    assert main(["compress", str(image), str(tmp / "a.lic"), "--model", str(ckpt)]) == EXIT_OK
    assert "bpp" in capsys.readouterr().out
    assert main(["info", str(tmp / "a.lic"), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert (info["arch"], info["width"], info["height"], info["format_version"]) == ("mbt2018-mean", 90, 70, 1)
    assert info["bytes"] == (tmp / "a.lic").stat().st_size and len(info["streams"]) == 2
    assert main(["decompress", str(tmp / "a.lic"), str(tmp / "a.png"), "--model", str(ckpt)]) == EXIT_OK
    decoded = np.asarray(Image.open(tmp / "a.png"))
    assert decoded.shape == (70, 90, 3) and decoded.dtype == np.uint8


def test_decompress_finds_the_checkpoint_by_its_weights(setup, monkeypatch):
    tmp, ckpt, image = setup
    make_checkpoint(tmp / "models" / "other" / "checkpoint.pt", seed=3)
    main(["compress", str(image), str(tmp / "a.lic"), "-m", str(ckpt)])
    monkeypatch.chdir(tmp)
    assert main(["decompress", "a.lic", "a.png"]) == EXIT_OK
    assert (tmp / "a.png").is_file()


def test_exit_codes_name_the_problem(setup, capsys):
    tmp, ckpt, image = setup
    other = make_checkpoint(tmp / "other.pt", seed=1)
    main(["compress", str(image), str(tmp / "a.lic"), "-m", str(ckpt)])
    capsys.readouterr()
    # Decoding with other weights: a model problem.
    assert main(["decompress", str(tmp / "a.lic"), str(tmp / "b.png"), "-m", str(other)]) == EXIT_MODEL
    assert "made by mbt2018-mean weights" in capsys.readouterr().err
    assert not (tmp / "b.png").exists()
    # A damaged file: bad input, named.
    data = bytearray((tmp / "a.lic").read_bytes())
    data[-3] ^= 0xFF
    (tmp / "bad.lic").write_bytes(bytes(data))
    assert main(["decompress", str(tmp / "bad.lic"), str(tmp / "b.png"), "-m", str(ckpt)]) == EXIT_INPUT
    assert "bad.lic: stream 1 checksum mismatch" in capsys.readouterr().err
    assert main(["info", str(tmp / "bad.lic")]) == EXIT_INPUT
    # An image that is not one.
    (tmp / "junk.png").write_bytes(b"junk")
    assert main(["compress", str(tmp / "junk.png"), str(tmp / "j.lic"), "-m", str(ckpt)]) == EXIT_INPUT
    assert "junk.png: unreadable image" in capsys.readouterr().err
    assert not (tmp / "j.lic").exists()
    # A checkpoint that is not one.
    assert main(["compress", str(image), str(tmp / "j.lic"), "-m", str(tmp / "junk.png")]) == EXIT_MODEL
    # No checkpoint to be found.
    assert main(["decompress", str(tmp / "a.lic"), str(tmp / "b.png"),
                 "--models-dir", str(tmp / "nowhere")]) == EXIT_MODEL


def test_eval_prints_a_summary(setup, capsys):
    tmp, ckpt, image = setup
    assert main(["eval", str(image), "-m", str(ckpt), "--out", str(tmp / "ev")]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 1 and summary["bpp"] > 0
    assert (tmp / "ev" / "per_image.parquet").is_file()


def test_installed_entry_point_and_usage_errors(tmp_path):
    exe = Path(sys.executable).parent / "licbench"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("compress", "decompress", "info", "eval"):
        assert command in proc.stdout
    proc = subprocess.run([str(exe), "compress"], capture_output=True, text=True)
    assert proc.returncode == EXIT_USAGE and "usage:" in proc.stderr


@pytest.mark.parametrize("mode,size", [("RGB", (1, 1)), ("RGBA", (33, 17)), ("I;16", (20, 20)),
                                       ("CMYK", (40, 24)), ("L", (65, 3))])
def test_odd_images_round_trip(setup, mode, size, capsys):
    tmp, ckpt, _ = setup
    image = tmp / f"odd.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, size).save(image)
    assert main(["compress", str(image), str(tmp / "o.lic"), "-m", str(ckpt)]) == EXIT_OK
    assert ("input converted" in capsys.readouterr().out) == (mode != "RGB")
    assert main(["decompress", str(tmp / "o.lic"), str(tmp / "o.png"), "-m", str(ckpt)]) == EXIT_OK
    assert Image.open(tmp / "o.png").size == size
