"""The float32 transforms (g_a, g_s) in the two memory layouts, CPU.

licbench's coders give g_a and g_s their input through
``licbench.coding.latent.transforms_input``: float32, channels last on the CPU.
This times, for each architecture at its paper size (random seeded weights, a
768 x 512 input: Kodak's size), g_a and g_s on a contiguous (NCHW) input and
on a channels-last one, the fastest of ``--repeats``, alternating, and the
largest difference between the two outputs.

    python bench/transforms_layout.py
    python bench/transforms_layout.py --arch elic --threads 1 2

One line per (architecture, threads), then one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from licbench.coding.latent import transforms_input
from licbench.models import ARCHITECTURES, build_model


def timed(fn, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - start, out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["elic", "mbt2018-mean", "cheng2020-anchor"],
                        choices=sorted(ARCHITECTURES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for arch in args.arch:
        torch.manual_seed(args.seed)
        model = build_model(arch, dict(ARCHITECTURES[arch].paper)).eval()
        x = torch.rand(1, 3, 512, 768)
        for threads in args.threads:
            torch.set_num_threads(threads)
            row = {"arch": arch, "threads": threads}
            plain = x  # g_a's input, then g_s's (g_a's contiguous output)
            for name in ("g_a", "g_s"):
                transform = getattr(model, name)
                layouts = {"contiguous": plain.contiguous(), "channels_last": transforms_input(plain, model)}
                timed(transform, layouts["contiguous"])  # warm-up
                seconds = {layout: [] for layout in layouts}
                outs = {}
                for _ in range(args.repeats):  # alternate, so that a change of load falls on both
                    for layout, t in layouts.items():
                        s, outs[layout] = timed(transform, t)
                        seconds[layout].append(s)
                best = {layout: min(s) for layout, s in seconds.items()}
                row[name] = {**{layout: round(s, 3) for layout, s in best.items()},
                             "ratio": round(best["channels_last"] / best["contiguous"], 3),
                             "max_abs_diff": float((outs["contiguous"] - outs["channels_last"]).abs().max())}
                plain = outs["contiguous"]
            print(f"{arch}, {threads} thread(s): g_a {row['g_a']['contiguous']} -> {row['g_a']['channels_last']} s, "
                  f"g_s {row['g_s']['contiguous']} -> {row['g_s']['channels_last']} s")
            rows.append(row)
    print(json.dumps({"input": [1, 3, 512, 768], "repeats": args.repeats, "rows": rows}))


if __name__ == "__main__":
    main()
