import math
import warnings

import numpy as np
import pytest

from licbench.report.bdrate import BDWarning, bd_psnr, bd_rate

METHODS = ["cubic", "pchip"]
ANCHOR_RATE = np.array([0.12, 0.2, 0.31, 0.46, 0.66, 0.9])
ANCHOR_PSNR = np.array([27.7, 29.4, 31.1, 32.9, 34.8, 36.7])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factor", [0.8, 1.0, 1.25])
def test_rate_scaled_at_every_quality(method, factor):
    # The same curve at `factor` times the rate: BD-rate is (factor - 1) exactly.
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, factor * ANCHOR_RATE, ANCHOR_PSNR, method) \
        == pytest.approx((factor - 1) * 100, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_quality_shifted_at_every_rate(method):
    assert bd_psnr(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR + 0.5, method) \
        == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_for_log_linear_curves(method):
    # log R = a + b q for each curve: both fits reproduce a line exactly, and the
    # mean gap over [lo, hi] is (a_t - a_a) + (b_t - b_a) (lo + hi) / 2.
    q_a, q_t = np.linspace(28, 36, 6), np.linspace(30, 38, 6)
    a_a, b_a, a_t, b_t = -9.0, 0.23, -9.6, 0.24
    lo, hi = 30.0, 36.0
    expected = (math.exp((a_t - a_a) + (b_t - b_a) * (lo + hi) / 2) - 1) * 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = bd_rate(np.exp(a_a + b_a * q_a), q_a, np.exp(a_t + b_t * q_t), q_t, method)
    assert got == pytest.approx(expected, abs=1e-9)


def random_curve(rng, n):
    rate = np.sort(np.exp(rng.uniform(np.log(0.08), np.log(2.0), n)))
    psnr = 24 + 4.5 * np.log2(rate * 10) + np.cumsum(rng.uniform(0.05, 0.3, n))
    return rate, psnr


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_the_bjontegaard_package(method, seed):
    bjontegaard = pytest.importorskip("bjontegaard")
    rng = np.random.default_rng(seed)
    n = [4, 5, 6, 8][seed % 4]
    (ra, qa), (rt, qt) = random_curve(rng, n), random_curve(rng, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = bd_rate(ra, qa, rt, qt, method), bd_psnr(ra, qa, rt, qt, method)
        theirs = (bjontegaard.bd_rate(ra, qa, rt, qt, method=method, min_overlap=0),
                  bjontegaard.bd_psnr(ra, qa, rt, qt, method=method, min_overlap=0))
    assert ours[0] == pytest.approx(theirs[0], abs=0.01)  # percentage points
    assert ours[1] == pytest.approx(theirs[1], abs=0.01)  # dB


def test_warnings_for_unreliable_curves():
    with pytest.warns(BDWarning, match="3 points"):
        bd_rate(ANCHOR_RATE[:3], ANCHOR_PSNR[:3], ANCHOR_RATE[:3] * 0.9, ANCHOR_PSNR[:3])
    bumpy = ANCHOR_PSNR.copy()
    bumpy[3] = bumpy[2] - 0.2
    with pytest.warns(BDWarning, match="does not strictly increase"):
        bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, bumpy, "pchip")
    with pytest.warns(BDWarning, match="overlap over"):
        bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR + 7.0)
    with pytest.warns(BDWarning, match="do not overlap"):
        assert math.isnan(bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR + 20.0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="anchor: rates must be positive"):
        bd_rate([0.0, 0.1, 0.2, 0.3], [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="test: rate and quality"):
        bd_rate([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.1, 0.2], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown BD method"):
        bd_rate(ANCHOR_RATE, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, "akima")
