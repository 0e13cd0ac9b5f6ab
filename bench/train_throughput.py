"""Training throughput: images per second through licbench's training loop
(``train_model``: crop sampler, loss, both optimizers, clipping, logging) and
through a plain loop on the same machine (model, the same loss, clipping and
aux step, random tensors already on the device, no sampler, no logging).

The sampler's batches come from HWC arrays, so they are channels-last tensors,
and PyTorch's CPU convolutions run faster in that layout: the plain loop that
``ratio`` compares with uses the same layout; ``plain_nchw_images_per_second``
is the same loop on contiguous NCHW tensors (what ``torch.rand`` gives).

For each architecture at paper size (CompressAI zoo's N, M for ``--quality``;
N=192, M=320 for ``charm`` and ``wacnn``, which run only when named in ``--archs``)
and each device (CPU, and CUDA when present): pipeline and plain images/s,
their ratio, and the sampler's and the step's seconds per batch, so a starved
GPU shows. The last line is one JSON object; ``overhead_ratio`` is pipeline
images/s / plain images/s for ``--default-arch`` on the last device.

Both loops start from a fresh model; each architecture first runs one untimed
plain step (process-level warm-up), then plain and pipeline alternate
``--repeats`` times and the best of each counts: on a shared machine the
fastest sample is the least disturbed one.

    python bench/train_throughput.py                      # CPU defaults: minutes on 2 cores
    python bench/train_throughput.py --batch-size 8 --crop 256 --steps 20   # paper size, GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from compressai.losses import RateDistortionLoss
from compressai.zoo.image import cfgs

from licbench.config import train_config
from licbench.models import ARCHITECTURES, build_model
from licbench.train import split_parameters, train_model

REPO = Path(__file__).resolve().parents[1]


def plain_loop(arch: str, config: dict, device: torch.device, batch: int, crop: int, steps: int,
               channels_last: bool = True) -> float:
    """Images per second of the bare training step."""
    torch.manual_seed(0)
    model = build_model(arch, config).to(device).train()
    main, aux = split_parameters(model)
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=1e-4), torch.optim.Adam(aux, lr=1e-3)
    criterion = RateDistortionLoss(lmbda=0.01)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    xs = [torch.rand(batch, 3, crop, crop, device=device).contiguous(memory_format=layout)
          for _ in range(min(steps, 4))]
    start = time.perf_counter()
    for step in range(steps):
        x = xs[step % len(xs)]
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), x)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def pipeline(arch: str, config: dict, device: torch.device, batch: int, crop: int, steps: int) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(crop * 2, crop * 2, 3), dtype=np.uint8) for _ in range(16)]
    cfg = train_config(REPO / "params.yaml", steps=steps, batch_size=batch, crop=crop, lr=1e-4,
                       device=str(device), log_every=1, val_split=None, lr_schedule="none")
    with tempfile.TemporaryDirectory() as tmp:
        return train_model(arch, config, 0.01, cfg, images, Path(tmp) / "checkpoint.pt",
                           log_metrics=lambda metrics, step: None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=[a for a in ARCHITECTURES if a in cfgs])
    parser.add_argument("--default-arch", default="mbt2018-mean")
    parser.add_argument("--quality", type=int, default=1, help="CompressAI zoo quality: its N and M")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", nargs="+",
                        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = parser.parse_args()

    rows = []
    print("| device | arch | N, M | batch × crop | pipeline img/s | plain img/s | ratio "
          "| plain NCHW img/s | sampler s/batch | step s/batch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.devices:
        device = torch.device(name)
        for arch in args.archs:
            n, m = cfgs[arch][args.quality] if arch in cfgs else (192, 320)
            config = {"N": n, "M": m}
            plain_loop(arch, config, device, args.batch_size, args.crop, 1)
            plains, nchws, summaries = [], [], []
            for _ in range(args.repeats):
                plains.append(plain_loop(arch, config, device, args.batch_size, args.crop, args.steps))
                summaries.append(pipeline(arch, config, device, args.batch_size, args.crop, args.steps))
                nchws.append(plain_loop(arch, config, device, args.batch_size, args.crop, args.steps,
                                        channels_last=False))
            plain = max(plains)
            summary = max(summaries, key=lambda s: s["images_per_second"])
            row = {
                "device": name, "arch": arch, "N": n, "M": m, "batch_size": args.batch_size,
                "crop": args.crop, "steps": args.steps, "repeats": args.repeats,
                "pipeline_images_per_second": summary["images_per_second"],
                "plain_images_per_second": round(plain, 3),
                "ratio": round(summary["images_per_second"] / plain, 4),
                "plain_nchw_images_per_second": round(max(nchws), 3),
                "data_seconds_per_batch": summary["data_seconds_per_batch"],
                "step_seconds_per_batch": summary["step_seconds_per_batch"],
            }
            rows.append(row)
            print(f"| {name} | {arch} | {n}, {m} | {args.batch_size} × {args.crop}² "
                  f"| {row['pipeline_images_per_second']:.2f} | {row['plain_images_per_second']:.2f} "
                  f"| {row['ratio']:.3f} | {row['plain_nchw_images_per_second']:.2f} "
                  f"| {row['data_seconds_per_batch']:.4f} "
                  f"| {row['step_seconds_per_batch']:.3f} |", flush=True)
    default = [r for r in rows if r["arch"] == args.default_arch]
    print(json.dumps({
        "rows": rows,
        "default_arch": args.default_arch,
        "overhead_ratio": default[-1]["ratio"] if default else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }))


if __name__ == "__main__":
    main()
