"""Latent coders: the pieces an architecture's coding style composes.

``factorized`` (a latent with fixed CDFs: CompressAI's entropy bottleneck),
``gaussian`` (a scale or mean-scale Gaussian conditional, parameters given),
``wavefront`` (mbt2018's masked context, one anti-diagonal at a time, also
Cheng2020's), ``slices`` (the channel-conditional slices of ChARM, WACNN and
SegPIC), ``checkerboard`` (a two-pass checkerboard spatial context) and
``groups`` (ELIC's uneven channel groups, each a checkerboard latent). Each
offers ``compress`` (strings and the latent the decoder will rebuild) and
``decompress`` (a guarded stream, coding/rans.py, checked to its end). The
training pass of the same entropy models stays with the models: what decodes
a stream does not change what a model learns.

Device independence. The decoder must derive the same CDF index for every
symbol as the encoder did, or the rANS decoder derails. Those indexes come
from networks (a hyper-synthesis compared against the scale table, a context
model, slice transforms); computed in float32, on another device, with
another thread count or batch layout, a scale near a table boundary can land
on the other side. So everything that chooses a symbol's CDF runs through
:class:`Exact`: in float64, on the CPU, on a float64 copy of the model, the
encoder and the decoder through the same calls, from inputs that are exact on
every device (integer symbols plus float32 medians); a flip would need a
scale within about 1e-15 of a boundary. The analysis transform may run
anywhere (only the encoder uses it), and so may the synthesis (it only shapes
the reconstruction, not the symbols). Fixed CDFs (``factorized``) do not
depend on data.
"""

from __future__ import annotations

import torch

from .layers import Convolutions, prepared

FLOAT64 = torch.float64


def transforms_input(t: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``t`` as the model's float32 transforms (g_a, g_s) take it: float32 on
    the model's device and, on the CPU, channels last. oneDNN's convolutions
    take 16-41 % less time in that layout (g_a and g_s of elic, mbt2018-mean
    and cheng2020-anchor on a 768 x 512 image, one or two threads), and
    without this the layout would be an accident of where a tensor came from:
    a Kodak image arrives channels last, a padded one not, and each latent
    coder returns its own. The layout changes no value a decoder reads (the
    symbols' CDFs come from ``Exact``); the reconstruction differs by float32
    rounding only. On CUDA the layout is left as it is (not measured)."""
    device = next(model.parameters()).device
    t = t.to(device, torch.float32)
    return t.contiguous(memory_format=torch.channels_last) if device.type == "cpu" and t.dim() == 4 else t


class Exact:
    """The one place the float64-on-CPU rule is applied: ``exact(t)`` is ``t``
    as the entropy parameters take it, ``exact.model`` the checkpoint's float64
    CPU copy that computes them, ``exact.call(name, ...)`` one of its methods on
    exact inputs (tensors converted, other arguments as they are)."""

    def __init__(self, ckpt):
        self.model = ckpt.float64_cpu()

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.to("cpu", FLOAT64)

    def call(self, name: str, *args):
        return getattr(self.model, name)(*(self(a) if isinstance(a, torch.Tensor) else a for a in args))

    def module(self, name: str) -> torch.nn.Module:
        """A submodule of the float64 copy (dotted name), for coders that hold one."""
        return self.model.get_submodule(name)

    def stack(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The float64 copy's stack of layers ``name`` (a hyper-synthesis) on
        ``x`` made exact, its convolutions through numpy's BLAS
        (latent/layers.py: ``Convolutions``, prepared once per checkpoint)."""
        return prepared(Convolutions, self.module(name))(self(x))
