"""The channel-wise autoregressive entropy model (Minnen & Singh, ICIP 2020).

The latent ``y`` is split along channels into ``num_slices`` slices coded one
after the other (§2, Fig. 2). The mean and scale of slice ``i`` come from the
hyper-synthesis features and the first ``min(i, max_support_slices)`` decoded
slices (channel conditioning, CC); latent residual prediction (LRP, §2) then
adds ``0.5 * tanh(.)`` of a predicted quantization residual to each decoded
slice, from the mean support and the slice itself. ChARM and WACNN (Zou et al.,
CVPR 2022) share this entropy model and differ in their transforms.

Names follow tensorflow-compression's ``models/ms2020.py`` and its PyTorch port
in WACNN's repository (``cc_mean_transforms``, ``cc_scale_transforms``,
``lrp_transforms``, ``h_mean_s``, ``h_scale_s``); the scales are CompressAI's
``GaussianConditional`` scales (lower bound 0.11, CDF table of 64 scales from
0.11 to 256), as in that port, where ms2020 predicts a scale index.

All slices of one image go into one rANS stream, in slice order, as in WACNN's
reference code: the decoder reads the slices back in the same order
(coding/latent/slices.py codes them).
"""

from __future__ import annotations

from typing import Callable

import torch
from compressai.entropy_models import GaussianConditional
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor, nn

from ..errors import ConfigError


class ChannelConditional(nn.Module):
    """The slices' entropy model: CC mean/scale transforms, LRP, and the
    Gaussian conditional that codes them.

    ``slice_transform(in_channels, out_channels)`` builds one of the per-slice
    networks; the hyper-synthesis features (``latent_means``,
    ``latent_scales``) have ``M`` channels.
    """

    def __init__(self, M: int, num_slices: int, max_support_slices: int,
                 slice_transform: Callable[[int, int], nn.Module]):
        super().__init__()
        if num_slices < 1 or M % num_slices:
            raise ConfigError(f"M = {M} latent channels do not split into {num_slices} equal slices")
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        depth = M // num_slices

        def support(i: int) -> int:  # channels of the mean/scale support of slice i
            return M + depth * (i if max_support_slices < 0 else min(i, max_support_slices))

        self.cc_mean_transforms = nn.ModuleList(slice_transform(support(i), depth) for i in range(num_slices))
        self.cc_scale_transforms = nn.ModuleList(slice_transform(support(i), depth) for i in range(num_slices))
        self.lrp_transforms = nn.ModuleList(slice_transform(support(i) + depth, depth) for i in range(num_slices))
        self.gaussian_conditional = GaussianConditional(None)

    def slice_parameters(self, i: int, latent_means: Tensor, latent_scales: Tensor,
                         y_hat_slices: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, scale, mean support) of slice ``i`` given the decoded slices before it."""
        support = y_hat_slices if self.max_support_slices < 0 else y_hat_slices[: self.max_support_slices]
        mean_support = torch.cat([latent_means, *support], dim=1)
        mu = self.cc_mean_transforms[i](mean_support)
        scale = self.cc_scale_transforms[i](torch.cat([latent_scales, *support], dim=1))
        return mu, scale, mean_support

    def residual_prediction(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """LRP: a bounded correction of the quantization residual of slice ``i``."""
        return 0.5 * torch.tanh(self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1)))

    def forward(self, y: Tensor, latent_means: Tensor, latent_scales: Tensor) -> tuple[Tensor, Tensor]:
        """(y_hat, likelihoods of y): noise for the rate term while training,
        straight-through rounding for what the synthesis sees (ms2020)."""
        y_hat_slices, likelihoods = [], []
        for i, y_slice in enumerate(y.chunk(self.num_slices, dim=1)):
            mu, scale, mean_support = self.slice_parameters(i, latent_means, latent_scales, y_hat_slices)
            _, slice_likelihoods = self.gaussian_conditional(y_slice, scale, mu)
            likelihoods.append(slice_likelihoods)
            y_hat_slice = quantize_ste(y_slice - mu) + mu
            y_hat_slices.append(y_hat_slice + self.residual_prediction(i, mean_support, y_hat_slice))
        return torch.cat(y_hat_slices, dim=1), torch.cat(likelihoods, dim=1)


class ChannelwiseHyperprior(CompressionModel):
    """A mean-scale hyperprior whose ``y`` is coded slice by slice: the training
    pass shared by ChARM and WACNN (coding/channelwise.py codes them).

    A subclass builds ``g_a``, ``g_s``, ``h_a``, ``h_mean_s``, ``h_scale_s``,
    ``entropy_bottleneck`` (for ``z``) and ``channel_conditional`` (for ``y``).
    ``z`` is coded at 1/4 of ``y``'s size; ``h_mean_s`` and ``h_scale_s`` see
    the rounded ``z`` (straight-through while training), as in ms2020.
    """

    g_a: nn.Module
    g_s: nn.Module
    h_a: nn.Module
    h_mean_s: nn.Module
    h_scale_s: nn.Module
    channel_conditional: ChannelConditional

    def hyper_synthesis(self, z_hat: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(latent_means, latent_scales), cropped to ``y``'s spatial ``size``."""
        h, w = size
        return self.h_mean_s(z_hat)[..., :h, :w], self.h_scale_s(z_hat)[..., :h, :w]

    def forward(self, x: Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - z_offset) + z_offset
        y_hat, y_likelihoods = self.channel_conditional(y, *self.hyper_synthesis(z_hat, y.shape[-2:]))
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}
