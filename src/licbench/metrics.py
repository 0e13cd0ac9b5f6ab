"""Distortion and rate measures, computed the same way for every codec.

:data:`METRICS` is the registry: one entry per metric, each computed by a
well-kept library (named in the entry and in docs/report.md), on 8-bit RGB images
as the codecs decode them. ``evaluate.metrics`` and ``anchors.metrics`` in
params.yaml select from it; each metric gives one or more per-image columns.

Colour. RGB metrics (``psnr``, ``ms_ssim``: CompressAI's and the published
curves' measures) compare the RGB samples. The others compare planes of
Y'CbCr, full range, from the RGB samples in floating point (not rounded) with
the matrix the name says: BT.709 (``bt709``, JPEG AI's) or BT.601 (``bt601``,
the one CompressAI's VTM, HM and BPG anchors code in). JPEG AI's seven metrics
(:data:`JPEG_AI`) are computed on the BT.709 luma, as its common test
conditions do. ``psnr_yuv_*`` gives PSNR-Y, -U, -V and the weighted
(6 PSNR-Y + PSNR-U + PSNR-V) / 8 of the common test conditions.

Learned metrics (LPIPS, DISTS) use network weights that are never downloaded:
they run only with ``metric_weights`` in params.yaml naming a folder that
holds the files piq would fetch (see :data:`WEIGHT_FILES`), each loaded as
plain tensors first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim

from .errors import ConfigError

# pytorch-msssim's default 5 scales and 11x11 window need a shorter side above
# (11 - 1) * 2**4 = 160 pixels; piq's IW-SSIM (5 scales, 11x11) the same.
MS_SSIM_MIN_SIDE = 161

# Kr, Kb of the luma Y' = Kr R + (1 - Kr - Kb) G + Kb B (ITU-R BT.709-6 and BT.601-7).
MATRICES = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}


def rgb_to_ycbcr(image: np.ndarray, matrix: str) -> np.ndarray:
    """H x W x 3 uint8 R'G'B' -> H x W x 3 float64 Y'CbCr, full range: Y' in
    [0, 255], Cb and Cr centred on 128, not rounded."""
    kr, kb = MATRICES[matrix]
    rgb = image.astype(np.float64)
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    cb = (rgb[..., 2] - y) / (2 * (1 - kb)) + 128
    cr = (rgb[..., 0] - y) / (2 * (1 - kr)) + 128
    return np.stack([y, cb, cr], axis=-1)


def luma(image: np.ndarray, matrix: str = "bt709") -> np.ndarray:
    return rgb_to_ycbcr(image, matrix)[..., 0]


def _check(reference: np.ndarray, decoded: np.ndarray) -> None:
    if reference.shape != decoded.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {decoded.shape}")


def _psnr_of(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of two uint8 images (peak 255)."""
    _check(reference, decoded)
    return _psnr_of(reference, decoded)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float | None:
    """MS-SSIM (pytorch-msssim, data range 255, float32 as is usual for it) of two
    uint8 RGB images; None when the image is too small for five scales."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    a = torch.tensor(reference, dtype=torch.float32).permute(2, 0, 1)[None]
    b = torch.tensor(decoded, dtype=torch.float32).permute(2, 0, 1)[None]
    return float(_ms_ssim(a, b, data_range=255.0, size_average=True))


def psnr_yuv(reference: np.ndarray, decoded: np.ndarray, matrix: str) -> dict[str, float]:
    """PSNR-Y, -U, -V (peak 255) and their 6:1:1 weighted mean, in ``matrix``'s Y'CbCr."""
    _check(reference, decoded)
    a, b = rgb_to_ycbcr(reference, matrix), rgb_to_ycbcr(decoded, matrix)
    y, u, v = (_psnr_of(a[..., i], b[..., i]) for i in range(3))
    return {f"psnr_y_{matrix}": y, f"psnr_u_{matrix}": u, f"psnr_v_{matrix}": v,
            f"psnr_yuv_{matrix}": (6 * y + u + v) / 8}


# --- luma metrics: H x W float64 planes in [0, 255] -------------------------------

def _plane(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None, None]


def ms_ssim_plane(ref: np.ndarray, dec: np.ndarray) -> float | None:
    if min(ref.shape) < MS_SSIM_MIN_SIDE:
        return None
    return float(_ms_ssim(_plane(ref).float(), _plane(dec).float(), data_range=255.0, size_average=True))


def fsim_plane(ref: np.ndarray, dec: np.ndarray) -> float:
    import piq

    return float(piq.fsim(_plane(dec), _plane(ref), data_range=255.0, chromatic=False))


def vif_plane(ref: np.ndarray, dec: np.ndarray) -> float:
    import piq

    return float(piq.vif_p(_plane(dec), _plane(ref), data_range=255.0))


def iw_ssim_plane(ref: np.ndarray, dec: np.ndarray) -> float | None:
    import piq

    if min(ref.shape) < MS_SSIM_MIN_SIDE:
        return None
    return float(piq.information_weighted_ssim(_plane(dec), _plane(ref), data_range=255.0))


def nlpd_plane(ref: np.ndarray, dec: np.ndarray) -> float:
    return float(_nlpd()(_plane(dec).float() / 255, _plane(ref).float() / 255))


@lru_cache(maxsize=1)
def _nlpd():
    from IQA_pytorch import NLPD

    return NLPD(channels=1).eval()


def psnr_hvs_plane(ref: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    """PSNR-HVS and PSNR-HVS-M (dB) over the whole 8 x 8 blocks, as Ponomarenko's
    code does (a remainder of fewer than 8 rows or columns is left out)."""
    h, w = (s - s % 8 for s in ref.shape)
    with np.errstate(divide="ignore", invalid="ignore"):  # flat blocks: handled by np.where inside
        hvs, hvsm = _psnr_hvs_hvsm()(ref[:h, :w] / 255, dec[:h, :w] / 255)
    return float(hvs), float(hvsm)


@lru_cache(maxsize=1)
def _psnr_hvs_hvsm():
    # Its import prints a line on stdout when its optional PyTorch backend
    # (torch-dct) is absent; the NumPy backend, its default, is the one used.
    with contextlib.redirect_stdout(io.StringIO()):
        from psnr_hvsm import psnr_hvs_hvsm
    return psnr_hvs_hvsm


def vmaf_plane(ref: np.ndarray, dec: np.ndarray) -> float:
    with torch.no_grad():
        return float(_vmaf()(_plane(ref).float(), _plane(dec).float()).squeeze())


@lru_cache(maxsize=1)
def _vmaf():
    from vmaf_torch import VMAF

    # One frame: libvmaf gives a still image motion 0; its default model
    # (vmaf_v0.6.1) clips the score to [0, 100].
    return VMAF(enable_motion=False, clip_score=True).eval()


# --- learned metrics: weights supplied by the user ---------------------------------

# The files piq fetches for each (torch.hub names them thus in <folder>/checkpoints/).
WEIGHT_FILES = {"lpips": ("vgg16-397923af.pth", "lpips_weights.pt"),
                "dists": ("vgg16-397923af.pth", "dists_weights.pt")}


def weight_files(name: str, folder: str | Path | None) -> list[Path]:
    """The weight files of learned metric ``name`` in ``folder``, each checked to
    load as plain tensors (no pickled code); ConfigError naming what is missing."""
    files = WEIGHT_FILES[name]
    if folder is None:
        raise ConfigError(f"metric {name} needs network weights: set metric_weights in params.yaml "
                          f"to a folder holding checkpoints/{' and checkpoints/'.join(files)} "
                          "(nothing is downloaded)")
    paths = [Path(folder) / "checkpoints" / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"metric {name}: {', '.join(missing)}: no such file; metric_weights must "
                          f"hold checkpoints/{' and checkpoints/'.join(files)}")
    for p in paths:
        try:
            torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- any failure means: not a plain tensor file
            raise ConfigError(f"metric {name}: {p}: not a file of plain tensors "
                              f"({type(exc).__name__}); refusing to unpickle it") from None
    return paths


@lru_cache(maxsize=4)
def _learned(name: str, folder: str):
    import piq

    weight_files(name, folder)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(folder)  # piq and torchvision find the files there and fetch nothing
    try:
        return (piq.LPIPS() if name == "lpips" else piq.DISTS()).eval()
    finally:
        torch.hub.set_dir(previous)


def _learned_metric(name: str) -> Callable:
    def compute(reference: np.ndarray, decoded: np.ndarray, weights: str | None = None) -> dict:
        weight_files(name, weights)
        module = _learned(name, str(weights))
        a = torch.from_numpy(reference).permute(2, 0, 1)[None].float() / 255
        b = torch.from_numpy(decoded).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            return {name: float(module(b, a))}

    return compute


# --- the registry --------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    library: str        # the PyPI distribution that computes it
    space: str          # what it compares
    columns: tuple[str, ...]
    compute: Callable[..., dict[str, float | None]]
    # How BD values see the column: "as is", "db" (-10 log10(1 - x), the
    # convention for MS-SSIM) or "negated" (lower is better: -x increases with rate).
    bd_axis: str = "as is"
    needs_weights: bool = False

    def version(self) -> str:
        return f"{self.library} {version(self.library)}"


def _luma_metric(name: str, plane: Callable) -> Callable:
    def compute(reference: np.ndarray, decoded: np.ndarray, weights: str | None = None) -> dict:
        _check(reference, decoded)
        return {name: plane(luma(reference), luma(decoded))}

    return compute


def _psnr_hvs(reference: np.ndarray, decoded: np.ndarray, weights: str | None = None) -> dict:
    _check(reference, decoded)
    hvs, hvsm = psnr_hvs_plane(luma(reference), luma(decoded))
    return {"psnr_hvs": hvs, "psnr_hvs_m": hvsm}


Y709 = "Y' (BT.709)"

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", "PSNR (RGB)", "numpy", "RGB", ("psnr",),
           lambda r, d, weights=None: {"psnr": psnr(r, d)}),
    Metric("ms_ssim", "MS-SSIM (RGB)", "pytorch-msssim", "RGB", ("ms_ssim",),
           lambda r, d, weights=None: {"ms_ssim": ms_ssim(r, d)}, bd_axis="db"),
    Metric("psnr_yuv_bt709", "PSNR-Y/U/V, YUV 6:1:1 (BT.709)", "numpy", "Y'CbCr (BT.709)",
           ("psnr_y_bt709", "psnr_u_bt709", "psnr_v_bt709", "psnr_yuv_bt709"),
           lambda r, d, weights=None: psnr_yuv(r, d, "bt709")),
    Metric("psnr_yuv_bt601", "PSNR-Y/U/V, YUV 6:1:1 (BT.601)", "numpy", "Y'CbCr (BT.601)",
           ("psnr_y_bt601", "psnr_u_bt601", "psnr_v_bt601", "psnr_yuv_bt601"),
           lambda r, d, weights=None: psnr_yuv(r, d, "bt601")),
    Metric("ms_ssim_y", "MS-SSIM (Y)", "pytorch-msssim", Y709, ("ms_ssim_y",),
           _luma_metric("ms_ssim_y", ms_ssim_plane), bd_axis="db"),
    Metric("fsim", "FSIM", "piq", Y709, ("fsim",), _luma_metric("fsim", fsim_plane)),
    Metric("vif", "VIFp", "piq", Y709, ("vif",), _luma_metric("vif", vif_plane)),
    Metric("iw_ssim", "IW-SSIM", "piq", Y709, ("iw_ssim",), _luma_metric("iw_ssim", iw_ssim_plane),
           bd_axis="db"),
    Metric("nlpd", "NLPD", "IQA-pytorch", Y709, ("nlpd",), _luma_metric("nlpd", nlpd_plane),
           bd_axis="negated"),
    Metric("psnr_hvs", "PSNR-HVS, PSNR-HVS-M", "psnr-hvsm", Y709, ("psnr_hvs", "psnr_hvs_m"), _psnr_hvs),
    Metric("vmaf", "VMAF (v0.6.1)", "vmaf-torch", Y709, ("vmaf",), _luma_metric("vmaf", vmaf_plane)),
    Metric("lpips", "LPIPS (VGG)", "piq", "RGB", ("lpips",), _learned_metric("lpips"),
           bd_axis="negated", needs_weights=True),
    Metric("dists", "DISTS", "piq", "RGB", ("dists",), _learned_metric("dists"),
           bd_axis="negated", needs_weights=True),
)}

# JPEG AI's seven objective metrics (common test conditions), as columns.
JPEG_AI = ("ms_ssim_y", "fsim", "vif", "vmaf", "psnr_hvs_m", "iw_ssim", "nlpd")

COLUMNS: dict[str, Metric] = {c: m for m in METRICS.values() for c in m.columns}


def measure(reference: np.ndarray, decoded: np.ndarray, names: list[str],
            weights: str | Path | None = None) -> dict[str, float | None]:
    """The columns of every metric in ``names`` for one decoded image."""
    _check(reference, decoded)
    out: dict[str, float | None] = {}
    for name in names:
        out.update(METRICS[name].compute(reference, decoded, weights=None if weights is None else str(weights)))
    return out


def columns(names: list[str]) -> list[str]:
    return [c for name in names for c in METRICS[name].columns]


def check_weights(names: list[str], weights: str | Path | None) -> dict[str, str]:
    """Before any work: the sha256 of each weight file the learned metrics of
    ``names`` read (recorded with the results); ConfigError when one is missing."""
    out = {}
    for name in names:
        if METRICS[name].needs_weights:
            for path in weight_files(name, weights):
                out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def bd_value(column: str, value: float | None) -> float | None:
    """``value`` on the axis BD computations use for ``column`` (see Metric.bd_axis)."""
    if value is None:
        return None
    axis = COLUMNS[column].bd_axis if column in COLUMNS else "as is"
    if axis == "db":
        return -10 * math.log10(max(1 - value, 1e-12))
    if axis == "negated":
        return -value
    return value


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)


def bpp_from_likelihoods(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> float:
    """The rate the entropy model expects: -sum(log2 p) over every latent, per pixel."""
    bits = sum(float(-torch.log2(l).sum()) for l in likelihoods.values())
    return bits / num_pixels
