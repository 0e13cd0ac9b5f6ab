"""Distortion and rate measures, computed the same way for every codec."""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim

# pytorch-msssim's default 5 scales and 11x11 window need a shorter side above
# (11 - 1) * 2**4 = 160 pixels.
MS_SSIM_MIN_SIDE = 161


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of two uint8 images (peak 255)."""
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float | None:
    """MS-SSIM (pytorch-msssim, data range 255, float32 as is usual for it) of two
    uint8 RGB images; None when the image is too small for five scales."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    a = torch.tensor(reference, dtype=torch.float32).permute(2, 0, 1)[None]
    b = torch.tensor(decoded, dtype=torch.float32).permute(2, 0, 1)[None]
    return float(_ms_ssim(a, b, data_range=255.0, size_average=True))


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)


def bpp_from_likelihoods(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> float:
    """The rate the entropy model expects: -sum(log2 p) over every latent, per pixel."""
    bits = sum(float(-torch.log2(l).sum()) for l in likelihoods.values())
    return bits / num_pixels
