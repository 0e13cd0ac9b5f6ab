"""How often do the scale-table indexes that drive the rANS coder change with
the thread count or the batch layout? float32 h_s (CompressAI's own path) versus
the float64-on-CPU h_s that licbench codes with.

    python bench/entropy_params_stability.py --model models/mbt2018-mean-0.013/checkpoint.pt \
        --images data/kodak/*.png

A changed index between encoder and decoder derails decoding of the rest of
the stream. The last line printed is a JSON object: symbols compared, and for
each precision the number of indexes that differ from the single-thread,
one-image computation (``index_flips``) and the images with at least one; then,
end to end, for images encoded with one thread and decoded with all threads,
how many decode to the same latent as with one thread and the largest pixel
difference, with CompressAI's float32 compress/decompress and with licbench's
codec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from licbench.coding.codec import (  # noqa: E402
    compress_image, decompress_image, pad_to_multiple, to_tensor, to_uint8,
)
from licbench.data.images import load_rgb8  # noqa: E402
from licbench.models import get_architecture, load_checkpoint  # noqa: E402


def scales(model, arch, z_hat, dtype, threads):
    torch.set_num_threads(threads)
    h_s = model.h_s.to(dtype)
    params = h_s(z_hat.to(dtype))
    model.h_s.to(torch.float32)
    return params.chunk(2, 1)[0] if get_architecture(arch).coder_options["means"] else params


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.model)
    m, spec = ckpt.model, get_architecture(ckpt.arch)
    if spec.coder != "hyperprior":
        sys.exit(f"{args.model}: {ckpt.arch} has no h_s-driven scales to compare")
    gc = m.gaussian_conditional
    z_hats = []
    for path in args.images:
        x = pad_to_multiple(to_tensor(load_rgb8(path).array), spec.pad_multiple)
        y = m.g_a(x)
        z = m.h_a(torch.abs(y) if spec.coder_options["abs_y"] else y)
        z_hats.append(m.entropy_bottleneck.decompress(m.entropy_bottleneck.compress(z), z.shape[-2:]))
    result = {"model": args.model, "arch": ckpt.arch, "images": len(z_hats),
              "threads_available": torch.get_num_threads()}
    symbols = 0
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        flips = {"threads": 0, "batch": 0}
        images_with_flips = set()
        for i, z_hat in enumerate(z_hats):
            ref = gc.build_indexes(scales(m, ckpt.arch, z_hat, dtype, 1))
            symbols += ref.numel() if name == "float32" else 0
            variants = {"threads": scales(m, ckpt.arch, z_hat, dtype, result["threads_available"])}
            same_shape = [z for z in z_hats if z.shape == z_hat.shape and z is not z_hat]
            batch = torch.cat([z_hat] + same_shape[:3])
            variants["batch"] = scales(m, ckpt.arch, batch, dtype, 1)[:1]
            for key, s in variants.items():
                n = int((gc.build_indexes(s) != ref).sum())
                flips[key] += n
                if n:
                    images_with_flips.add(i)
        result[name] = {"index_flips": flips, "images_with_flips": len(images_with_flips)}
    result["symbols"] = symbols

    # End to end: encode with one thread, decode with two. Does the decoder
    # rebuild the same latent (the input of g_s) as with one thread, and how far
    # apart are the two images? CompressAI's float32 compress/decompress against
    # licbench's codec. g_s itself runs in float32, so the images may differ by
    # float noise even when the latents are identical.
    latents: list[torch.Tensor] = []
    hook = m.g_s.register_forward_hook(lambda mod, inp, out: latents.append(inp[0].clone()))
    stats = {name: {"same_latent": 0, "max_pixel_diff": 0}
             for name in ("compressai_float32", "licbench")}
    for path in args.images:
        image = load_rgb8(path).array
        x = pad_to_multiple(to_tensor(image), spec.pad_multiple)
        torch.set_num_threads(1)
        out = m.compress(x)
        bs = compress_image(ckpt, image)
        decoded = {}
        for threads in (1, result["threads_available"]):
            torch.set_num_threads(threads)
            latents.clear()
            a = to_uint8(m.decompress(out["strings"], out["shape"])["x_hat"])
            b = decompress_image(ckpt, bs)
            decoded[threads] = {"compressai_float32": (latents[0], a), "licbench": (latents[1], b)}
        for name in stats:
            (la, ia), (lb, ib) = (decoded[t][name] for t in decoded)
            stats[name]["same_latent"] += int(torch.equal(la, lb))
            diff = int(abs(ia.astype(int) - ib.astype(int)).max())
            stats[name]["max_pixel_diff"] = max(stats[name]["max_pixel_diff"], diff)
    hook.remove()
    result["one_thread_encode_two_thread_decode"] = stats
    print(json.dumps(result))


if __name__ == "__main__":
    main()
