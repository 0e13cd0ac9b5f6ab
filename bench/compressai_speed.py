"""licbench against CompressAI's own compress/decompress, on the same weights and Kodak images, CPU.

The wavefront-coded architectures (``cheng2020-anchor``, the default,
``cheng2020-attn``, ``mbt2018``) at N = 192 with random seeded weights, made
into a plausible codec as bench/decode_mbt2018.py does (g_a's output rescaled
to a latent std of ``--latent-std``, the entropy model fitted to it by
``--adapt-steps`` of the rate loss; CDF tables updated): CompressAI's serial
loop (``_decompress_ar``: one latent position per step) against licbench's
wavefront (coding/latent/wavefront.py: one anti-diagonal per step).

CompressAI's other models that licbench codes with its own coders
(``elic``: checkerboard and channel groups; ``mbt2018-mean``,
``bmshj2018-hyperprior``: the hyperprior coder; ``bmshj2018-factorized``) at
their paper size (the registry's), g_a's last convolution scaled so that the
latent has std ``--latent-std`` on kodim01, then everything but g_a and g_s
fitted by ``--adapt-steps`` of the rate loss (``fit_rate``), the CDF tables
updated.

Both sides run in float32 for the transforms; licbench computes everything
that chooses a CDF in float64 on the CPU (coding/latent). The two are
interleaved: each of ``--repeats`` rounds runs CompressAI's call then ours,
and the fastest of each is kept, so that a change in the machine's load falls
on both. The latent decoding is everything before g_s starts (a forward
pre-hook marks it).

    python bench/compressai_speed.py --images 1 --repeats 1 --adapt-steps 20
    python bench/compressai_speed.py --arch cheng2020-attn --images 2
    python bench/compressai_speed.py --arch elic --images 2 --repeats 2 --threads 1
    python bench/compressai_speed.py --arch mbt2018-mean --images 2 --repeats 2 --threads 1

Per-image lines, then one JSON object (the last line): the median seconds of
both codecs, ``latent_decode_speedup`` (CompressAI's seconds over ours, the
goal is 8x), ``decode_speedup``, ``encode_speedup``, ``identical`` (our decoder
rebuilt our encoder's latent exactly), ``symbols_differing`` (latent symbols
the two codecs quantized differently), ``max_psnr_diff_db``, bpp and the load.
``--profile`` adds, on stderr, a cProfile of one licbench encode and decode of
the first image.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_mbt2018 import (  # noqa: E402
    SynthesisMark, comparison, image_row, kodak_images, plausible_codec, random_crops, timed, warm_up,
)
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor  # noqa: E402
from licbench.data.images import load_rgb8  # noqa: E402
from licbench.models import ARCHITECTURES, Checkpoint, build_model, weights_digest  # noqa: E402

WAVEFRONT = sorted(name for name, a in ARCHITECTURES.items() if a.coder == "wavefront")
# Other architectures that are CompressAI's own models (their compress/decompress
# are CompressAI's), coded here by licbench's own coders.
COMPRESSAI_TOO = ["elic", "mbt2018-mean", "bmshj2018-hyperprior", "bmshj2018-factorized"]


def flat_strings(strings) -> list[bytes]:
    """CompressAI's strings, nested as each model nests them, as one list."""
    if isinstance(strings, (bytes, bytearray)):
        return [strings]
    return [s for part in strings for s in flat_strings(part)]


