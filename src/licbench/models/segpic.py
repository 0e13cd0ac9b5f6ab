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
grid and coding with it take the same path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN, conv1x1
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from torch import Tensor

from ..errors import ConfigError
from .channelwise import ChannelConditional
from .registry import Architecture, register
from .wacnn import WindowAttentionBlock, hyper_analysis_transform, hyper_synthesis_transform, slice_transform

# --- regions, MAP and expansion ---------------------------------------------
#
# A partition of a batch is ``ids`` (B, H, W), each pixel's region within its
# sample, 0..K-1, and ``valid`` (B, K): which of a sample's K slots hold a
# region (samples have different numbers of regions). Prototypes are
# (B, K, C); the coded ones are ``prototypes[valid]``.


def mask_regions(partition: Tensor) -> tuple[Tensor, Tensor]:
    """``ids`` and ``valid`` of a (B, H, W) partition of any integer ids: each
    sample's ids renumbered 0..K_b-1 in their order. A region absent from the
    map (dropped by a nearest-neighbour downsampling) gets no slot, so no
    prototype and no bits."""
    partition = partition.long()
    b = partition.shape[0]
    flat = partition.reshape(b, -1)
    span = int(flat.max()) + 1 if flat.numel() else 1
    present = torch.zeros(b, span, dtype=torch.bool, device=partition.device).scatter_(1, flat, True)
    renumber = present.cumsum(1) - 1  # a counting pass, no sort (torch.unique sorts)
    counts = present.sum(1)
    slots = torch.arange(int(counts.max()) if b else 0, device=partition.device)
    return renumber.gather(1, flat).view_as(partition), slots < counts[:, None]


