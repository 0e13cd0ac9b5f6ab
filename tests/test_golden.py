"""The golden bitstreams (tests/golden/): every architecture still writes the
committed bytes and decodes the committed files to the same latent and pixels
(to within what a float32 synthesis rounds differently on another CPU:
golden/fixture.py).

A failure here means the bitstream format, the entropy coder or a model's
computation changed. If that is intended, regenerate with
``python tests/golden/fixture.py`` and say why in the commit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

import fixture  # noqa: E402

from licbench.coding.codec import decode, encode  # noqa: E402
from licbench.coding.container import decode_container, encode_container, read_bitstream  # noqa: E402
from licbench.models import ARCHITECTURES  # noqa: E402

GOLDEN = json.loads(fixture.GOLDEN_JSON.read_text())


def test_every_architecture_has_a_golden_entry():
    assert sorted(GOLDEN["architectures"]) == sorted(ARCHITECTURES)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", sorted(GOLDEN["architectures"]))
def test_golden_bitstreams(arch, one_thread):
    entry = GOLDEN["architectures"][arch]
    ckpt = fixture.fixture_model(arch)
    assert ckpt.weights_sha256 == entry["weights_sha256"], (
        f"{arch}: the fixture's weights changed, so a parameter was renamed or reshaped "
        "(saved checkpoints would no longer load either)")
    for name, height, width in fixture.IMAGES:
        expected = entry["images"][name]
        image = fixture.synthetic_image(name, height, width)
        assert fixture.sha256(image.tobytes()) == expected["image_sha256"]
        committed = fixture.bitstream_path(arch, name).read_bytes()
        assert fixture.sha256(committed) == expected["bitstream_sha256"]

        bs, _ = encode(ckpt, image)
        data = encode_container(bs)
        assert [len(s) for s in bs.streams] == expected["stream_bytes"], f"{arch} {name}: stream sizes"
        assert data == committed, f"{arch} {name}: the encoder no longer writes the golden bytes"

        decoded, latent = decode(ckpt, read_bitstream(fixture.bitstream_path(arch, name)))
        assert decoded.shape == (height, width, 3) and decoded.dtype == np.uint8
        assert fixture.tensor_sha256(latent) == expected["latent_sha256"], f"{arch} {name}: decoded latent"
        # The synthesis runs in float32: a pixel may round the other way on another CPU (fixture.py).
        means = fixture.parse_block_means(fixture.block_means(decoded))
        golden_means = fixture.parse_block_means(expected["decoded_block_means"])
        assert means.shape == golden_means.shape and np.abs(means - golden_means).max() <= 0.05, (
            f"{arch} {name}: decoded pixels, 8x8 block means off by up to {np.abs(means - golden_means).max():.3f}")


def test_golden_files_are_valid_containers():
    for arch, entry in GOLDEN["architectures"].items():
        for name, expected in entry["images"].items():
            bs = decode_container(fixture.bitstream_path(arch, name).read_bytes())
            assert (bs.arch, bs.height, bs.width) == (arch, expected["height"], expected["width"])


def test_golden_bitstreams_on_another_instruction_set():
    """The same checks where the CPU computes in other code paths: PyTorch's
    kernels without vector instructions, oneDNN limited to SSE4.1 and MKL in
    its compatible mode, as on an older or another vendor's CPU (the fixture's
    weights once depended on the vector unit)."""
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41", MKL_CBWR="COMPATIBLE")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "test_golden_bitstreams and not instruction_set"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(GOLDEN['architectures'])} passed" in proc.stdout
