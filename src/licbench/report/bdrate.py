"""Bjøntegaard delta rate and delta quality between two rate-distortion curves.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves",
VCEG-M33, 2001: fit each curve, integrate the difference over the range both
curves cover, and average.

- BD-rate: log-rate as a function of quality, averaged over the overlapping
  quality range; reported as the percentage rate change of the test codec at
  equal quality (negative: the test codec needs fewer bits).
- BD-quality (BD-PSNR in dB, or BD-MS-SSIM): quality as a function of
  log-rate, averaged over the overlapping log-rate range (positive: the test
  codec is better at equal rate).

Two fits: ``"cubic"``, the original least-squares cubic polynomial (exact
through 4 points), and ``"pchip"``, piecewise cubic Hermite interpolation
(monotone, no overshoot), which JVET's common test conditions prefer for
curves of more than 4 points. Both are invariant to the base of the logarithm.

A :class:`BDWarning` is issued, and the value still returned, for curves of
fewer than 4 points, curves whose quality does not increase with rate, and
curves that overlap over less than ``min_overlap`` of their joint range; curves
that do not overlap at all give NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.interpolate import PchipInterpolator

METHODS = ("cubic", "pchip")


class BDWarning(UserWarning):
    """A BD value computed from curves that make it unreliable."""


def _curve(rate, quality, name: str) -> tuple[np.ndarray, np.ndarray]:
    rate = np.asarray(rate, dtype=np.float64)
    quality = np.asarray(quality, dtype=np.float64)
    if rate.shape != quality.shape or rate.ndim != 1:
        raise ValueError(f"{name}: rate and quality must be 1-D and of equal length")
    if rate.size < 2:
        raise ValueError(f"{name}: at least 2 points are needed, got {rate.size}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality)) and np.all(rate > 0)):
        raise ValueError(f"{name}: rates must be positive and all values finite")
    order = np.argsort(rate)
    rate, quality = rate[order], quality[order]
    if rate.size < 4:
        warnings.warn(f"{name}: {rate.size} points; Bjøntegaard's method assumes at least 4",
                      BDWarning, stacklevel=3)
    if np.any(np.diff(quality) <= 0) or np.any(np.diff(rate) <= 0):
        warnings.warn(f"{name}: quality does not strictly increase with rate", BDWarning,
                      stacklevel=3)
    return rate, quality


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral over [lo, hi] of the curve y(x) fitted by ``method``."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    if np.any(np.diff(x) == 0):
        raise ValueError("two points of a curve share the same value on the integration axis")
    if method == "cubic":
        poly = np.polyint(np.polyfit(x, y, min(3, x.size - 1)))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    if method == "pchip":
        return float(PchipInterpolator(x, y).integrate(lo, hi))
    raise ValueError(f"unknown BD method '{method}'; use one of {METHODS}")


def _average_gap(x_a, y_a, x_t, y_t, method: str, min_overlap: float, axis: str) -> float:
    lo, hi = max(x_a.min(), x_t.min()), min(x_a.max(), x_t.max())
    span = max(x_a.max(), x_t.max()) - min(x_a.min(), x_t.min())
    if hi <= lo:
        warnings.warn(f"the curves do not overlap in {axis}: no BD value", BDWarning, stacklevel=3)
        return math.nan
    if (hi - lo) / span < min_overlap:
        warnings.warn(f"the curves overlap over {100 * (hi - lo) / span:.0f}% of their {axis} "
                      f"range (less than {100 * min_overlap:.0f}%)", BDWarning, stacklevel=3)
    return (_integral(x_t, y_t, lo, hi, method) - _integral(x_a, y_a, lo, hi, method)) / (hi - lo)


def bd_rate(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip",
            min_overlap: float = 0.5) -> float:
    """Average rate change (percent) of the test curve against the anchor at equal quality."""
    ra, qa = _curve(rate_anchor, quality_anchor, "anchor")
    rt, qt = _curve(rate_test, quality_test, "test")
    gap = _average_gap(qa, np.log(ra), qt, np.log(rt), method, min_overlap, "quality")
    return (math.exp(gap) - 1.0) * 100.0


def bd_quality(rate_anchor, quality_anchor, rate_test, quality_test, method: str = "pchip",
               min_overlap: float = 0.5) -> float:
    """Average quality change (in the quality's unit, e.g. dB) of the test curve at equal rate."""
    ra, qa = _curve(rate_anchor, quality_anchor, "anchor")
    rt, qt = _curve(rate_test, quality_test, "test")
    return _average_gap(np.log(ra), qa, np.log(rt), qt, method, min_overlap, "log-rate")


bd_psnr = bd_quality
