"""What a model costs: parameters and multiply-accumulates per pixel.

Operations are counted by PyTorch's own counter (``torch.utils.flop_counter``),
which counts the FLOPs of matrix products, convolutions (transposed too) and
attention, 2 per multiply-accumulate; element-wise work (GDN's square and
root, activations, rounding) and the rANS coder are not counted, as in the
kMAC/pixel figures of the literature. The count is taken while the codec
really encodes and decodes an image (coding/codec.py), so it holds whatever
each side runs: the hyper-synthesis on both, the context model one wavefront
at a time, the float64 copies that pick the CDFs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Top-level modules by CompressAI's names: g_a* analyse (encoder side only),
# g_s* synthesise (decoder side only; SegPIC splits both in stages, and its
# region-adaptive transforms of the image features go with them); every other
# module belongs to the entropy model, which both sides run.
ENCODER_MODULES = ("g_a", "rat_encoder")
DECODER_MODULES = ("g_s", "rat_decoder")


def _part(top: str) -> str:
    if top.startswith(ENCODER_MODULES):
        return "encoder"
    if top.startswith(DECODER_MODULES):
        return "decoder"
    return "entropy_model"


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the analysis transform (encoder), the synthesis transform
    (decoder) and the entropy model (the rest: hyper transforms, context and
    entropy-parameter networks, factorized densities), and their total."""
    counts = {"encoder": 0, "decoder": 0, "entropy_model": 0}
    for name, p in model.named_parameters():
        counts[_part(name.split(".", 1)[0])] += p.numel()
    return {**{f"params_{k}": v for k, v in counts.items()}, "params_total": sum(counts.values())}


def count_macs(run: Callable[[], object]) -> tuple[int, object]:
    """Multiply-accumulates of everything ``run()`` computes, and what it returned."""
    with FlopCounterMode(display=False) as counter:
        result = run()
    return counter.get_total_flops() // 2, result
