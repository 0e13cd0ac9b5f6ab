"""WACNN: window-based attention in a CNN codec (Zou, Song, Zhang, CVPR 2022).

"The Devil Is in the Details: Window-based Attention for Image Compression",
§3: the analysis/synthesis transforms of a GDN CNN with a window attention
block after the second and the fourth layer (windows of 8 at 1/4 of the image
size, of 4 at 1/16), GELU hyper transforms, and the channel-wise entropy
model of Minnen & Singh 2020 (10 slices, 5 supporting, LRP; see
channelwise.py). Written after the authors' code (github.com/Googolxx/STF,
``compressai/models/cnn.py``, class ``WACNN``, and ``compressai/layers``):
same layers, widths, names and parameters at N=192, M=320; the hyper and
slice transforms' widths, fixed there for M=320, scale with N and M here.

As in that code, the attention of the blocks uses shifted windows (shift of
half a window, Swin's masked cyclic shift; Liu et al., ICCV 2021, §3.2)
despite the reference's class name ``Win_noShift_Attention``. Unlike it,
inputs whose size is not a multiple of the window are zero-padded inside the
attention and cropped back (Swin's own handling), so any image size runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN, conv1x1, conv3x3, subpel_conv3x3
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from ..errors import ConfigError
from .channelwise import ChannelConditional, ChannelwiseHyperprior
from .registry import Architecture, register


def window_partition(x: Tensor, window: int) -> Tensor:
    """B x H x W x C -> (B * windows) x window² x C, windows in raster order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, B: int, H: int, W: int) -> Tensor:
    """The inverse of :func:`window_partition`."""
    x = windows.view(B, H // window, W // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, -1)


def shifted_window_mask(H: int, W: int, window: int, shift: int, dtype, device) -> Tensor:
    """windows x window² x window²: -100 between positions that the cyclic shift
    brought together from different image regions, 0 elsewhere (Swin §3.2)."""
    regions = torch.zeros(1, H, W, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for n, (h, w) in enumerate((h, w) for h in bands for w in bands):
        regions[:, h, w, :] = n
    regions = window_partition(regions, window).squeeze(-1)
    different = regions.unsqueeze(1) != regions.unsqueeze(2)
    return (different.to(dtype) * -100.0).to(device)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative
    position bias (W-MSA, Swin §3.2)."""

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"{dim} channels do not split into {num_heads} attention heads "
                              "(WACNN: N and M must be multiples of 8)")
        self.window, self.num_heads = window, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, B: int, mask: Tensor | None = None) -> Tensor:
        """x: (B * windows) x window² x C; mask: windows x window² x window²."""
        n, L, C = x.shape
        q, k, v = self.qkv(x).view(B, n // B, L, 3, self.num_heads, C // self.num_heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(L, L, self.num_heads).permute(2, 0, 1)  # heads x L x L
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # windows x heads x L x L
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(n, L, C))


class WindowAttentionLayer(nn.Module):
    """Residual window attention on an image-shaped tensor, windows shifted by
    ``shift`` (0: none); pads to a multiple of the window and crops back."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must be in [0, window {window})")
        self.window, self.shift = window, shift
        self.attn = WindowAttention(dim, window, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        ws, shift = self.window, self.shift
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, (-W) % ws, 0, (-H) % ws))
        Hp, Wp = t.shape[1:3]
        mask = None
        if shift:
            t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(Hp, Wp, ws, shift, x.dtype, x.device)
        t = window_reverse(self.attn(window_partition(t, ws), B, mask), ws, B, Hp, Wp)
        if shift:
            t = torch.roll(t, shifts=(shift, shift), dims=(1, 2))
        return x + t[:, :H, :W].permute(0, 3, 1, 2)


