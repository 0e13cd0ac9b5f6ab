"""The golden bitstream fixture: today's format and decoder, frozen.

For every architecture, a tiny model whose weights follow from its parameter
names alone, and the two synthetic images below. ``tests/golden/<arch>/``
holds the bitstream files this code wrote and ``golden.json`` the sha256 of
the weights, of each bitstream, of each decoded image and of each decoded
latent. tests/test_golden.py checks that encoding gives the same bytes and
decoding the committed files the same pixels and latents, as CompressAI's
md5 fixtures do.

Why the weights are derived, not saved: a refactor that builds a model's
modules in another order draws the default initialisation in another order,
and a committed checkpoint of every architecture would weigh megabytes. Here
every parameter whose default initialisation is random is refilled from a
generator seeded by the sha256 of its name, uniform in +-1/sqrt(fan_in)
(PyTorch's default bound); parameters whose default is a constant (GDN, the
factorized prior's density, its quantiles) keep it. So the weights change
only when a parameter is renamed or reshaped, which would break every saved
checkpoint too. The last convolution of the analysis ``g_a`` is then scaled
so that the first image's latent has a standard deviation of ``LATENT_STD``
(a random ``g_a`` gives a latent that quantizes to zeros), and the CDF tables
are built with ``update_entropy_models`` (``update(force=True)`` with the
scale table computed in float64).

What may depend on the CPU, and what does not. The gain is measured on a
float64 copy and rounded to 12 significant bits, so the weights are the same
bits on every CPU (a float32 measure differed in its last bits between AVX2
and AVX-512 machines, and so did ELIC's and SegPIC's weights). The latent
stream and the decoded latent are exact by design (the entropy parameters run
in float64, coding/latent). The synthesis runs in float32 where it runs: it
only shapes the reconstruction, and on another CPU a pixel can round to the
next level. So the decoded pixels are kept as the means of their 8x8 blocks
(``decoded_block_means``), which the test compares to within 0.05 of a level
(3 pixels of a block one level off); a change of the synthesis moves them
far more.

Regenerate (only for an intended format change, with a note saying why):

    python tests/golden/fixture.py
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from licbench.coding.codec import encode, decode, pad_to_multiple, to_tensor  # noqa: E402
from licbench.coding.container import decode_container, encode_container  # noqa: E402
from licbench.models import (  # noqa: E402
    ARCHITECTURES, Checkpoint, build_model, update_entropy_models, weights_digest,
)

GOLDEN_JSON = HERE / "golden.json"
LATENT_STD = 3.0
LMBDA = 0.01

# Small enough to code in a fraction of a second. The channel-wise models
# split M into 10 slices; WACNN and SegPIC's attention needs multiples of 8.
CONFIGS = {
    "bmshj2018-factorized": {"N": 8, "M": 12},
    "bmshj2018-hyperprior": {"N": 8, "M": 12},
    "mbt2018-mean": {"N": 8, "M": 12},
    "mbt2018": {"N": 8, "M": 12},
    "cheng2020-anchor": {"N": 8},
    "cheng2020-attn": {"N": 8},
    "charm": {"N": 8, "M": 20},
    "elic": {"N": 8, "M": 136},  # groups 16, 16, 32, 64 and M - 128
    "wacnn": {"N": 8, "M": 40},
    "segpic": {"N": 8, "M": 40, "grid": 4, "use_mask": 1},
}

# (name, height, width): sizes that are not multiples of 64, so padding is coded.
IMAGES = (("stripes", 67, 93), ("blocks", 128, 64))


def synthetic_image(name: str, height: int, width: int) -> np.ndarray:
    """A deterministic H x W x 3 uint8 image (integer arithmetic and sin only):
    smooth gradients, an edge, texture and a little hashed noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    noise = ((x * 1103515245 + y * 12345 + (7 if name == "blocks" else 3)) >> 7) & 15
    r = 128 + 90 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = (x * 3 + y * 2) % 256
    b = np.where((x // 16 + y // 16) % 2 == 0, 200, 40) if name == "blocks" else 255 * (x > width // 2)
    image = np.stack([r, g, b], axis=-1).astype(np.float64) * 0.85 + noise[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def _fan_in(shape: torch.Size) -> int:
    return int(shape[1] * math.prod(shape[2:])) if len(shape) >= 2 else int(shape[0])


@torch.no_grad()
def fixture_model(arch: str) -> Checkpoint:
    """The golden model of ``arch`` (see the module docstring)."""
    config = CONFIGS[arch]
    torch.manual_seed(0)
    model = build_model(arch, config)
    torch.manual_seed(1)
    other = dict(build_model(arch, config).named_parameters())
    for name, p in model.named_parameters():
        if torch.equal(p, other[name]):
            continue  # a constant initialisation: keep it
        bound = 1.0 / math.sqrt(_fan_in(p.shape))
        g = torch.Generator().manual_seed(_seed(f"{arch}:{name}"))
        p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).float())
    model.eval()
    name, height, width = IMAGES[0]
    x = pad_to_multiple(to_tensor(synthetic_image(name, height, width)), 64)
    analysis = model.g_a2 if hasattr(model, "g_a2") else model.g_a  # SegPIC: g_a1, RAT, g_a2
    last = [m for m in analysis.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    for _ in range(2):  # a block after the convolution (WACNN's attention) is not linear in it
        gain = _rounded(LATENT_STD / float(_latent64(model, analysis, x).std()))
        last.weight.mul_(gain)
        last.bias.mul_(gain)
    update_entropy_models(model)
    state = model.state_dict()
    return Checkpoint(arch, dict(config), LMBDA, model, weights_digest(state), {})


def _latent64(model: torch.nn.Module, analysis: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The analysis output of ``model(x)``, computed on a float64 copy."""
    latent = []
    names = {id(m): n for n, m in model.named_modules()}
    model64 = copy.deepcopy(model).double()
    hook = model64.get_submodule(names[id(analysis)]).register_forward_hook(
        lambda module, inputs, output: latent.append(output))
    model64(x.double())
    hook.remove()
    return latent[0]


def _rounded(value: float, bits: int = 12) -> float:
    """``value`` to ``bits`` significant bits: a float32 product with it is
    the same on every CPU, and so is the value itself unless it lies within
    float64's rounding of a step."""
    mantissa, exponent = math.frexp(value)
    return math.ldexp(round(mantissa * (1 << bits)) / (1 << bits), exponent)


def block_means(image: np.ndarray, block: int = 8) -> list[str]:
    """The means of ``image``'s ``block`` x ``block`` tiles (edge tiles
    smaller), per channel, to 1e-3 of a level: one line per row of tiles,
    tile by tile, the channels of each in order."""
    h, w = image.shape[:2]
    return [" ".join(f"{image[i:i + block, j:j + block, c].mean():.3f}"
                     for j in range(0, w, block) for c in range(image.shape[2]))
            for i in range(0, h, block)]


def parse_block_means(lines: list[str]) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in lines])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    return sha256(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


def bitstream_path(arch: str, image: str) -> Path:
    return HERE / arch / f"{image}.lic"


def generate() -> dict:
    torch.set_num_threads(1)
    golden = {"torch": torch.__version__, "latent_std": LATENT_STD, "architectures": {}}
    for arch in sorted(CONFIGS):
        ckpt = fixture_model(arch)
        entry = {"config": CONFIGS[arch], "weights_sha256": ckpt.weights_sha256, "images": {}}
        for name, height, width in IMAGES:
            image = synthetic_image(name, height, width)
            bs, enc_latent = encode(ckpt, image)
            data = encode_container(bs)
            decoded, dec_latent = decode(ckpt, decode_container(data))
            if not torch.equal(enc_latent, dec_latent):
                raise SystemExit(f"{arch} {name}: the decoder did not rebuild the encoder's latent")
            path = bitstream_path(arch, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entry["images"][name] = {
                "height": height, "width": width, "image_sha256": sha256(image.tobytes()),
                "bytes": len(data), "bitstream_sha256": sha256(data),
                "stream_bytes": [len(s) for s in bs.streams],
                "decoded_block_means": block_means(decoded), "latent_sha256": tensor_sha256(dec_latent),
            }
            print(f"{arch:22s} {name:8s} {len(data):6d} bytes, streams {entry['images'][name]['stream_bytes']}")
        golden["architectures"][arch] = entry
    GOLDEN_JSON.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    return golden


if __name__ == "__main__":
    missing = sorted(set(ARCHITECTURES) - set(CONFIGS))
    if missing:
        raise SystemExit(f"no golden configuration for {missing}: add them to CONFIGS")
    generate()
