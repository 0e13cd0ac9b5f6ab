"""After a short training, the bytes the entropy coder writes are what the
entropy model's likelihoods predict: the coders lose little to the CDF tables'
quantization, the escape codes and the rANS flush."""

import pytest
import torch

from licbench.coding.codec import encode, pad_to_multiple, to_tensor
from licbench.coding.container import encode_container
from licbench.data.images import load_rgb8
from licbench.evaluate import estimated_bpp
from licbench.metrics import bpp_from_bytes, bpp_from_likelihoods

# Streams: the coded latents alone (the tight figure); file: the whole
# container, header included (the honest figure). Against -log2 likelihoods.
TOLERANCE = {"streams": 0.06, "file": 0.07}


@torch.no_grad()
def coded_latent_bpp(ckpt, image, y_hat) -> float:
    """mbt2018's -log2 likelihood of the latent its coder wrote, under the
    coder's own means and scales: the context of the coded ``y_hat``.
    (The eval forward pass, ``estimated_bpp``, takes its context from
    round(y) instead of round(y - mean) + mean: another latent.)"""
    m = ckpt.model
    y = m.g_a(pad_to_multiple(to_tensor(image), 64))
    z_hat, z_likelihoods = m.entropy_bottleneck(m.h_a(y))  # eval mode: z rounded about its medians
    params = torch.cat((m.h_s(z_hat), m.context_prediction(y_hat)), dim=1)
    scales, means = m.entropy_parameters(params).chunk(2, 1)
    gc = m.gaussian_conditional
    y_likelihoods = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means))
    return bpp_from_likelihoods({"y": y_likelihoods, "z": z_likelihoods}, image.shape[0] * image.shape[1])


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018"])
def test_bytes_match_the_likelihood_estimate(arch, briefly_trained, mirror):
    ckpt = briefly_trained(arch)
    totals = {"estimate": 0.0, "forward": 0.0, "streams": 0.0, "file": 0.0}
    for name in ("kodim04.png", "kodim23.png"):
        image = load_rgb8(mirror / "kodak" / name).array
        h, w = image.shape[:2]
        bs, y_hat = encode(ckpt, image)
        totals["forward"] += estimated_bpp(ckpt, image)
        totals["estimate"] += coded_latent_bpp(ckpt, image, y_hat) if arch == "mbt2018" \
            else estimated_bpp(ckpt, image)
        totals["streams"] += bpp_from_bytes(sum(len(s) for s in bs.streams), h, w)
        totals["file"] += bpp_from_bytes(len(encode_container(bs)), h, w)
    excess = {k: totals[k] / totals["estimate"] - 1 for k in ("streams", "file", "forward")}
    print(f"\n{arch}: estimate {totals['estimate'] / 2:.4f} bpp, streams {totals['streams'] / 2:.4f} "
          f"({excess['streams']:+.2%}), file {totals['file'] / 2:.4f} ({excess['file']:+.2%}); "
          f"eval forward pass {totals['forward'] / 2:.4f} ({excess['forward']:+.2%})")
    assert totals["estimate"] / 2 > 0.05  # a real rate, not an empty latent
    for key, tolerance in TOLERANCE.items():
        assert abs(excess[key]) < tolerance, key
