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

The layers that run over a whole map (ELIC's channel contexts, dense 5x5
convolutions over the latent, the largest float64 computation; the
hyper-syntheses) run as ``Convolutions``. Every product here goes through
numpy's BLAS (OpenBLAS) with as many threads as torch has: PyTorch has no
oneDNN path for float64, and its own float64 (MKL's dgemm, ATen's
convolutions) took 1.35-2.6 times as long as OpenBLAS's AVX-512 kernels for
these layers on the development machine (AMD EPYC Zen 5, one thread). Where
OPENBLAS_CORETYPE forces OpenBLAS's AVX2 kernels (that machine's environment
sets it), this route takes 0.57-1.18 times torch's time, the skinny products
of a wavefront the slowest (``python bench/float64_products.py``,
docs/measurements/compressai-speed.md).
"""

from __future__ import annotations

import weakref
from typing import Callable, TypeVar

import numpy as np
import torch
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
        # One pad for rows and columns: a square kernel.
        if (mask != mask[:1, :1]).any() or not _same(conv) or kh != kw:
            raise CheckpointError(f"{what} is not a masked 'same' convolution with one mask for every "
                                  "channel; the checkpoint is damaged")
        taps = mask[0, 0].nonzero()  # (T, 2): the kernel rows and columns the mask keeps
        self.tap_rows, self.tap_cols = taps[:, 0], taps[:, 1]
        self.offsets = (self.tap_rows - kh // 2, self.tap_cols - kw // 2)
        self.pad = kh // 2
        weight = (conv.weight.detach() * mask)[:, :, self.tap_rows, self.tap_cols]  # O x I x T
        self.weight = _numpy(weight.permute(2, 1, 0).reshape(-1, weight.size(0)))  # T I x O
        self.bias = _numpy(conv.bias)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def __call__(self, padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """n x O: the convolution's output at (rows, cols) of the latent that
        ``padded`` (H + 2 pad x W + 2 pad x I) holds at (rows + pad, cols + pad)."""
        patches = padded[rows[:, None] + self.tap_rows, cols[:, None] + self.tap_cols]
        return torch.from_numpy(_linear(patches.reshape(len(rows), -1).numpy(), self.weight, self.bias))


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
                self.layers.append((_numpy(m.weight[:, :, 0, 0].T), _numpy(m.bias)))  # I x O
            else:
                self.layers.append(m)

    def __call__(self, h: torch.Tensor, zeros: int = 0) -> torch.Tensor:
        """The stack on ``h``, whose rows come after ``zeros`` columns of zeros
        that are not multiplied (a checkerboard's anchors have a zero context):
        the first product leaves out its weights' first ``zeros`` rows."""
        h = h.detach().numpy()
        if not isinstance(self.layers[0], tuple):
            h = h.copy()  # the layers act in place
        for layer in self.layers:
            if isinstance(layer, tuple):
                weight, bias = layer
                h, zeros = _linear(h, weight[zeros:], bias), 0
            else:
                h = layer(torch.from_numpy(h)).numpy()  # a product's own output: in place is safe
        return torch.from_numpy(h)


class Convolutions:
    """A stack of layers over a whole map in float64 (ELIC's channel
    contexts, the hyper-syntheses), its convolutions as products through
    numpy's BLAS:

    - a 'same' ``Conv2d`` (stride 1, odd kernels) as kh x kw products of a
      shifted window of the flattened, padded, channels-last map by that tap's
      weights, summed in tap order. Flattened, the padded map (Hp x Wp rows of
      C channels) holds the input window of tap (a, b) for every output
      position at once: rows a Wp + b to a Wp + b + H Wp, the output's H rows
      of Wp columns, of which the last Wp - W are thrown away. So no patch
      matrix is built.
    - a ``ConvTranspose2d`` as one product of the map by each kernel row's
      taps, each tap's product added where it lands (rows a, a + s, ...,
      columns b, b + s, ... of the uncropped output), in tap order; then the
      padding cropped and the bias added.
    - elementwise activations on the channels-last map; any other layer
      (``PixelShuffle``, a convolution of another kind) through torch, on
      1 x C x H x W. Nested stacks are opened.
    """

    ELEMENTWISE = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.Identity)

    def __init__(self, layers: torch.nn.Module):
        self.layers = []
        for m in _flattened(layers):
            if isinstance(m, torch.nn.Conv2d) and _same(m):
                self.layers.append((_conv, _numpy(m.weight.permute(2, 3, 1, 0)), _numpy(m.bias)))  # kh x kw x I x O
            elif isinstance(m, torch.nn.ConvTranspose2d) and _plain(m):
                # I x O x kh x kw -> kh x I x (kw O): one product per kernel row
                kh, kw = m.kernel_size
                taps = _numpy(m.weight.permute(2, 0, 3, 1)).reshape(kh, m.in_channels, kw * m.out_channels)
                self.layers.append((_transposed, taps, _numpy(m.bias), m))
            elif isinstance(m, self.ELEMENTWISE):
                self.layers.append((_elementwise, m))
            else:
                self.layers.append((_through_torch, m))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W float64 in, N x O x H' x W' out: each map on its own
        (so a map gives the same bits alone or in a batch)."""
        _numpy_blas()
        out = []
        for image in x.detach():
            h = np.array(image.permute(1, 2, 0).numpy(), order="C")  # H x W x C, a copy: layers act in place
            for run, *layer in self.layers:
                h = run(h, *layer)
            out.append(torch.from_numpy(h).permute(2, 0, 1))
        return torch.stack(out)


def _flattened(layers: torch.nn.Module):
    for m in layers if isinstance(layers, torch.nn.Sequential) else [layers]:
        if isinstance(m, torch.nn.Sequential):
            yield from _flattened(m)
        else:
            yield m


def _same(m: torch.nn.Conv2d) -> bool:
    kh, kw = m.kernel_size
    return (m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and kh % 2 == 1 and kw % 2 == 1
            and m.padding == (kh // 2, kw // 2) and m.padding_mode == "zeros")


def _plain(m: torch.nn.ConvTranspose2d) -> bool:
    return m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"


def _conv(h: np.ndarray, taps: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    height, width, channels = h.shape
    kh, kw = taps.shape[:2]
    pw = kw // 2
    wp = width + 2 * pw
    # One more row below the padding: the last tap's window runs pw - 1 columns past it.
    padded = np.zeros((height + 2 * (kh // 2) + 1, wp, channels))
    padded[kh // 2:kh // 2 + height, pw:pw + width] = h
    flat = padded.reshape(-1, channels)
    out = np.zeros((height * wp, taps.shape[-1])) if bias is None else np.tile(bias, (height * wp, 1))
    for a in range(kh):
        for b in range(kw):
            start = a * wp + b
            out += flat[start:start + height * wp] @ taps[a, b]
    return np.ascontiguousarray(out.reshape(height, wp, -1)[:, :width])


def _transposed(h: np.ndarray, taps: np.ndarray, bias: np.ndarray | None, m: torch.nn.ConvTranspose2d) -> np.ndarray:
    height, width, channels = h.shape
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = m.kernel_size, m.stride, m.padding, m.output_padding
    rows, cols = (height - 1) * sh - 2 * ph + kh + oh, (width - 1) * sw - 2 * pw + kw + ow
    # The uncropped output, with room for an output padding larger than the padding.
    full = np.zeros(((height - 1) * sh + kh + max(0, oh - ph), (width - 1) * sw + kw + max(0, ow - pw),
                     m.out_channels))
    flat = h.reshape(-1, channels)
    for a in range(kh):
        products = (flat @ taps[a]).reshape(height, width, kw, m.out_channels)
        for b in range(kw):
            full[a:a + (height - 1) * sh + 1:sh, b:b + (width - 1) * sw + 1:sw] += products[:, :, b]
    out = full[ph:ph + rows, pw:pw + cols]
    if bias is not None:
        out += bias
    return np.ascontiguousarray(out)


def _elementwise(h: np.ndarray, m: torch.nn.Module) -> np.ndarray:
    return m(torch.from_numpy(h)).numpy()


def _through_torch(h: np.ndarray, m: torch.nn.Module) -> np.ndarray:
    return np.ascontiguousarray(m(torch.from_numpy(h).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy())


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``x @ weight + bias`` (weight I x O) through numpy's BLAS."""
    _numpy_blas()
    out = x @ weight
    if bias is not None:
        out += bias
    return out


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().contiguous().numpy()


def scale_indexes(gc, scales: torch.Tensor) -> torch.Tensor:
    """``gc.build_indexes(scales)`` in one call instead of one comparison per
    table entry: the number of table scales (the last excepted) below each
    bounded scale. Always a valid index, NaN and infinities included (what a
    damaged stream can drive the parameters to)."""
    return torch.bucketize(gc.lower_bound_scale(scales).contiguous(), gc.scale_table[:-1]).int()