def grid_regions(batch: int, height: int, width: int, grid: int,
                 device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``ids`` and ``valid`` of the uniform ``grid x grid`` partition of a
    ``height x width`` map: cell ``row * grid + column``, every cell a slot.

    Cell bounds are exact integers (pixel ``i`` of ``n`` is in cell
    ``i * grid // n``), used both to pool and to expand: the official code
    pools with ``adaptive_avg_pool2d`` and expands with nearest interpolation,
    whose cells differ when ``n`` is not a multiple of ``grid``. With
    ``n < grid`` some cells are empty: their prototype is 0 and no pixel reads it.
    """
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    cells = (rows[:, None] * grid + cols[None, :]).expand(batch, height, width)
    return cells, torch.ones(batch, grid * grid, dtype=torch.bool, device=device)


def downsample_partition(partition: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour downsampling by ``factor``: the top-left pixel of each
    block (what ``F.interpolate(mode='nearest', scale_factor=1/factor)`` picks)."""
    return partition[:, ::factor, ::factor]


def masked_average_pool(features: Tensor, ids: Tensor, slots: int) -> Tensor:
    """MAP: (B, C, H, W) features, (B, H, W) ids in ``0..slots-1`` -> (B, slots, C),
    each region's mean feature (0 in a slot with no pixel). One scatter-add
    over the features as they lie (no copy), one count."""
    b, c, h, w = features.shape
    index = ids.reshape(b, 1, h * w).expand(b, c, h * w)
    sums = features.new_zeros(b, c, slots).scatter_add_(2, index, features.reshape(b, c, h * w))
    offsets = slots * torch.arange(b, device=ids.device).view(b, 1)
    areas = torch.bincount((ids.reshape(b, -1) + offsets).view(-1), minlength=b * slots)
    return (sums / areas.view(b, 1, slots).clamp(min=1)).transpose(1, 2)


def expand_prototypes(prototypes: Tensor, ids: Tensor) -> Tensor:
    """The inverse of MAP's pooling: (B, K, C) prototypes, (B, H, W) ids ->
    (B, C, H, W), each pixel carrying its region's prototype (one gather)."""
    b, h, w = ids.shape
    c = prototypes.shape[2]
    table = prototypes.transpose(1, 2).contiguous()  # B, C, K: small
    return torch.gather(table, 2, ids.reshape(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def fill_slots(values: Tensor, valid: Tensor) -> Tensor:
    """(R, C) values of the valid slots -> (B, K, C), zeros elsewhere."""
    out = values.new_zeros(*valid.shape, values.shape[1])
    out[valid] = values
    return out


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
        rounded around its medians (straight-through), not the noisy one."""
        latent = self.g_a(prototypes)
        _, likelihoods = self.entropy_bottleneck(latent)
        medians = self.entropy_bottleneck._get_medians()
        return self.g_s(quantize_ste(latent - medians) + medians), likelihoods


def grid_map(prototypes: Tensor, grid: int) -> Tensor:
    """(B, grid², C) prototypes of :func:`grid_regions` -> (B, C, grid, grid),
    the layout their latents are coded in."""
    return prototypes.view(prototypes.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


def grid_rows(maps: Tensor) -> Tensor:
    """The inverse of :func:`grid_map`."""
    return maps.flatten(2).transpose(1, 2)


# --- the model ----------------------------------------------------------------


class SegPIC(CompressionModel):
    """SegPIC (paper: N=192, M=320, a 4 x 4 grid at inference).

    WACNN's window attention and channel-wise entropy model (10 slices, 5
    supporting, LRP), with SAL in every sampling block, and RAT in the
    encoder (``rat_encoder`` at 1/4, ``rat_hyper_encoder`` on ``y`` before
    h_a), in the decoder (``rat_decoder`` at 1/4) and in the entropy model
    (``rat_means``, ``rat_scales`` on the hyper-synthesis features). Level-1
    prototypes are pooled from the features at 1/4, level-2 ones from ``y``
    at 1/16; each level is coded by its :class:`PrototypeCoder`.

    ``forward(x, partition)`` trains with a (B, H, W) partition of the image
    (region ids per sample; the masks stage's), downsampled by nearest
    neighbour to 1/4 and 1/16; without one, and always when coding
    (coding/prototypes.py), the uniform ``grid x grid`` partition is used. ``use_mask``
    (0/1) records whether training gave partitions (the paper's ablation
    trains on the grid); the model itself runs either way.

    Widths not given by N and M follow the official code at N=192, M=320 and
    scale with N elsewhere: prototype latents N/2 channels (96), hidden
    widths 2N/3 and N (128, 192); the last synthesis block has 32 channels at
    every size. Likelihood keys: ``y``, ``z``, ``prototypes1``, ``prototypes2``
    (the official ``z_center``, ``z_center2``).
    """

    def __init__(self, N: int = 192, M: int = 320, grid: int = 4, use_mask: int = 1,
                 num_slices: int = 10, max_support_slices: int = 5):
        super().__init__()
        if grid < 1:
            raise ConfigError(f"segpic: grid = {grid}, the uniform partition needs at least 1 x 1 cells")
        self.N, self.M, self.grid, self.use_mask = N, M, grid, use_mask
        self.g_a1 = nn.Sequential(down_block(3, N), down_block(N, N),
                                  WindowAttentionBlock(N, num_heads=8, window=8, shift=4))
        self.g_a2 = nn.Sequential(down_block(N, N), down_block(N, M),
                                  WindowAttentionBlock(M, num_heads=8, window=4, shift=2))
        self.g_s0 = nn.Sequential(WindowAttentionBlock(M, num_heads=8, window=4, shift=2),
                                  up_block(M, N), up_block(N, N))
        self.g_s1 = nn.Sequential(WindowAttentionBlock(N, num_heads=8, window=8, shift=4),
                                  up_block(N, N), up_block(N, 32), conv1x1(32, 3))
        self.h_a = hyper_analysis_transform(M, N)
        self.h_mean_s = hyper_synthesis_transform(M, N)
        self.h_scale_s = hyper_synthesis_transform(M, N)

        latent, hidden = N // 2, 2 * N // 3
        self.prototype_coder1 = PrototypeCoder((N, hidden, latent, latent), (latent, hidden, N, N))
        self.prototype_coder2 = PrototypeCoder((M, N, hidden, latent), (latent, hidden, N, M))
        self.rat_encoder = RegionAdaptiveTransform(N, N)
        self.rat_hyper_encoder = RegionAdaptiveTransform(M, M)
        self.rat_means = RegionAdaptiveTransform(M, M)
        self.rat_scales = RegionAdaptiveTransform(M, M)
        self.rat_decoder = RegionAdaptiveTransform(N, N)

        self.entropy_bottleneck = EntropyBottleneck(N)
        self.channel_conditional = ChannelConditional(
            M, num_slices, max_support_slices, lambda i, o: slice_transform(i, o, M))

    def regions(self, features: Tensor, partition: Tensor | None, factor: int) -> tuple[Tensor, Tensor]:
        """``ids`` and ``valid`` at the resolution of ``features`` (1/``factor``
        of the image): the partition downsampled if given, else the uniform grid."""
        b, _, h, w = features.shape
        if partition is None:
            return grid_regions(b, h, w, self.grid, features.device)
        small = downsample_partition(partition, factor)
        if small.shape != (b, h, w):
            raise ValueError(f"partition {tuple(partition.shape)} does not fit a batch of {b} images "
                             f"whose features at 1/{factor} are {h}x{w}")
        return mask_regions(small)

    @staticmethod
    def transmit(coder: PrototypeCoder, features: Tensor, ids: Tensor,
                 valid: Tensor) -> tuple[Tensor, Tensor]:
        """MAP, then the prototypes through their coder: (decoded prototypes
        expanded over their regions, likelihoods of the valid slots' latents)."""
        pooled = masked_average_pool(features, ids, valid.shape[1])
        decoded, likelihoods = coder(pooled[valid][..., None, None])
        return expand_prototypes(fill_slots(decoded.flatten(1), valid), ids), likelihoods

    def entropy_parameters(self, z_hat: Tensor, size: tuple[int, int],
                           prototypes: Tensor) -> tuple[Tensor, Tensor]:
        """(latent_means, latent_scales) for the slices: h_mean_s and h_scale_s,
        cropped to ``y``'s ``size``, each steered by RAT with the level-2
        prototypes expanded over ``y``'s regions."""
        h, w = size
        means = self.rat_means(self.h_mean_s(z_hat)[..., :h, :w], prototypes)
        scales = self.rat_scales(self.h_scale_s(z_hat)[..., :h, :w], prototypes)
        return means, scales

    def forward(self, x: Tensor, partition: Tensor | None = None) -> dict:
        y1 = self.g_a1(x)
        ids1, valid1 = self.regions(y1, partition, 4)
        prototypes1, prototypes1_likelihoods = self.transmit(self.prototype_coder1, y1, ids1, valid1)
        y = self.g_a2(self.rat_encoder(y1, prototypes1))

        ids2, valid2 = self.regions(y, partition, 16)
        prototypes2, prototypes2_likelihoods = self.transmit(self.prototype_coder2, y, ids2, valid2)
        z = self.h_a(self.rat_hyper_encoder(y, prototypes2))
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - z_offset) + z_offset

        means, scales = self.entropy_parameters(z_hat, y.shape[-2:], prototypes2)
        y_hat, y_likelihoods = self.channel_conditional(y, means, scales)
        x_hat = self.g_s1(self.rat_decoder(self.g_s0(y_hat), prototypes1))
        return {"x_hat": x_hat, "likelihoods": {
            "y": y_likelihoods, "z": z_likelihoods,
            "prototypes1": prototypes1_likelihoods, "prototypes2": prototypes2_likelihoods}}

    def grid_pool(self, features: Tensor) -> Tensor:
        """MAP over the uniform grid: (B, C, grid, grid) prototypes of ``features``,
        the layout their latents are coded in."""
        ids, valid = grid_regions(features.size(0), *features.shape[-2:], self.grid, features.device)
        return grid_map(masked_average_pool(features, ids, valid.shape[1]), self.grid)

    def expand_grid(self, prototypes: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, C, grid, grid) decoded prototypes -> (B, C, h, w) over the grid's cells."""
        ids, _ = grid_regions(prototypes.size(0), *size, self.grid, prototypes.device)
        return expand_prototypes(grid_rows(prototypes), ids)


ARCHITECTURE = register(Architecture(
    "segpic", SegPIC, ("N", "M", "grid", "use_mask"), pad_multiple=64,
    streams=("y", "z", "prototypes1", "prototypes2"), coder="prototypes",
    reference="Liu, Yang, Bai, Wei, Zhao, ECCV 2024 (region-adaptive transform with segmentation prior)",
    paper={"N": 192, "M": 320, "grid": 4, "use_mask": 1},
    tiny={"N": 16, "M": 40, "grid": 4, "use_mask": 1},
    partition_key="use_mask",
))
