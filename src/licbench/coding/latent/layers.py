"""The context and parameter networks of the latent coders as matrix products
at chosen positions, on the float64 CPU copy (``Exact``).

A spatial context model is a masked convolution (CompressAI's ``MaskedConv2d``
family: mbt2018's causal 5x5, the checkerboard's): at one position it reads
only the taps its mask keeps. An entropy parameters network is a stack of 1x1
convolutions and activations: pointwise. So the coders that need the
parameters at some positions only (a wavefront, one checkerboard pass) compute
them there, as a gather of the kept taps and a few matrix products, instead of
a convolution over the whole map. The encoder and the decoder call the same
functions on the same positions, so both compute bit for bit the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import CheckpointError


class MaskedContext:
    """A masked convolution at chosen positions of a padded, channels-last latent.

    ``tap_rows``, ``tap_cols``: the kernel positions the mask keeps (the same
    for every channel pair, or the checkpoint is refused); ``pad``: the
    convolution's padding, by which the latent the caller holds is padded.
    """

    def __init__(self, conv: torch.nn.Conv2d, what: str):
        mask = conv.mask
        kh, kw = conv.kernel_size
        if ((mask != mask[:1, :1]).any() or conv.stride != (1, 1) or conv.dilation != (1, 1)
                or conv.padding != (kh // 2, kw // 2)):
            raise CheckpointError(f"{what} is not a masked 'same' convolution with one mask for every "
                                  "channel; the checkpoint is damaged")
        taps = mask[0, 0].nonzero()  # (T, 2): the kernel rows and columns the mask keeps
        self.tap_rows, self.tap_cols = taps[:, 0], taps[:, 1]
        self.offsets = (self.tap_rows - kh // 2, self.tap_cols - kw // 2)
        self.pad = kh // 2
        weight = (conv.weight * mask)[:, :, self.tap_rows, self.tap_cols]  # O x I x T
        self.weight = weight.permute(0, 2, 1).reshape(weight.size(0), -1).contiguous()
        self.bias = conv.bias
        self.in_channels = conv.in_channels

    def __call__(self, padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """n x O: the convolution's output at (rows, cols) of the latent that
        ``padded`` (H + 2 pad x W + 2 pad x I) holds at (rows + pad, cols + pad)."""
        patches = padded[rows[:, None] + self.tap_rows, cols[:, None] + self.tap_cols]
        return F.linear(patches.reshape(len(rows), -1), self.weight, self.bias)


class Pointwise:
    """A stack of 1x1 convolutions and activations as matrix products on
    n x C rows (one row per position)."""

    def __init__(self, layers: torch.nn.Module, what: str):
        self.layers = []
        for m in layers:
            if isinstance(m, torch.nn.Conv2d):
                if m.kernel_size != (1, 1) or m.stride != (1, 1) or m.groups != 1:
                    raise CheckpointError(f"{what} has a {m.kernel_size[0]}x{m.kernel_size[1]} convolution "
                                          "where a pointwise one is expected; the checkpoint is damaged")
                self.layers.append((m.weight[:, :, 0, 0].contiguous(), m.bias))
            else:
                self.layers.append(m)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = F.linear(h, *layer) if isinstance(layer, tuple) else layer(h)
        return h


def scale_indexes(gc, scales: torch.Tensor) -> torch.Tensor:
    """``gc.build_indexes(scales)`` in one call instead of one comparison per
    table entry: the number of table scales (the last excepted) below each
    bounded scale. Always a valid index, NaN and infinities included (what a
    damaged stream can drive the parameters to)."""
    return torch.bucketize(gc.lower_bound_scale(scales).contiguous(), gc.scale_table[:-1]).int()
