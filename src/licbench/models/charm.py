"""ChARM: channel-wise autoregressive entropy model (Minnen & Singh, ICIP 2020).

"Channel-wise Autoregressive Entropy Models for Learned Image Compression":
the GDN transforms of Ballé et al. 2018, separate hyper-synthesis transforms
for the means and the scales, and ``y`` coded in 10 slices, each conditioned on
at most 5 previous ones, with latent residual prediction (§2, Fig. 2; the
entropy model is channelwise.py). Written after tensorflow-compression's
``models/ms2020.py``: same layers and widths at N=192, M=320 (its
``num_filters``, ``latent_depth``; ``hyperprior_depth`` is N here); the
256-wide hyper layers sit halfway between N and M, and the slice transforms'
224 and 128 scale with M. PyTorch convolutions with padding k // 2 stand for
its "same_zeros" signal convolutions.
"""

from __future__ import annotations

from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import nn

from .channelwise import ChannelConditional, ChannelwiseHyperprior
from .registry import Architecture, register


def slice_transform(in_channels: int, out_channels: int, M: int) -> nn.Sequential:
    """ms2020's ``SliceTransform``: 5x5, 5x5 (ReLU) and 3x3 convolutions, 224
    and 128 wide at M=320."""
    a, b = 224 * M // 320, 128 * M // 320
    return nn.Sequential(
        conv(in_channels, a, kernel_size=5, stride=1), nn.ReLU(inplace=True),
        conv(a, b, kernel_size=5, stride=1), nn.ReLU(inplace=True),
        conv(b, out_channels, kernel_size=3, stride=1),
    )


class ChARM(ChannelwiseHyperprior):
    """Minnen & Singh 2020 (paper: N=192, M=320, 10 slices, 5 supporting).

    Inputs to :meth:`compress` must be a multiple of 64 on each side (the
    codec pads them); :meth:`forward` takes any size.
    """

    def __init__(self, N: int = 192, M: int = 320, num_slices: int = 10, max_support_slices: int = 5):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N),
            conv(N, N), GDN(N),
            conv(N, N), GDN(N),
            conv(N, M),
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True),
            deconv(N, 3),
        )
        mid = (N + M) // 2  # ms2020's 256 between 192 and 320
        self.h_a = nn.Sequential(
            conv(M, M, kernel_size=3, stride=1), nn.ReLU(inplace=True),
            conv(M, mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, N, kernel_size=5, stride=2, padding=2, bias=False),
        )
        # The last ReLU is ms2020's: these are features for the slice
        # transforms, not means or scales themselves.
        self.h_mean_s = self._hyper_synthesis(N, mid, M)
        self.h_scale_s = self._hyper_synthesis(N, mid, M)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.channel_conditional = ChannelConditional(
            M, num_slices, max_support_slices, lambda i, o: slice_transform(i, o, M))

    @staticmethod
    def _hyper_synthesis(N: int, mid: int, M: int) -> nn.Sequential:
        return nn.Sequential(
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, mid), nn.ReLU(inplace=True),
            conv(mid, M, kernel_size=3, stride=1), nn.ReLU(inplace=True),
        )


ARCHITECTURE = register(Architecture(
    "charm", ChARM, ("N", "M"), pad_multiple=64, streams=("y", "z"), coder="channelwise",
    reference="Minnen, Singh, ICIP 2020 (channel-wise autoregressive entropy model, ChARM)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 40},  # M: 10 slices
))
