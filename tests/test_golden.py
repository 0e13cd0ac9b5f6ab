"""The golden bitstreams (tests/golden/): every architecture still writes the
committed bytes and decodes the committed files to the same pixels and latent.

A failure here means the bitstream format, the entropy coder or a model's
computation changed. If that is intended, regenerate with
``python tests/golden/fixture.py`` and say why in the commit.
"""

import json
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
        assert fixture.sha256(decoded.tobytes()) == expected["decoded_sha256"], f"{arch} {name}: decoded pixels"


def test_golden_files_are_valid_containers():
    for arch, entry in GOLDEN["architectures"].items():
        for name, expected in entry["images"].items():
            bs = decode_container(fixture.bitstream_path(arch, name).read_bytes())
            assert (bs.arch, bs.height, bs.width) == (arch, expected["height"], expected["width"])
