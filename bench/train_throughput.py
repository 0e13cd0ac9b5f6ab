"""Training throughput: images per second through licbench's training loop
(``train_model``: crop sampler, loss, both optimizers, clipping, logging) and
through a plain loop on the same machine (CompressAI's step: model, the same
loss, clipping and aux step, random tensors already on the device, no sampler,
no logging); bench/train_loops.py holds both and says how they are timed.

The sampler's batches come from HWC arrays, so they are channels-last tensors,
and PyTorch's CPU convolutions can run faster in that layout: the plain loop
that ``ratio`` compares with uses the same input layout;
``plain_nchw_images_per_second`` is the same loop on contiguous NCHW tensors
(what ``torch.rand`` and CompressAI's ``ToTensor`` give).

For each architecture at paper size (CompressAI zoo's N, M for ``--quality``;
N=192, M=320 for ``charm`` and ``wacnn``, which run only when named in ``--archs``)
and each device (CPU, and CUDA when present): pipeline and plain images/s,
their ratio, and the sampler's and the step's seconds per batch, so a starved
GPU shows. Each images/s figure is the batch over the median step of
``--steps`` timed steps (after ``--warmup`` untimed ones) pooled over
``--repeats`` runs; the runs of the three loops are interleaved (A B C C B A
...), so the i-th pipeline run always sits next to the i-th plain run, and
``ratio`` is the median of those pairs' ratios (a load that comes and goes
over minutes touches both runs of a pair alike). ``spread`` is how far the
runs of one loop, or the pairs' ratios (``ratio_spread``), are apart:
(max - min) / median; a ratio is resolved only where it is further from 1
than its spread. The last line is one JSON object; ``overhead_ratio`` is the
ratio for ``--default-arch`` on the last device.

    python bench/train_throughput.py                      # CPU defaults: minutes on 2 cores
    python bench/train_throughput.py --batch-size 8 --crop 256 --steps 40   # paper size, GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from compressai.zoo.image import cfgs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.models import ARCHITECTURES  # noqa: E402
from train_loops import PlainLoop, interleave, paired_ratio, pipeline_steps, rate  # noqa: E402


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=[a for a in ARCHITECTURES if a in cfgs])
    parser.add_argument("--default-arch", default="mbt2018-mean")
    parser.add_argument("--quality", type=int, default=1, help="CompressAI zoo quality: its N and M")
    parser.add_argument("--steps", type=int, default=16, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, interleaved")
    parser.add_argument("--devices", nargs="+",
                        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(args.crop * 2, args.crop * 2, 3), dtype=np.uint8) for _ in range(16)]
    rows = []
    print("| device | arch | N, M | batch × crop | pipeline img/s | plain img/s | ratio "
          "| ratio spread | spread pipeline / plain | plain NCHW img/s | sampler s/batch | step s/batch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.devices:
        device = torch.device(name)
        for arch in args.archs:
            n, m = cfgs[arch][args.quality] if arch in cfgs else (192, 320)
            config = {"N": n, "M": m}
            shape = dict(batch_size=args.batch_size, crop=args.crop)
            plain = PlainLoop(arch, config, 0.01, device, **shape, channels_last_input=True)
            nchw = PlainLoop(arch, config, 0.01, device, **shape)
            summaries = []

            def pipeline() -> list[float]:
                with tempfile.TemporaryDirectory() as tmp:
                    steps, summary = pipeline_steps(arch, config, 0.01, images, tmp, steps=args.warmup + args.steps + 1,
                                                    lr=1e-4, device=name, **shape)
                summaries.append(summary)
                return steps[args.warmup:]

            runs = interleave({
                "plain": lambda: plain.run(args.warmup + args.steps)[args.warmup:],
                "pipeline": pipeline,
                "nchw": lambda: nchw.run(args.warmup + args.steps)[args.warmup:],
            }, args.repeats)
            measured = {k: rate(v, args.batch_size) for k, v in runs.items()}
            paired = paired_ratio(runs["pipeline"], runs["plain"])
            row = {
                "device": name, "arch": arch, "N": n, "M": m, "batch_size": args.batch_size,
                "crop": args.crop, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                "pipeline_images_per_second": measured["pipeline"]["images_per_second"],
                "plain_images_per_second": measured["plain"]["images_per_second"],
                "ratio": paired["ratio"],
                "ratio_runs": paired["runs"],
                "ratio_spread": paired["spread"],
                "plain_nchw_images_per_second": measured["nchw"]["images_per_second"],
                "runs": {k: v["runs"] for k, v in measured.items()},
                "spread": {k: v["spread"] for k, v in measured.items()},
                "data_seconds_per_batch": float(np.median([s["data_seconds_per_batch"] for s in summaries])),
                "step_seconds_per_batch": float(np.median([s["step_seconds_per_batch"] for s in summaries])),
            }
            rows.append(row)
            print(f"| {name} | {arch} | {n}, {m} | {args.batch_size} × {args.crop}² "
                  f"| {row['pipeline_images_per_second']:.2f} | {row['plain_images_per_second']:.2f} "
                  f"| {row['ratio']:.3f} | {fmt(row['ratio_spread'])} "
                  f"| {fmt(row['spread']['pipeline'])} / {fmt(row['spread']['plain'])} "
                  f"| {row['plain_nchw_images_per_second']:.2f} | {row['data_seconds_per_batch']:.4f} "
                  f"| {row['step_seconds_per_batch']:.3f} |", flush=True)
    default = [r for r in rows if r["arch"] == args.default_arch]
    print(json.dumps({
        "rows": rows,
        "default_arch": args.default_arch,
        "overhead_ratio": default[-1]["ratio"] if default else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }))


if __name__ == "__main__":
    main()
