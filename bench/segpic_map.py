"""SegPIC's masked average pooling (MAP) and prototype expansion: the vectorised
versions of licbench.models.segpic against plain loops, on the CPU.

    python bench/segpic_map.py [--batch 8 --channels 192 --size 64 --regions 64]

Features of the size RAT sees at 1/4 resolution in training (256 crops, N=192),
and a random Voronoi partition of ``--regions`` regions per image (every region
present). Timed (the median of ``--repeat`` rounds after a warm-up, the three
functions in turn in each round; forward + backward over a third as many):

- ``vectorised``: ``mask_regions`` + ``masked_average_pool`` + ``expand_prototypes``
  (a renumbering, one scatter-add and one gather for the whole batch);
- ``region_loop``: the straightforward loop, per sample and per region, of a
  boolean mask, the mean of the features under it, and its write-back;
- ``one_hot_loop``: the official code's shape (``mask_pool2d`` / ``mask_expand``):
  per sample, a one-hot mask of every region multiplied onto the features.

``map_speedup`` is region_loop / vectorised; ``max_abs_diff`` the largest
difference of prototypes and expanded maps between the vectorised and the
region loop (float32). Forward + backward times are reported too. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.models.segpic import expand_prototypes, mask_regions, masked_average_pool  # noqa: E402


def voronoi_partitions(batch: int, size: int, regions: int, seed: int = 0) -> torch.Tensor:
    """(batch, size, size) ids 0..regions-1: each pixel takes its nearest seed point."""
    g = torch.Generator().manual_seed(seed)
    points = torch.randperm(size * size, generator=g)[: batch * regions].view(batch, regions)
    py, px = (points // size).float(), (points % size).float()
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d = (yy[None, None] - py[..., None, None]) ** 2 + (xx[None, None] - px[..., None, None]) ** 2
    return d.argmin(dim=1)


def vectorised(features, partition):
    ids, valid = mask_regions(partition)
    prototypes = masked_average_pool(features, ids, valid.shape[1])
    return prototypes[valid], expand_prototypes(prototypes, ids)


def region_loop(features, partition):
    """The plain reference (tests/test_segpic.py checks MAP against it): per
    sample, per region present (ascending ids), the mean of the features under
    its mask, written back over the mask."""
    prototypes, expanded = [], torch.empty_like(features)
    for b in range(features.shape[0]):
        for k in torch.unique(partition[b]).tolist():
            mask = partition[b] == k
            p = features[b][:, mask].mean(dim=1)
            prototypes.append(p)
            expanded[b][:, mask] = p[:, None]
    return torch.stack(prototypes), expanded


def one_hot_loop(features, partition):
    prototypes, expanded = [], []
    for b in range(features.shape[0]):
        one_hot = F.one_hot(partition[b]).permute(2, 0, 1)[None]  # 1, K, H, W
        area = one_hot.sum(dim=(-2, -1)) + 0.0005  # the official epsilon
        p = (features[b][:, None] * one_hot).sum(dim=(-2, -1)) / area  # C, K
        prototypes.append(p.t())
        expanded.append(p[:, partition[b]])
    return torch.cat(prototypes), torch.stack(expanded)


def interleaved(fns: dict, features, partition, repeat: int, backward: bool) -> dict:
    """Median seconds per call of each function, timed in turn within each
    round (a machine whose load changes affects them alike)."""
    def once(fn):
        f = features.detach().requires_grad_(backward)
        t0 = time.perf_counter()
        p, e = fn(f, partition)
        if backward:
            (p.sum() + e.square().sum()).backward()
        return time.perf_counter() - t0

    with torch.set_grad_enabled(backward):
        for fn in fns.values():
            once(fn)  # warm-up
        rounds = [{name: once(fn) for name, fn in fns.items()} for _ in range(repeat)]
    return {name: statistics.median(r[name] for r in rounds) for name in fns}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=192)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--regions", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    features = torch.randn(args.batch, args.channels, args.size, args.size)
    partition = voronoi_partitions(args.batch, args.size, args.regions)
    with torch.no_grad():
        ours = vectorised(features, partition)
        loop = region_loop(features, partition)
        official = one_hot_loop(features, partition)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, loop))
    diff_one_hot = max((a - b).abs().max().item() for a, b in zip(ours, official))

    fns = {"vectorised": vectorised, "region_loop": region_loop, "one_hot_loop": one_hot_loop}
    forward = interleaved(fns, features, partition, args.repeat, backward=False)
    both = interleaved(fns, features, partition, max(1, args.repeat // 3), backward=True)
    seconds = {name: {"forward": forward[name], "forward_backward": both[name]} for name in fns}
    result = {
        "map_speedup": seconds["region_loop"]["forward"] / seconds["vectorised"]["forward"],
        "max_abs_diff": diff,
        "speedup_over_one_hot_loop": seconds["one_hot_loop"]["forward"] / seconds["vectorised"]["forward"],
        "max_abs_diff_one_hot_loop": diff_one_hot,
        "speedup_forward_backward": (seconds["region_loop"]["forward_backward"]
                                     / seconds["vectorised"]["forward_backward"]),
        "seconds": seconds,
        "shape": [args.batch, args.channels, args.size, args.size],
        "regions_per_image": args.regions,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
