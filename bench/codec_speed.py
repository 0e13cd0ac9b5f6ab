"""Encode and decode seconds per Kodak image for ChARM and WACNN at paper size.

Each architecture is built at N=192, M=320 with random weights (seeded; the
CDF tables updated), saved and loaded as a checkpoint, then codes the first
``--images`` Kodak images through ``licbench.coding.codec.encode``/``decode``,
the functions the evaluate stage uses: analysis and synthesis on the device,
hyper-synthesis and the ten slices' transforms in float64 on the CPU (the
coder's rule, on every device). One untimed image first warms each device up
(and makes the float64 copy). Every decode is checked against the encoder's
latent. Random weights give near-empty streams: the seconds are those of the
transforms and of coding about 320 x H/16 x W/16 symbols, not of a trained
model's rate.

    python bench/codec_speed.py                       # CPU, and CUDA when present
    python bench/codec_speed.py --images 3 --devices cpu

The last line is one JSON object: per architecture and device, the mean
encode and decode seconds and the per-image figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from licbench.coding.codec import decode, encode
from licbench.data.images import load_rgb8
from licbench.models import build_model, load_checkpoint, save_checkpoint

PAPER = {"N": 192, "M": 320}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_image(ckpt, image, device: str) -> dict:
    synchronize(device)
    t0 = time.perf_counter()
    bs, enc_latent = encode(ckpt, image)
    synchronize(device)
    t1 = time.perf_counter()
    _, dec_latent = decode(ckpt, bs)
    synchronize(device)
    t2 = time.perf_counter()
    if not torch.equal(enc_latent, dec_latent):
        raise AssertionError(f"{ckpt.arch} on {device}: decoded latent differs from the encoder's")
    return {"encode_seconds": round(t1 - t0, 3), "decode_seconds": round(t2 - t1, 3),
            "bytes": sum(len(s) for s in bs.streams)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["charm", "wacnn"])
    parser.add_argument("--images", type=int, default=3, help="the first N Kodak images (timed)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--mirror", default=os.environ.get("LICBENCH_MIRROR", "../shared/data/mirror"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    kodak = Path(args.mirror) / "kodak"
    images = {p.name: load_rgb8(p).array for p in sorted(kodak.glob("kodim*.png"))[: args.images + 1]}
    warmup, *timed = images

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            torch.manual_seed(args.seed)
            model = build_model(arch, PAPER).eval()
            model.update(force=True)
            path = Path(tmp) / f"{arch}.pt"
            save_checkpoint(path, model, arch, PAPER, 0.0)
            params = sum(p.numel() for p in model.parameters())
            del model
            results[arch] = {"parameters": params}
            for device in devices:
                ckpt = load_checkpoint(path, device)
                time_image(ckpt, images[warmup], device)
                per_image = {name: time_image(ckpt, images[name], device) for name in timed}
                mean = {k: round(sum(r[k] for r in per_image.values()) / len(per_image), 3)
                        for k in ("encode_seconds", "decode_seconds")}
                results[arch][device] = {**mean, "per_image": per_image}
                print(f"{arch} on {device}: encode {mean['encode_seconds']} s, decode "
                      f"{mean['decode_seconds']} s per image (mean of {len(per_image)})", flush=True)
                del ckpt
    print(json.dumps({
        "bench": "codec_speed", "config": PAPER, "weights": f"random, seed {args.seed}",
        "images": timed, "warmup_image": warmup, "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if "cuda" in devices else None,
        "results": results,
    }))


if __name__ == "__main__":
    main()
