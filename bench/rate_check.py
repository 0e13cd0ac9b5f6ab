"""Rate of the real files against the entropy model's estimate, after a short training.

For each architecture: ``train_model`` on random crops of BSDS500's training
images (from the mirror), then for each of the first ``--images`` Kodak
images the file the evaluate stage would write (container header included)
against the estimate of the eval-mode forward pass (``-sum log2 p`` of y and
z), overall and per stream. The gap comes from the coder's 64-scale table
(each scale is rounded up to the next entry), its 16-bit probabilities, the
CDF tails, the streams' final words and the ~60-byte header.

    python bench/rate_check.py                       # N=16, M=40, 150 steps of batch 8: ~20 min on 2 busy cores
    python bench/rate_check.py --steps 1000 --N 32 --M 40

The last line is one JSON object: per architecture, the training summary and
per image bpp from bytes, estimated bpp and their relative gap.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from licbench.coding.codec import encode, pad_to_multiple, to_tensor
from licbench.coding.container import encode_container
from licbench.data.images import load_rgb8
from licbench.metrics import bpp_from_bytes
from licbench.models import load_checkpoint
from licbench.config import train_config
from licbench.train import train_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["charm", "wacnn"])
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument("--M", type=int, default=40)
    parser.add_argument("--lmbda", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=4, help="the first N Kodak images")
    parser.add_argument("--mirror", default=os.environ.get("LICBENCH_MIRROR", "../shared/data/mirror"))
    args = parser.parse_args()
    mirror = Path(args.mirror)
    train_images = [load_rgb8(p).array for p in sorted((mirror / "bsds500" / "train").glob("*.jpg"))]
    kodak = {p.name: load_rgb8(p).array for p in sorted((mirror / "kodak").glob("kodim*.png"))[: args.images]}
    cfg = train_config(REPO / "params.yaml", steps=args.steps, batch_size=args.batch_size,
                       crop=args.crop, lr=args.lr, device="cpu", log_every=max(1, args.steps // 10),
                       seed=0, val_split=None, lr_schedule="none")
    config = {"N": args.N, "M": args.M}

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            path = Path(tmp) / f"{arch}.pt"
            summary = train_model(arch, config, args.lmbda, cfg, train_images, path)
            ckpt = load_checkpoint(path)
            per_image = {}
            for name, image in kodak.items():
                h, w = image.shape[:2]
                bs, _ = encode(ckpt, image)
                with torch.no_grad():
                    out = ckpt.model(pad_to_multiple(to_tensor(image), 64))
                estimated = {k: float(-torch.log2(v).sum()) / (h * w) for k, v in out["likelihoods"].items()}
                bpp = bpp_from_bytes(len(encode_container(bs)), h, w)
                est = sum(estimated.values())
                per_image[name] = {
                    "bpp": round(bpp, 5), "bpp_estimated": round(est, 5), "gap": round(bpp / est - 1, 5),
                    "y_gap": round(bpp_from_bytes(len(bs.streams[0]), h, w) / estimated["y"] - 1, 5),
                    "z_gap": round(bpp_from_bytes(len(bs.streams[1]), h, w) / estimated["z"] - 1, 5),
                }
            gaps = [r["gap"] for r in per_image.values()]
            results[arch] = {"train": {k: summary[k] for k in ("steps", "seconds", "final")},
                             "mean_gap": round(sum(gaps) / len(gaps), 5), "per_image": per_image}
            print(f"{arch}: file / estimate - 1 = {results[arch]['mean_gap']:+.2%} "
                  f"(mean over {len(gaps)} Kodak images)", flush=True)
    print(json.dumps({"bench": "rate_check", "config": config, "lambda": args.lmbda,
                      "train": {"steps": args.steps, "batch_size": args.batch_size, "crop": args.crop,
                                "lr": args.lr, "data": "bsds500/train"},
                      "results": results}))


if __name__ == "__main__":
    main()
