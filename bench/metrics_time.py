"""Seconds each metric of licbench.metrics takes per Kodak image, on the CPU.

Each of the first ``--images`` Kodak images is compressed with Pillow's JPEG
at quality 30 and every metric (all of METRICS but those that need supplied
weights) is measured on the pair ``--repeats`` times, after one untimed call
that warms its library up; the figure is the median. The evaluate and anchors
stages measure ``evaluate.metrics`` / ``anchors.metrics`` the same way, per
decoded image: the sum over a selection is what it adds to each image.

    LICBENCH_MIRROR=../shared/data/mirror python bench/metrics_time.py --images 3

The last line is one JSON object: seconds per metric, the sums for the quick
default's selection (params.yaml evaluate.metrics), for PSNR and MS-SSIM
alone, and for every metric, and the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from licbench import metrics as M
from licbench.config import load_section, resolve_mirror
from licbench.device import device_name

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kodak", type=Path, help="folder of kodim*.png (default: the mirror's kodak/)")
    args = parser.parse_args()
    folder = args.kodak
    if folder is None:
        mirror = resolve_mirror(load_section(REPO / "params.yaml", "datasets"))
        if mirror is None:
            parser.error("no --kodak and no LICBENCH_MIRROR / datasets.mirror")
        folder = mirror / "kodak"
    names = [n for n in M.METRICS if n not in M.WEIGHT_FILES]  # LPIPS, DISTS: only with weights
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for path in sorted(folder.glob("kodim*.png"))[: args.images]:
        ref = np.asarray(Image.open(path).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(ref).save(buf, "JPEG", quality=30)
        dec = np.asarray(Image.open(buf).convert("RGB"))
        for name in names:
            M.measure(ref, dec, [name])
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                M.measure(ref, dec, [name])
                times.append(time.perf_counter() - start)
            seconds[name].append(statistics.median(times))
        print(f"{path.name}: " + ", ".join(f"{n} {seconds[n][-1]:.2f} s" for n in names), flush=True)
    per_metric = {n: round(statistics.mean(v), 4) for n, v in seconds.items()}
    quick = list(load_section(REPO / "params.yaml", "evaluate").metrics)
    print(json.dumps({
        "images": args.images, "repeats": args.repeats,
        "seconds_per_image": per_metric,
        "sum_quick_default": round(sum(per_metric[n] for n in quick), 4), "quick_default": quick,
        "sum_psnr_ms_ssim": round(per_metric["psnr"] + per_metric["ms_ssim"], 4),
        "sum_all": round(sum(per_metric.values()), 4),
        "device": device_name("cpu"), "load_average": os.getloadavg()[0], "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
