"""SegPIC's encode and decode seconds per Kodak image at paper size (N=192,
M=320, 4x4 grid), random weights, on the CPU, and on CUDA when present.

    python bench/segpic_codec.py [--images 4] [--kodak ../shared/data/mirror/kodak]

Each image goes through licbench's codec as the evaluate stage runs it:
``encode`` (analysis, prototypes, the float64 CPU entropy model, rANS) to a
container, ``decode`` back. The cost does not depend on the weights, only on
the architecture and the image size (the rANS coder's share grows with the
rate, and random weights code at a high rate, so this is an upper bound for
that share). The first image is coded once before timing (warm-up). Each
row checks that the decoder rebuilt the encoder's latent. On CUDA the
analysis and synthesis run on the GPU; the entropy parameters stay on the CPU
in float64 (coding/latent: ``Exact``). ``entropy_model_seconds`` times that part alone
on the first image (level-2 prototype synthesis, h_s, the two RATs, the ten
slices' transforms and the rANS coding of y), in float64 as coded and in
float32 for comparison: the price of the float64 rule.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor  # noqa: E402
from licbench.coding.container import decode_container, encode_container  # noqa: E402
from licbench.coding.latent import factorized, slices  # noqa: E402
from licbench.data.images import load_rgb8  # noqa: E402
from licbench.models import Checkpoint, build_model, weights_digest  # noqa: E402

CONFIG = {"N": 192, "M": 320, "grid": 4, "use_mask": 1}


def run(ckpt: Checkpoint, images: list, device: str) -> dict:
    ckpt.model.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    decode(ckpt, decode_container(encode_container(encode(ckpt, images[0][1])[0])))  # warm-up
    rows = []
    for name, image in images:
        sync()
        t0 = time.perf_counter()
        bs, enc_latent = encode(ckpt, image)
        data = encode_container(bs)
        sync()
        t1 = time.perf_counter()
        _, dec_latent = decode(ckpt, decode_container(data))
        sync()
        t2 = time.perf_counter()
        rows.append({"image": name, "encode_seconds": t1 - t0, "decode_seconds": t2 - t1,
                     "bytes": len(data), "stream_bytes": [len(s) for s in bs.streams],
                     "latent_equal": bool(torch.equal(enc_latent.cpu(), dec_latent.cpu()))})
    return {
        "encode_seconds_per_image": statistics.mean(r["encode_seconds"] for r in rows),
        "decode_seconds_per_image": statistics.mean(r["decode_seconds"] for r in rows),
        "all_latents_equal": all(r["latent_equal"] for r in rows),
        "images": rows,
    }


@torch.no_grad()
def entropy_model_seconds(model, image, repeat: int = 2) -> dict:
    """The decoder-reproduced part of SegPIC's encoder (coding/prototypes.py), alone, on the CPU."""
    x = pad_to_multiple(to_tensor(image), 64)
    y1 = model.g_a1(x)
    c1, c2 = model.prototype_coder1, model.prototype_coder2
    _, latents1 = factorized.compress(c1.entropy_bottleneck, c1.g_a(model.grid_pool(y1)))
    y = model.g_a2(model.rat_encoder(y1, model.expand_grid(c1.g_s(latents1), y1.shape[-2:])))
    _, latents2 = factorized.compress(c2.entropy_bottleneck, c2.g_a(model.grid_pool(y)))
    z = model.h_a(model.rat_hyper_encoder(y, model.expand_grid(c2.g_s(latents2), y.shape[-2:])))
    _, z_hat = factorized.compress(model.entropy_bottleneck, z)
    out = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            expanded = m.expand_grid(m.prototype_coder2.g_s(latents2.to(dtype)), y.shape[-2:])
            params = m.entropy_parameters(z_hat.to(dtype), y.shape[-2:], expanded)
            slices.compress(m.channel_conditional, y.to(dtype), *params)
            times.append(time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = min(times)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", default=str(REPO.parent / "shared/data/mirror/kodak"))
    parser.add_argument("--images", type=int, default=4, help="the first images of Kodak (24: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    files = sorted(Path(args.kodak).glob("kodim*.png"))[: args.images]
    images = [(f.name, load_rgb8(f).array) for f in files]
    torch.manual_seed(0)
    model = build_model("segpic", CONFIG).eval()
    model.update(force=True)
    ckpt = Checkpoint("segpic", CONFIG, 0.0130, model, weights_digest(model.state_dict()), {})
    result = {
        "config": CONFIG,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": list(images[0][1].shape[:2]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg()[0],
        "cpu": run(ckpt, images, "cpu"),
        "entropy_model_seconds": entropy_model_seconds(model, images[0][1]),
    }
    if torch.cuda.is_available():
        result["cuda"] = {"device": torch.cuda.get_device_name(), **run(ckpt, images, "cuda")}
    else:
        result["cuda"] = None
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