class ResidualUnit(nn.Module):
    """1x1, 3x3, 1x1 convolutions with GELU, and a skip connection."""

    def __init__(self, N: int):
        super().__init__()
        self.conv = nn.Sequential(conv1x1(N, N // 2), nn.GELU(), conv3x3(N // 2, N // 2), nn.GELU(),
                                  conv1x1(N // 2, N))
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.conv(x))


class WindowAttentionBlock(nn.Module):
    """WACNN's attention block (Zou et al. §3.2, Fig. 3): Cheng et al. 2020's
    simplified attention module (a trunk ``conv_a`` gated by a sigmoid mask
    branch ``conv_b``) whose mask branch starts with window attention.
    CompressAI's ``AttentionBlock`` with GELU and that one layer added."""

    def __init__(self, dim: int, num_heads: int = 8, window: int = 8, shift: int = 4):
        super().__init__()
        self.conv_a = nn.Sequential(ResidualUnit(dim), ResidualUnit(dim), ResidualUnit(dim))
        self.conv_b = nn.Sequential(
            WindowAttentionLayer(dim, num_heads, window, shift),
            ResidualUnit(dim), ResidualUnit(dim), ResidualUnit(dim),
            conv1x1(dim, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_a(x) * torch.sigmoid(self.conv_b(x))


def ramp(a: int, b: int, steps: int = 4) -> list[int]:
    """``steps + 1`` channel counts from ``a`` to ``b`` in equal steps (the
    reference's 320, 288, 256, 224, 192 for M=320, N=192)."""
    return [a + (b - a) * k // steps for k in range(steps + 1)]


def slice_transform(in_channels: int, out_channels: int, M: int) -> nn.Sequential:
    """Five 3x3 convolutions with GELU; the reference's widths 224, 176, 128,
    64 at M=320, in proportion to M otherwise."""
    widths = [in_channels, *(w * M // 320 for w in (224, 176, 128, 64))]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [conv(a, b, kernel_size=3, stride=1), nn.GELU()]
    return nn.Sequential(*layers, conv(widths[-1], out_channels, kernel_size=3, stride=1))


def hyper_analysis_transform(M: int, N: int) -> nn.Sequential:
    """h_a: five 3x3 convolutions with GELU, M channels down to N in equal
    steps, two of them with stride 2 (SegPIC reuses it)."""
    c = ramp(M, N)
    return nn.Sequential(
        conv3x3(c[0], c[0]), nn.GELU(),
        conv3x3(c[0], c[1]), nn.GELU(),
        conv3x3(c[1], c[2], stride=2), nn.GELU(),
        conv3x3(c[2], c[3]), nn.GELU(),
        conv3x3(c[3], c[4], stride=2),
    )


def hyper_synthesis_transform(M: int, N: int) -> nn.Sequential:
    """h_mean_s / h_scale_s: h_a mirrored, N channels up to M, two sub-pixel
    convolutions upsampling by 2."""
    c = ramp(M, N)
    return nn.Sequential(
        conv3x3(c[4], c[4]), nn.GELU(),
        subpel_conv3x3(c[4], c[3], 2), nn.GELU(),
        conv3x3(c[3], c[2]), nn.GELU(),
        subpel_conv3x3(c[2], c[1], 2), nn.GELU(),
        conv3x3(c[1], c[0]),
    )


class WACNN(ChannelwiseHyperprior):
    """Zou et al. 2022's CNN codec with window attention (paper: N=192, M=320).

    Inputs to :meth:`compress` must be a multiple of 64 on each side (the
    codec pads them); :meth:`forward` takes any size.
    """

    def __init__(self, N: int = 192, M: int = 320, num_slices: int = 10, max_support_slices: int = 5):
        super().__init__()
        self.N, self.M = N, M
        self.g_a = nn.Sequential(
            conv(3, N, kernel_size=5, stride=2), GDN(N),
            conv(N, N, kernel_size=5, stride=2), GDN(N),
            WindowAttentionBlock(N, num_heads=8, window=8, shift=4),
            conv(N, N, kernel_size=5, stride=2), GDN(N),
            conv(N, M, kernel_size=5, stride=2),
            WindowAttentionBlock(M, num_heads=8, window=4, shift=2),
        )
        self.g_s = nn.Sequential(
            WindowAttentionBlock(M, num_heads=8, window=4, shift=2),
            deconv(M, N, kernel_size=5, stride=2), GDN(N, inverse=True),
            deconv(N, N, kernel_size=5, stride=2), GDN(N, inverse=True),
            WindowAttentionBlock(N, num_heads=8, window=8, shift=4),
            deconv(N, N, kernel_size=5, stride=2), GDN(N, inverse=True),
            deconv(N, 3, kernel_size=5, stride=2),
        )
        self.h_a = hyper_analysis_transform(M, N)
        self.h_mean_s = hyper_synthesis_transform(M, N)
        self.h_scale_s = hyper_synthesis_transform(M, N)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.channel_conditional = ChannelConditional(
            M, num_slices, max_support_slices, lambda i, o: slice_transform(i, o, M))


ARCHITECTURE = register(Architecture(
    "wacnn", WACNN, ("N", "M"), pad_multiple=64, streams=("y", "z"), coder="channelwise",
    reference="Zou, Song, Zhang, CVPR 2022 (window-based attention CNN, channel-wise entropy model)",
    paper={"N": 192, "M": 320}, tiny={"N": 16, "M": 40},  # 10 slices; 8 attention heads
))
