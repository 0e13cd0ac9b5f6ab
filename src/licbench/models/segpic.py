"""SegPIC: region-adaptive transform with a segmentation prior.

Liu, Yang, Bai, Wei, Zhao, "Region-Adaptive Transform with Segmentation Prior
for Image Compression", ECCV 2024 (arXiv 2403.00628); official code
GityuxiLiu/SegPIC-for-Image-Compression (``compressai/models/sac.py``).

The pieces, in the paper's vocabulary (Sec. 3):

- SAL, the scale affine layer: ``x * (1 + s) + b`` with ``(s, b)`` from two
  1x1 convolutions around a GELU, inside every down- and up-sampling block.
- MAP, masked average pooling: one prototype per region of a partition, the
  mean of the features inside it.
- RAT, the region-adaptive transform: the prototypes, expanded back over their
  regions, steer a per-pixel depthwise kernel (DKG, DPSConv) and a channel
  attention (CAG) on the features.
- The partition is privileged information: class-agnostic masks in training,
  a uniform ``grid x grid`` partition at inference, so no mask is coded. The
  prototypes are coded, in two streams of their own.

Regions are integer maps; MAP and the expansion are one scatter-add and one
gather over the whole batch (the official code loops over samples with
one-hot masks), and the uniform grid is one more such map, so training on the
grid and coding with it take exactly the same path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN, conv1x1
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from torch import Tensor

# --- regions, MAP and expansion ---------------------------------------------


def mask_regions(partition: Tensor) -> tuple[Tensor, int]:
    """Region ids unique across a batch: ``partition`` (B, H, W), each sample's
    own ids, becomes ids ``0..R-1`` numbered sample by sample; returns them and R.

    Only the regions present get an id: a region that a nearest-neighbour
    downsampling dropped has no prototype (and costs no bits).
    """
    partition = partition.long()
    span = int(partition.max()) + 1 if partition.numel() else 1
    keys = partition + span * torch.arange(partition.shape[0], device=partition.device).view(-1, 1, 1)
    present = torch.zeros(span * partition.shape[0], dtype=torch.bool, device=partition.device)
    present[keys.reshape(-1)] = True
    renumber = present.cumsum(0) - 1  # a counting pass, no sort (torch.unique sorts)
    return renumber[keys], int(renumber[-1]) + 1


def grid_regions(batch: int, height: int, width: int, grid: int,
                 device: torch.device | str = "cpu") -> tuple[Tensor, int]:
    """The uniform ``grid x grid`` partition of a ``height x width`` map, as ids
    ``b * grid**2 + row * grid + column`` (R = batch * grid**2).

    Cell bounds are exact integers (pixel ``i`` of ``n`` is in cell
    ``i * grid // n``), used both to pool and to expand: the official code
    pools with ``adaptive_avg_pool2d`` and expands with nearest interpolation,
    whose bins differ when ``n`` is not a multiple of ``grid``. With
    ``n < grid`` some cells are empty: their prototype is 0 and no pixel reads it.
    """
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    cells = rows[:, None] * grid + cols[None, :]
    offsets = torch.arange(batch, device=device).view(-1, 1, 1) * grid * grid
    return cells[None] + offsets, batch * grid * grid


def downsample_partition(partition: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour downsampling by ``factor``: the top-left pixel of each
    block (what ``F.interpolate(mode='nearest', scale_factor=1/factor)`` picks)."""
    return partition[:, ::factor, ::factor]


def masked_average_pool(features: Tensor, regions: Tensor, count: int) -> Tensor:
    """MAP: (B, C, H, W) features and (B, H, W) ids in ``0..count-1`` ->
    (count, C), each region's mean feature (0 for a region with no pixel)."""
    b, c, h, w = features.shape
    ids = regions.reshape(-1)
    # Channels first: (C, B*H*W) moves whole H*W planes; (B*H*W, C) would
    # transpose every pixel, which costs more than the sums themselves.
    flat = features.transpose(0, 1).reshape(c, -1)
    sums = features.new_zeros(c, count).index_add_(1, ids, flat)
    areas = torch.bincount(ids, minlength=count).clamp_(min=1).to(features.dtype)
    return (sums / areas).t()


def expand_prototypes(prototypes: Tensor, regions: Tensor) -> Tensor:
    """The inverse of MAP's pooling: (R, C) prototypes, (B, H, W) ids ->
    (B, C, H, W), each pixel carrying its region's prototype."""
    b, h, w = regions.shape
    planes = prototypes.t().index_select(1, regions.reshape(-1))  # C, B*H*W
    return planes.view(-1, b, h, w).transpose(0, 1).contiguous()


# --- layers ------------------------------------------------------------------


class ScaleAffineLayer(nn.Module):
    """SAL (Sec. 3): ``x * (1 + s) + b``, ``(s, b)`` predicted from ``x`` by a
    1x1 convolution, a GELU and a 1x1 convolution to twice the channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.affine = nn.Sequential(conv1x1(channels, channels), nn.GELU(),
                                    conv1x1(channels, 2 * channels))

    def forward(self, x: Tensor) -> Tensor:
        scale, bias = self.affine(x).chunk(2, dim=1)
        return x * (1 + scale) + bias


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Analysis block: 5x5 convolution with stride 2, GDN, then SAL."""
    return nn.Sequential(conv(in_ch, out_ch, 5, 2), GDN(out_ch), ScaleAffineLayer(out_ch))


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Synthesis block: SAL, then a 5x5 transposed convolution with stride 2 and
    GDN. The official code builds this GDN with ``inverse=False`` (a forward
    GDN, not the usual IGDN of a synthesis); kept, as its published results
    come from it."""
    return nn.Sequential(ScaleAffineLayer(in_ch), deconv(in_ch, out_ch, 5, 2), GDN(out_ch))


class RegionAdaptiveTransform(nn.Module):
    """RAT (Sec. 3): features steered by the prototypes of their regions.

    CTL (1x1, LeakyReLU, 1x1) transforms the features; DKG makes, from the
    features and the expanded prototypes, a k x k kernel per pixel and channel
    (1x1, 3x3, then a grouped 3x3 so that each channel's kernel comes from that
    channel alone); DPSConv applies them depthwise (no channel mixing inside
    the dynamic part); CAG, a squeeze-and-excitation gate, scales the result;
    a 1x1 convolution mixes channels; the input is added back.
    """

    def __init__(self, channels: int, prototype_channels: int, kernel_size: int = 3):
        super().__init__()
        c, k = channels, kernel_size
        self.kernel_size = k
        act = lambda: nn.LeakyReLU(negative_slope=0.1)  # noqa: E731
        self.ctl = nn.Sequential(conv1x1(c, c), act(), conv1x1(c, c))
        self.dkg = nn.Sequential(
            conv1x1(c + prototype_channels, c), act(),
            nn.Conv2d(c, c, k, padding=k // 2), act(),
            nn.Conv2d(c, c * k * k, k, padding=k // 2, groups=c),
        )
        self.cag = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv1x1(c, c), act(), conv1x1(c, c),
                                 nn.Sigmoid())
        self.conv_out = conv1x1(c, c)

    def forward(self, x: Tensor, prototypes: Tensor) -> Tensor:
        """``x`` (B, C, H, W); ``prototypes`` expanded to (B, P, H, W)."""
        b, c, h, w = x.shape
        k = self.kernel_size
        t = self.ctl(x)
        kernels = self.dkg(torch.cat([t, prototypes], dim=1)).view(b, c, k * k, h, w)
        windows = nn.functional.unfold(t, k, padding=k // 2).view(b, c, k * k, h, w)
        out = (windows * kernels).sum(dim=2)  # DPSConv: depthwise, per pixel
        out = out * self.cag(out)
        return self.conv_out(out) + x


class PrototypeCoder(nn.Module):
    """Prototype transmission (Sec. 3): prototypes -> 1x1 analysis transform with
    GDNs -> a latent with its own factorized entropy bottleneck -> 1x1 synthesis
    transform with IGDNs (the official ``g_ab``/``g_sb``). ``analysis`` and
    ``synthesis`` are the widths from input to latent and from latent to output."""

    def __init__(self, analysis: tuple[int, int, int, int], synthesis: tuple[int, int, int, int]):
        super().__init__()
        a, s = analysis, synthesis
        if a[3] != s[0]:
            raise ValueError(f"prototype latent widths differ: {a[3]} and {s[0]}")
        self.g_a = nn.Sequential(conv1x1(a[0], a[1]), GDN(a[1]), conv1x1(a[1], a[2]), GDN(a[2]),
                                 conv1x1(a[2], a[3]))
        self.g_s = nn.Sequential(conv1x1(s[0], s[1]), GDN(s[1], inverse=True), conv1x1(s[1], s[2]),
                                 GDN(s[2], inverse=True), conv1x1(s[2], s[3]))
        self.entropy_bottleneck = EntropyBottleneck(a[3])

    def forward(self, prototypes: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C, 1, 1) or (B, C, grid, grid) prototypes -> (decoded prototypes,
        likelihoods). As in the official code, the decoded value is the latent
        rounded around its medians (straight-through), not the noisy one; the
        medians are detached, so that only the aux loss trains them."""
        latent = self.g_a(prototypes)
        _, likelihoods = self.entropy_bottleneck(latent)
        medians = self.entropy_bottleneck._get_medians().detach()
        return self.g_s(quantize_ste(latent - medians) + medians), likelihoods
