"""The latent coders' float64 layers through numpy's BLAS (coding/latent/layers.py)
against PyTorch's own float64 (MKL, ATen), CPU, on the shapes of a 768 x 512 image.

- ``Convolutions`` of the hyper-syntheses (``h_s``) of ELIC, mbt2018-mean,
  bmshj2018-hyperprior, cheng2020-anchor and mbt2018 at paper size, and ELIC's
  four channel contexts, against the stacks themselves;
- the parameter networks' products (``Pointwise``: ELIC's first group, at one
  checkerboard pass, 768 positions, and at a wavefront of 16), against
  ``F.linear``.

Both sides compute on the same float64 copies and must agree to 1e-12; the
fastest of ``--repeats`` calls is kept. Which side is faster depends on the
kernels numpy's OpenBLAS runs, so the JSON (last line) names them: some
machines force them with OPENBLAS_CORETYPE (docs/measurements/compressai-speed.md).

    python bench/float64_products.py --threads 1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/float64_products.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from compressai.models import (
    Cheng2020Anchor, Elic2022Official, JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior, ScaleHyperprior,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_mbt2018 import blas_kernels  # noqa: E402
from licbench.coding.latent.layers import Convolutions, Pointwise  # noqa: E402

F64 = torch.float64


def fastest(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stacks() -> dict:
    """name -> (stack, its input): the hyper-syntheses on z of a 768 x 512
    image (12 x 8), the channel contexts on y (48 x 32)."""
    elic = Elic2022Official(N=192, M=320)
    out = {f"{name} h_s": (model.h_s, torch.randn(1, n, 8, 12, dtype=F64)) for name, model, n in (
        ("mbt2018-mean", MeanScaleHyperprior(192, 320), 192),
        ("bmshj2018-hyperprior", ScaleHyperprior(128, 192), 128),
        ("mbt2018", JointAutoregressiveHierarchicalPriors(192, 192), 192))}
    out["cheng2020-anchor h_s"] = (Cheng2020Anchor(192).h_s, torch.randn(1, 192, 8, 12, dtype=F64))
    out["elic h_s"] = (elic.latent_codec["hyper"].h_s, torch.randn(1, 192, 8, 12, dtype=F64))
    for k, stack in elic.latent_codec["y"].channel_context.items():
        out[f"elic channel_context.{k}"] = (stack, torch.randn(1, stack[0].in_channels, 32, 48, dtype=F64))
    return out, elic.latent_codec["y"].latent_codec["y0"].entropy_parameters


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers, parameters = stacks()
    rows = {}
    for name, (stack, x) in layers.items():
        stack = stack.double()
        ours = Convolutions(stack)
        torch.testing.assert_close(ours(x), stack(x), rtol=0, atol=1e-12)
        rows[name] = {"torch": fastest(lambda: stack(x), args.repeats), "licbench": fastest(lambda: ours(x), args.repeats)}
    parameters = parameters.double()
    ours = Pointwise(parameters, "entropy_parameters")
    for positions in (768, 16):
        h = torch.randn(positions, parameters[0].in_channels, dtype=F64)
        expected = parameters(h[:, :, None, None])[:, :, 0, 0]
        torch.testing.assert_close(ours(h), expected, rtol=0, atol=1e-12)
        weights = [(m.weight[:, :, 0, 0], m.bias) for m in parameters if isinstance(m, torch.nn.Conv2d)]

        def linear(h=h):
            for i, (w, b) in enumerate(weights):
                h = torch.nn.functional.linear(h, w, b)
                if i < len(weights) - 1:
                    h = torch.relu(h)
            return h
        torch.testing.assert_close(linear(), expected, rtol=0, atol=1e-12)
        rows[f"elic entropy_parameters.y0, {positions} positions"] = {
            "torch": fastest(linear, args.repeats), "licbench": fastest(lambda: ours(h), args.repeats)}
    for name, r in rows.items():
        print(f"{name}: torch {r['torch'] * 1e3:.2f} ms, licbench {r['licbench'] * 1e3:.2f} ms, "
              f"ratio {r['licbench'] / r['torch']:.2f}", file=sys.stderr)
    total = {side: sum(r[side] for r in rows.values()) for side in ("torch", "licbench")}
    print(json.dumps({"threads": args.threads, "repeats": args.repeats, "blas": blas_kernels(),
                      "seconds": {k: {s: round(v, 5) for s, v in r.items()} for k, r in rows.items()},
                      "ratios": {k: round(r["licbench"] / r["torch"], 3) for k, r in rows.items()},
                      "total_ratio": round(total["licbench"] / total["torch"], 3)}))


if __name__ == "__main__":
    main()
