"""Seconds per image of the masks stage's segmenters on this machine's CPU, and
milliseconds per call of the partition a training loader asks for.

    python bench/masks_speed.py --images ../shared/data/mirror/bsds500/train

- the classical fallback with params.yaml's settings (and at full size,
  ``downscale`` 1), one process, over ``--fallback-images`` images;
- SAM vit_b with random weights (no checkpoint is needed to time it: the cost
  does not depend on the weights, only on the architecture and the settings) at
  SAM's default settings (32 x 32 prompts, images resized to 1024 on the long
  side), over ``--sam-images`` images;
- ``partition_from_rles``: on the fallback's masks (a partition already) and on
  120 overlapping random masks per image (SAM-like: holes and overlaps).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.data.images import load_rgb8  # noqa: E402
from licbench.masks.generate import make_segmenter, mask_record  # noqa: E402
from licbench.masks.rle import partition_from_rles  # noqa: E402
from licbench.config import load_params  # noqa: E402


def timed(segment, images):
    seconds, counts = [], []
    for im in images:
        t0 = time.perf_counter()
        masks = segment(im)
        seconds.append(time.perf_counter() - t0)
        counts.append(len(masks))
    return {"seconds_per_image": float(np.mean(seconds)), "masks_per_image": float(np.mean(counts)),
            "images": len(images)}, masks


def partition_ms(rles_per_image, shapes, repeat=5):
    times = []
    for rles, (h, w) in zip(rles_per_image, shapes):
        partition_from_rles(rles, h, w)  # warm up
        t0 = time.perf_counter()
        for _ in range(repeat):
            partition_from_rles(rles, h, w)
        times.append((time.perf_counter() - t0) / repeat * 1e3)
    return float(np.mean(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(REPO.parent / "shared/data/mirror/bsds500/train"),
                        help="folder of images (sorted; the first ones are used)")
    parser.add_argument("--fallback-images", type=int, default=20)
    parser.add_argument("--sam-images", type=int, default=2)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args()

    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".png"))
    n = max(args.fallback_images, args.sam_images)
    images = [load_rgb8(p).array for p in files[:n]]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "torch_threads": torch.get_num_threads(), "image_size": list(images[0].shape[:2]),
              "images_from": args.images}

    fallback = {"masks": {"generator": "fallback"}}
    fb = make_segmenter(load_params(args.params, fallback).masks)
    fb_stats, _ = timed(fb.segment, images[: args.fallback_images])
    result["fallback"] = {"method": fb.name, "downscale": fb.settings["downscale"], **fb_stats}
    full = make_segmenter(load_params(args.params, {"masks": {"generator": "fallback",
                                                              "fallback": {"downscale": 1}}}).masks)
    result["fallback_full_size"] = {"method": full.name, "downscale": 1,
                                    **timed(full.segment, images[: args.fallback_images])[0]}

    fb_rles = [[m.counts for m in fb.segment(im)] for im in images[: args.fallback_images]]
    shapes = [im.shape[:2] for im in images[: args.fallback_images]]
    rng = np.random.default_rng(0)
    overlapping = []
    for h, w in shapes:
        masks = []
        for _ in range(120):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            y1, x1 = y0 + rng.integers(8, h - y0 + 1), x0 + rng.integers(8, w - x0 + 1)
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = True
            masks.append(mask_record(m).counts)
        overlapping.append(masks)
    result["partition_ms"] = {"fallback_masks": partition_ms(fb_rles, shapes),
                              "overlapping_120_masks": partition_ms(overlapping, shapes)}

    if args.sam_images:
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        model = sam_model_registry["vit_b"](checkpoint=None)
        sam_cfg = load_params(args.params, {"masks": {"generator": "sam", "device": "cpu",
                                                      "sam": {"model_type": "vit_b"}}}).masks
        sam = make_segmenter(sam_cfg, model=model)
        with torch.no_grad():  # the image encoder alone, once, at SAM's 1024 x 1024 input
            t0 = time.perf_counter()
            model.image_encoder(torch.zeros(1, 3, 1024, 1024))
            encoder_seconds = time.perf_counter() - t0
        stats, _ = timed(sam.segment, images[: args.sam_images])
        result["sam_vit_b_random_cpu"] = {
            "settings": {k: sam.settings[k] for k in ("points_per_side", "pred_iou_thresh",
                                                      "stability_score_thresh", "image_size")},
            **stats,
            "image_encoder_seconds": encoder_seconds,
            "note": "random weights: the thresholds keep few masks; the time is the model's",
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
