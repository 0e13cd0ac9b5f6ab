"""mbt2018 on Kodak, CPU: licbench's wavefront coder against CompressAI's raster loop.

Same weights for both: CompressAI's ``model.compress`` / ``model.decompress``
(float32, one latent position per step) and licbench's ``encode`` / ``decode``
(coding/latent/wavefront.py: one anti-diagonal per step, float64 entropy
parameters). Decoding is timed whole and split at the synthesis transform: the
latent decoding is everything before g_s starts (a forward pre-hook marks it).
Every figure is the median over images of the fastest of ``--repeats`` runs
(the least disturbed by other work on the machine); speedups are CompressAI's
seconds over ours.

Without ``--checkpoint`` the model has random weights at the given size, made
into a plausible codec first: a random g_a gives a latent of std ~0.05 (every
symbol 0), so its last layer is rescaled to a latent of std ``--latent-std``,
then the entropy model alone (h_a, h_s, context model, entropy parameters,
factorized prior) is fitted to that latent by ``--adapt-steps`` of the rate
loss on 256x256 Kodak crops. The bpp it then codes at is in the JSON.

    python bench/decode_mbt2018.py --images 4              # paper size, N = M = 192
    python bench/decode_mbt2018.py --checkpoint models/mbt2018-0.0130/checkpoint.pt

Per-image lines, then one JSON object (the last line) with
``latent_decode_speedup``, ``decode_speedup``, ``encode_speedup``,
``identical`` (for every image the decoder rebuilt our encoder's quantized
latent exactly), ``max_psnr_diff_db`` (largest |PSNR ours - PSNR CompressAI|
on the same image), ``symbols_differing`` (latent symbols where the two codecs
quantized differently: float32 against float64 means on a .5 boundary), the
seconds, bpp and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8  # noqa: E402
from licbench.data.images import load_rgb8  # noqa: E402
from licbench.metrics import psnr  # noqa: E402
from licbench.models import Checkpoint, build_model, load_checkpoint, weights_digest  # noqa: E402
from licbench.train import split_parameters  # noqa: E402

ARCH = "mbt2018"


def kodak_images(count: int) -> list[Path]:
    mirror = os.environ.get("LICBENCH_MIRROR")
    roots = [Path(mirror) / "kodak"] if mirror else []
    roots += [REPO / "data" / "kodak", REPO.parent / "shared" / "data" / "mirror" / "kodak"]
    for root in roots:
        paths = sorted(root.glob("kodim*.png"))
        if len(paths) == 24:
            return paths[:count]
    sys.exit("no Kodak images: set LICBENCH_MIRROR or run the datasets stage (data/kodak)")


def rate_bits(model, y: torch.Tensor) -> torch.Tensor:
    """-log2 likelihood of y and z under the entropy model (training-mode noise)."""
    z = model.h_a(y)
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    params = model.h_s(z_hat)
    y_hat = model.gaussian_conditional.quantize(y, "noise")
    ctx = model.context_prediction(y_hat)
    scales, means = model.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
    _, y_likelihoods = model.gaussian_conditional(y, scales, means=means)
    return -(torch.log2(y_likelihoods).sum() + torch.log2(z_likelihoods).sum())


def random_crops(images: list[np.ndarray], seed: int) -> torch.Tensor:
    """8 x 3 x 256 x 256: seeded random crops of ``images``, in turn, for a rate-only fit."""
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(8):
        im = images[i % len(images)]
        top = int(torch.randint(im.shape[0] - 255, (1,), generator=generator))
        left = int(torch.randint(im.shape[1] - 255, (1,), generator=generator))
        crops.append(to_tensor(im[top:top + 256, left:left + 256]))
    return torch.cat(crops)


def plausible_codec(model, images: list[np.ndarray], latent_std: float, steps: int, seed: int):
    """Rescale g_a's output to ``latent_std``, fit the entropy model to it (rate only)."""
    x = random_crops(images, seed)
    with torch.no_grad():
        last = model.g_a[-1]
        gain = latent_std / model.g_a(x).std()
        last.weight.mul_(gain)
        last.bias.mul_(gain)
        y = model.g_a(x)
    entropy_model = [model.h_a, model.h_s, model.context_prediction, model.entropy_parameters,
                     model.entropy_bottleneck]
    params = [p for m in entropy_model for p in m.parameters()]
    main, aux = split_parameters(torch.nn.ModuleList(entropy_model))
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=1e-3), torch.optim.Adam(aux, lr=1e-2)
    model.train()
    for step in range(steps):
        batch = y[step % 4 * 2: step % 4 * 2 + 2]
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        (rate_bits(model, batch) / (batch.size(0) * 256 * 256)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
    model.eval()
    model.update(force=True, update_quantiles=True)
    with torch.no_grad():
        bpp = float(rate_bits(model.train(), y) / (y.size(0) * 256 * 256))
    model.eval()
    return bpp


class SynthesisMark:
    """Records when g_s starts: the end of the latent decoding."""

    def __init__(self, model):
        self.at = None
        self.latent = None
        model.g_s.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        self.at = time.perf_counter()
        self.latent = inputs[0]


def timed(fn, mark: SynthesisMark):
    """fn's result, its seconds, and the seconds until g_s started (None if it did not)."""
    mark.at = None
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, None if mark.at is None else mark.at - t0


def fastest(repeats: int, fn, mark: SynthesisMark):
    """``timed`` run ``repeats`` times: the last result, the fewest seconds of
    each measure (the latent's marker is left from the last run)."""
    runs = [timed(fn, mark) for _ in range(max(1, repeats))]
    latent = [r[2] for r in runs if r[2] is not None]
    return runs[-1][0], min(r[1] for r in runs), min(latent) if latent else None


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="the first N Kodak images (default: all 24)")
    parser.add_argument("--N", type=int, default=192)
    parser.add_argument("--M", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoint", type=Path, help="a trained licbench mbt2018 checkpoint")
    parser.add_argument("--latent-std", type=float, default=1.5)
    parser.add_argument("--adapt-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="time each step this many times, keep the fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = kodak_images(args.images)
    images = [load_rgb8(p).array for p in paths]

    setup = time.perf_counter()
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        if ckpt.arch != ARCH:
            sys.exit(f"{args.checkpoint}: a {ckpt.arch} checkpoint, this benchmark is for {ARCH}")
        model, source = ckpt.model, str(args.checkpoint)
        adapted_bpp = None
    else:
        torch.manual_seed(args.seed)
        config = {"N": args.N, "M": args.M}
        model = build_model(ARCH, config)
        with torch.enable_grad():
            adapted_bpp = plausible_codec(model, images, args.latent_std, args.adapt_steps, args.seed)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        ckpt = Checkpoint(ARCH, config, 0.0, model, weights_digest(state), {})
        source = f"random (seed {args.seed}), latent std {args.latent_std}, {args.adapt_steps} rate-only steps"
    print(f"model: {source}, N={ckpt.config['N']} M={ckpt.config['M']}, setup {time.perf_counter() - setup:.1f} s",
          file=sys.stderr)
    mark = SynthesisMark(model)

    warm_up(ckpt, model, images[0])

    rows = []
    for path, image in zip(paths, images):
        x = pad_to_multiple(to_tensor(image), 64)
        cai, cai_encode, _ = fastest(args.repeats, lambda: model.compress(x), mark)
        cai_out, cai_decode, cai_latent_t = fastest(
            args.repeats, lambda: model.decompress(cai["strings"], cai["shape"]), mark)
        cai_latent = mark.latent
        (bs, enc_latent), our_encode, _ = fastest(args.repeats, lambda: encode(ckpt, image), mark)
        (decoded, dec_latent), our_decode, our_latent_t = fastest(args.repeats, lambda: decode(ckpt, bs), mark)
        rows.append(image_row(path, image, bs, enc_latent, decoded, dec_latent, cai_out, cai_latent,
                              {"encode": cai_encode, "decode": cai_decode, "latent_decode": cai_latent_t},
                              {"encode": our_encode, "decode": our_decode, "latent_decode": our_latent_t}))

    result = {"images": len(rows), "N": int(ckpt.config["N"]), "M": int(ckpt.config["M"]),
              **comparison(rows, source, args.repeats, adapted_bpp)}
    print(json.dumps(result))


def warm_up(ckpt: Checkpoint, model, image: np.ndarray) -> None:
    """Both codecs once on a 128 x 128 crop: first-call allocations, the float64 copy of the model."""
    warm = image[:128, :128]
    decode(ckpt, encode(ckpt, warm)[0])
    out = model.compress(to_tensor(warm))
    model.decompress(out["strings"], out["shape"])


def image_row(path: Path, image: np.ndarray, bs, enc_latent: torch.Tensor, decoded: np.ndarray,
              dec_latent: torch.Tensor, cai_out: dict, cai_latent: torch.Tensor, cai_seconds: dict,
              our_seconds: dict, cai_strings=None) -> dict:
    """One image of a licbench-against-CompressAI bench (this one and
    compressai_speed.py), printed as one line: bpp (and CompressAI's, given its
    strings), the decoder's exactness, the symbols the two quantized
    differently, PSNR, seconds."""
    h, w = image.shape[:2]
    cai_image = to_uint8(cai_out["x_hat"][..., :h, :w])
    row = {"image": path.name, "bpp": 8 * sum(len(s) for s in bs.streams) / (h * w)}
    if cai_strings is not None:
        row["bpp_compressai"] = 8 * sum(map(len, cai_strings)) / (h * w)
    row.update({
        "identical": torch.equal(enc_latent, dec_latent),
        "symbols_differing": int(((cai_latent - dec_latent).abs() > 0.5).sum()),
        "symbols": dec_latent.numel(),
        "psnr": psnr(image, decoded),
        "psnr_compressai": psnr(image, cai_image),
        "max_pixel_diff": int(np.abs(decoded.astype(int) - cai_image.astype(int)).max()),
        "compressai": cai_seconds,
        "licbench": our_seconds,
    })
    theirs = f" ({row['bpp_compressai']:.3f} CompressAI)" if cai_strings is not None else ""
    print(f"{path.name}: {row['bpp']:.3f} bpp{theirs}, identical {row['identical']}, "
          f"{row['symbols_differing']} symbols differ, PSNR {row['psnr']:.3f} / {row['psnr_compressai']:.3f} dB; "
          f"encode {our_seconds['encode']:.2f} / {cai_seconds['encode']:.2f} s, "
          f"decode {our_seconds['decode']:.2f} / {cai_seconds['decode']:.2f} s, "
          f"latent {our_seconds['latent_decode']:.2f} / {cai_seconds['latent_decode']:.2f} s "
          "(licbench / CompressAI)", flush=True)
    return row


def blas_kernels() -> dict:
    """The BLAS libraries loaded (threadpoolctl: numpy's and scipy's OpenBLAS run
    the float64 channel contexts, coding/latent/layers.py) with the kernels each
    chose, and OPENBLAS_CORETYPE, which overrides that choice (some machines set
    it: docs/measurements/compressai-speed.md)."""
    libs = [f"{lib['internal_api']} {lib['version']} {lib.get('architecture')}"
            for lib in threadpool_info() if lib["user_api"] == "blas"]
    return {"libraries": libs, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def comparison(rows: list[dict], source: str, repeats: int, adapted_bpp: float | None) -> dict:
    """The JSON of a licbench-against-CompressAI decoding bench (this one and
    compressai_speed.py): the median seconds of both, the decoder's exactness, the
    speed-ups (CompressAI's seconds over ours)."""
    def median(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in rows)

    result = {
        "model": source,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "blas": blas_kernels(),
        "bpp": round(statistics.median(r["bpp"] for r in rows), 4),
        "adapted_estimated_bpp": None if adapted_bpp is None else round(adapted_bpp, 4),
        "compressai_seconds": {k: round(median("compressai", k), 3) for k in ("encode", "decode", "latent_decode")},
        "licbench_seconds": {k: round(median("licbench", k), 3) for k in ("encode", "decode", "latent_decode")},
        "identical": all(r["identical"] for r in rows),
        "symbols_differing": sum(r["symbols_differing"] for r in rows),
        "symbols": sum(r["symbols"] for r in rows),
        "max_pixel_diff": max(r["max_pixel_diff"] for r in rows),
        "max_psnr_diff_db": round(max(abs(r["psnr"] - r["psnr_compressai"]) for r in rows), 6),
    }
    for key in ("latent_decode", "decode", "encode"):
        result[f"{key}_speedup"] = round(median("compressai", key) / median("licbench", key), 2)
    return result


if __name__ == "__main__":
    main()