def fit_rate(model, images: list[np.ndarray], steps: int, seed: int) -> float:
    """Fit the entropy model (everything but g_a and g_s) to the rate of g_a's
    latent on 2 random 256 x 256 crops per step (Adam, as decode_mbt2018.py's
    fit), update the CDF tables; return the estimated bpp on the crops. With
    random weights the hyper-synthesis' scales fit no latent (tens of bits per
    pixel); the fit brings the rate to what a codec spends."""
    x = random_crops(images, seed)
    transforms = ("g_a.", "g_s.")
    main = [p for n, p in model.named_parameters() if not n.startswith(transforms) and not n.endswith("quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(transforms))
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=1e-3), torch.optim.Adam(aux, lr=1e-2)

    def bits(batch):
        return -sum(torch.log2(v).sum() for v in model(batch)["likelihoods"].values()) / (batch.size(0) * 256 * 256)

    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        aux_optimizer.zero_grad(set_to_none=True)
        bits(x[step % 4 * 2: step % 4 * 2 + 2]).backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        optimizer.step()
        model.aux_loss().backward()
        aux_optimizer.step()
    model.eval()
    model.update(force=True, update_quantiles=True)
    with torch.no_grad():
        bpp = float(bits(x[:2]))
    for p in model.parameters():
        p.requires_grad_(True)
    return bpp


def interleaved(repeats: int, theirs, ours, mark: SynthesisMark):
    """``repeats`` rounds of theirs() then ours(): for each, the last result, the
    fewest seconds and the fewest seconds until g_s started (and g_s's input)."""
    runs = {"theirs": [], "ours": []}
    latents = {}
    for _ in range(max(1, repeats)):
        for side, fn in (("theirs", theirs), ("ours", ours)):
            runs[side].append(timed(fn, mark))
            latents[side] = mark.latent
    out = {}
    for side, rs in runs.items():
        to_g_s = [r[2] for r in rs if r[2] is not None]
        out[side] = (rs[-1][0], min(r[1] for r in rs), min(to_g_s) if to_g_s else None, latents[side])
    return out["theirs"], out["ours"]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="cheng2020-anchor", choices=WAVEFRONT + COMPRESSAI_TOO)
    parser.add_argument("--images", type=int, default=2, help="the first N Kodak images")
    parser.add_argument("--N", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--latent-std", type=float, default=1.5)
    parser.add_argument("--adapt-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds per image; the fastest is kept")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one licbench encode and decode of the first image (cProfile, to stderr)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = kodak_images(args.images)
    images = [load_rgb8(p).array for p in paths]

    setup = time.perf_counter()
    torch.manual_seed(args.seed)
    declared = ARCHITECTURES[args.arch]
    # N (and M = N) for the wavefront models; the others at their paper size.
    config = ({k: args.N for k in declared.config_keys} if args.arch in WAVEFRONT else dict(declared.paper))
    model = build_model(args.arch, config)
    if args.arch in WAVEFRONT:
        with torch.enable_grad():
            adapted_bpp = plausible_codec(model, images, args.latent_std, args.adapt_steps, args.seed)
    else:
        last = [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        x0 = pad_to_multiple(to_tensor(images[0]), declared.pad_multiple)
        for _ in range(3):  # attention blocks follow it: a few rounds converge
            gain = args.latent_std / model.g_a(x0).std()
            last.weight.mul_(gain)
            last.bias.mul_(gain)
        with torch.enable_grad():
            adapted_bpp = fit_rate(model, images, args.adapt_steps, args.seed)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    ckpt = Checkpoint(args.arch, config, 0.0, model, weights_digest(state), {})
    source = f"random (seed {args.seed}), latent std {args.latent_std}, {args.adapt_steps} rate-only steps"
    print(f"{args.arch}: {source}, {config}, setup {time.perf_counter() - setup:.1f} s", file=sys.stderr)
    mark = SynthesisMark(model)

    warm_up(ckpt, model, images[0])

    rows = []
    for path, image in zip(paths, images):
        x = pad_to_multiple(to_tensor(image), declared.pad_multiple)
        (cai, cai_encode, _, _), ((bs, enc_latent), our_encode, _, _) = interleaved(
            args.repeats, lambda: model.compress(x), lambda: encode(ckpt, image), mark)
        (cai_out, cai_decode, cai_latent_t, cai_latent), ((decoded, dec_latent), our_decode, our_latent_t, _) = \
            interleaved(args.repeats, lambda: model.decompress(cai["strings"], cai["shape"]),
                        lambda: decode(ckpt, bs), mark)
        rows.append(image_row(path, image, bs, enc_latent, decoded, dec_latent, cai_out, cai_latent,
                              {"encode": cai_encode, "decode": cai_decode, "latent_decode": cai_latent_t},
                              {"encode": our_encode, "decode": our_decode, "latent_decode": our_latent_t},
                              flat_strings(cai["strings"])))

    result = {"arch": args.arch, "images": len(rows), "config": config,
              **comparison(rows, source, args.repeats, adapted_bpp)}
    if args.profile:
        profile(ckpt, images[0], paths[0].name)
    print(json.dumps(result))


def profile(ckpt, image: np.ndarray, name: str) -> None:
    """cProfile of one encode and one decode of ``image``, the 15 functions of
    most own time each, to stderr."""
    bs, _ = encode(ckpt, image)
    for verb, fn in (("encode", lambda: encode(ckpt, image)), ("decode", lambda: decode(ckpt, bs))):
        profiler = cProfile.Profile()
        profiler.runcall(fn)
        print(f"--- licbench {verb}, {name}", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
