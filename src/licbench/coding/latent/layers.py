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

The channel contexts (ELIC's), dense 5x5 convolutions over the whole latent,
are the largest float64 computation. They run as products through numpy's
BLAS (OpenBLAS), with as many threads as torch has (``Convolutions``): PyTorch
has no oneDNN path for float64, so its float64 convolutions run through
MKL's dgemm, which on an AMD EPYC (the development machine) takes 1.7 times
OpenBLAS's time for the same product (1536 x 5600 by 5600 x 128, one thread:
0.10 s against 0.059 s; float32 is as fast in both). The skinny products of a
wavefront or a pass stay with torch (``F.linear``), which was the faster
there (cheng2020-anchor's latent, kodim01: 0.79 s against 0.97 s).
"""

from __future__ import annotations

import weakref
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from ...errors import CheckpointError

_blas_threads: int | None = None
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
T = TypeVar("T")


def prepared(factory: Callable[..., T], module: torch.nn.Module, *args) -> T:
    """``factory(module, *args)``, made once per module of the float64 CPU copy
    (``Exact.model``, made once per checkpoint and never changed afterwards):
    the weights rearranged into products and the CDF tables as lists cost
    about 30 ms per ELIC image when they were made on every call."""
    made = _prepared.setdefault(module, {})
    if factory not in made:
        made[factory] = factory(module, *args)
    return made[factory]


def _numpy_blas() -> None:
    """Give numpy's BLAS torch's thread count (once per change of it)."""
    global _blas_threads
    threads = torch.get_num_threads()
    if threads != _blas_threads:
        threadpool_limits(threads, user_api="blas")
        _blas_threads = threads


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
        self.layers, self._cut = [], {}
        for m in layers:
            if isinstance(m, torch.nn.Conv2d):
                if m.kernel_size != (1, 1) or m.stride != (1, 1) or m.groups != 1:
                    raise CheckpointError(f"{what} has a {m.kernel_size[0]}x{m.kernel_size[1]} convolution "
                                          "where a pointwise one is expected; the checkpoint is damaged")
                self.layers.append((m.weight[:, :, 0, 0].contiguous(), m.bias))
            else:
                self.layers.append(m)

    def __call__(self, h: torch.Tensor, zeros: int = 0) -> torch.Tensor:
        """The stack on ``h``, whose rows come after ``zeros`` columns of zeros
        that are not multiplied (a checkerboard's anchors have a zero context)."""
        for layer in self.layers:
            if isinstance(layer, tuple):
                weight, bias = layer
                if zeros:
                    weight, zeros = self._without(zeros), 0
                h = F.linear(h, weight, bias)
            else:
                h = layer(h)
        return h

    def _without(self, zeros: int) -> torch.Tensor:
        """The first product's weights without their first ``zeros`` columns."""
        if zeros not in self._cut:
            first = next(layer for layer in self.layers if isinstance(layer, tuple))[0]
            self._cut[zeros] = first[:, zeros:].contiguous()
        return self._cut[zeros]


class Convolutions:
    """A stack of dense 'same' convolutions (stride 1, odd kernels) and
    activations over a whole latent (ELIC's channel contexts), each convolution
    as kh x kw products of a shifted window of the flattened, padded,
    channels-last map by that tap's weights, summed in tap order.

    Flattened, the padded map (Hp x Wp rows of C channels) holds the input
    window of tap (a, b) for every output position at once: rows a Wp + b to
    a Wp + b + H Wp, the output's H rows of Wp columns, of which the last
    Wp - W are thrown away. So no patch matrix is built.
    """

    def __init__(self, layers: torch.nn.Module, what: str):
        self.layers = []
        for m in layers:
            if isinstance(m, torch.nn.Conv2d):
                kh, kw = m.kernel_size
                if (m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1 or kh % 2 == 0 or kw % 2 == 0
                        or m.padding != (kh // 2, kw // 2)):
                    raise CheckpointError(f"{what} is not a stack of 'same' convolutions; the checkpoint is damaged")
                taps = m.weight.detach().permute(2, 3, 1, 0).contiguous()  # kh x kw x I x O
                self.layers.append((taps.numpy(), None if m.bias is None else m.bias.detach().numpy()))
            else:
                self.layers.append(m)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """1 x C x H x W float64 in, 1 x O x H x W out."""
        _numpy_blas()
        height, width = x.shape[-2:]
        h = x[0].detach().permute(1, 2, 0).contiguous().numpy()  # H x W x C
        for layer in self.layers:
            if not isinstance(layer, tuple):
                h = layer(torch.from_numpy(h)).numpy()
                continue
            taps, bias = layer
            kh, kw = taps.shape[:2]
            pw = kw // 2
            wp = width + 2 * pw
            # One more row below the padding: the last tap's window runs pw - 1 columns past it.
            padded = np.zeros((height + 2 * (kh // 2) + 1, wp, h.shape[-1]))
            padded[kh // 2:kh // 2 + height, pw:pw + width] = h
            flat = padded.reshape(-1, h.shape[-1])
            out = np.zeros((height * wp, taps.shape[-1])) if bias is None else np.tile(bias, (height * wp, 1))
            for a in range(kh):
                for b in range(kw):
                    start = a * wp + b
                    out += flat[start:start + height * wp] @ taps[a, b]
            h = np.ascontiguousarray(out.reshape(height, wp, -1)[:, :width])
        return torch.from_numpy(h).permute(2, 0, 1)[None]


def scale_indexes(gc, scales: torch.Tensor) -> torch.Tensor:
    """``gc.build_indexes(scales)`` in one call instead of one comparison per
    table entry: the number of table scales (the last excepted) below each
    bounded scale. Always a valid index, NaN and infinities included (what a
    damaged stream can drive the parameters to)."""
    return torch.bucketize(gc.lower_bound_scale(scales).contiguous(), gc.scale_table[:-1]).int()
