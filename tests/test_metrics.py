"""The metrics registry: each metric on a pair of small images, YUV PSNR by hand,
the learned metrics with weights the test makes, the complexity counter by hand.

The libraries' own reference values (their MATLAB comparisons, libvmaf) need
images that are not ours to ship; bench/metrics_reference.py runs that check
on their files. Here: every metric is the library's own function on the
colour plane it is documented to take, and its values on a fixed pair are
pinned, so that a new library version or a changed conversion shows.
"""

import math

import numpy as np
import pytest
import torch

from licbench import metrics as M
from licbench.complexity import count_macs, parameter_counts
from licbench.errors import ConfigError


def pair(size=192):
    """A textured RGB image and a noisy, blurred copy (deterministic)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    rng = np.random.default_rng(0)
    base = np.stack([128 + 60 * np.sin(x / 9 + c) * np.cos(y / 13 - c) for c in range(3)], -1)
    reference = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).round().astype(np.uint8)
    padded = np.pad(reference.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9
    noise = np.random.default_rng(1).normal(0, 4, base.shape)
    return reference, np.clip(blurred + noise, 0, 255).round().astype(np.uint8)


REFERENCE, DECODED = pair()

# The pair's values with the versions requirements.lock pins (piq 0.8.0,
# pytorch-msssim 1.0.0, psnr-hvsm 0.3.0, vmaf-torch 1.1.0, IQA-pytorch 0.1).
PINNED = {
    "psnr": 26.5484, "ms_ssim": 0.952419, "ms_ssim_y": 0.963343, "fsim": 0.875377, "vif": 0.341178,
    "iw_ssim": 0.950394, "nlpd": 0.200438, "psnr_hvs": 31.93, "psnr_hvs_m": 37.4054, "vmaf": 72.4244,
}
# A perfect copy scores this. PSNR-HVS(-M): psnr-hvsm's convention for identical
# images; VMAF: vmaf_v0.6.1 on one frame (motion 0) gives 97.43, not 100, as libvmaf does.
PERFECT = {"psnr": math.inf, "ms_ssim": 1.0, "ms_ssim_y": 1.0, "fsim": 1.0, "vif": 1.0, "iw_ssim": 1.0,
           "nlpd": 0.0, "psnr_hvs": 100.0, "psnr_hvs_m": 100.0, "vmaf": 97.4278}
JPEG_AI_AND_RGB = ["psnr", "ms_ssim", "ms_ssim_y", "fsim", "vif", "iw_ssim", "nlpd", "psnr_hvs", "vmaf"]


def test_every_metric_on_a_pair_and_on_a_perfect_copy():
    values = M.measure(REFERENCE, DECODED, JPEG_AI_AND_RGB)
    assert set(values) == set(PINNED)
    for column, pinned in PINNED.items():
        assert values[column] == pytest.approx(pinned, rel=1e-4, abs=1e-6), column
    perfect = M.measure(REFERENCE, REFERENCE, JPEG_AI_AND_RGB)
    for column, score in PERFECT.items():
        if score is not None:
            assert perfect[column] == pytest.approx(score, abs=1e-4), column
    # Better on every metric than the damaged copy (NLPD is a distance).
    for column in PINNED:
        better = perfect[column] < values[column] if column == "nlpd" else perfect[column] > values[column]
        assert better, column


def test_the_luma_metrics_are_the_libraries_own_on_bt709_luma():
    import piq
    from pytorch_msssim import ms_ssim

    y_ref, y_dec = (torch.from_numpy(M.luma(a))[None, None] for a in (REFERENCE, DECODED))
    values = M.measure(REFERENCE, DECODED, ["ms_ssim_y", "fsim", "vif", "iw_ssim"])
    assert values["fsim"] == pytest.approx(float(piq.fsim(y_dec, y_ref, data_range=255.0, chromatic=False)))
    assert values["vif"] == pytest.approx(float(piq.vif_p(y_dec, y_ref, data_range=255.0)))
    assert values["iw_ssim"] == pytest.approx(float(piq.information_weighted_ssim(y_dec, y_ref, data_range=255.0)))
    assert values["ms_ssim_y"] == pytest.approx(float(ms_ssim(y_ref.float(), y_dec.float(), data_range=255.0)))
    # BT.709's luma, not BT.601's: the two differ on a coloured image.
    assert not np.allclose(M.luma(REFERENCE, "bt709"), M.luma(REFERENCE, "bt601"))


def test_yuv_psnr_by_hand_with_each_matrix():
    reference = np.array([[[200, 100, 50], [10, 20, 30]]], dtype=np.uint8)
    decoded = np.array([[[190, 100, 50], [10, 20, 40]]], dtype=np.uint8)
    for matrix, (kr, kb) in {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}.items():
        kg = 1 - kr - kb
        # First pixel: R -10; second: B +10. Y' moves by Kr dR + Kb dB, Cb by
        # (dB - dY) / (2 (1 - Kb)), Cr by (dR - dY) / (2 (1 - Kr)).
        dy = [-10 * kr, 10 * kb]
        db = [(0 - dy[0]) / (2 * (1 - kb)), (10 - dy[1]) / (2 * (1 - kb))]
        dr = [(-10 - dy[0]) / (2 * (1 - kr)), (0 - dy[1]) / (2 * (1 - kr))]
        psnr = [10 * math.log10(255**2 / np.mean(np.square(d))) for d in (dy, db, dr)]
        got = M.psnr_yuv(reference, decoded, matrix)
        assert got[f"psnr_y_{matrix}"] == pytest.approx(psnr[0])
        assert got[f"psnr_u_{matrix}"] == pytest.approx(psnr[1])
        assert got[f"psnr_v_{matrix}"] == pytest.approx(psnr[2])
        assert got[f"psnr_yuv_{matrix}"] == pytest.approx((6 * psnr[0] + psnr[1] + psnr[2]) / 8)
        assert kg > 0
        # Y'CbCr of grey is (grey, 128, 128) in either matrix.
        grey = M.rgb_to_ycbcr(np.full((1, 1, 3), 77, np.uint8), matrix)[0, 0]
        assert grey == pytest.approx([77, 128, 128])


def test_registry_columns_are_unique_and_jpeg_ai_complete():
    columns = [c for m in M.METRICS.values() for c in m.columns]
    assert len(columns) == len(set(columns))
    assert set(M.JPEG_AI) <= set(columns) and len(M.JPEG_AI) == 7
    for metric in M.METRICS.values():
        assert metric.version().startswith(metric.library + " ")


def make_weights(folder, name):
    """Files shaped as piq's downloads, with weights made here (random VGG16)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(vgg16(weights=None).state_dict(), checkpoints / "vgg16-397923af.pth")
    channels = [64, 128, 256, 512, 512]
    if name == "lpips":
        torch.save([torch.rand(1, c, 1, 1) for c in channels], checkpoints / "lpips_weights.pt")
    else:
        # DISTS = 1 - sum(alpha S + beta T): weights summing to 1, as trained ones do.
        alpha, beta = torch.rand(2, 1, sum([3] + channels), 1, 1)
        total = alpha.sum() + beta.sum()
        torch.save({"alpha": alpha / total, "beta": beta / total}, checkpoints / "dists_weights.pt")


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_learned_metrics_run_on_supplied_weights_only(name, tmp_path, monkeypatch):
    # Nothing may be fetched: a download would go through this and fail the test.
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(ConfigError, match=f"metric {name} needs network weights: set metric_weights"):
        M.measure(REFERENCE, DECODED, [name])
    with pytest.raises(ConfigError, match=f"metric {name}: .*checkpoints/vgg16-397923af.pth.*: no such file"):
        M.check_weights([name], tmp_path)
    make_weights(tmp_path, name)
    hashes = M.check_weights([name], tmp_path)
    assert set(hashes) == set(M.WEIGHT_FILES[name]) and all(len(h) == 64 for h in hashes.values())
    same = M.measure(REFERENCE, REFERENCE, [name], tmp_path)[name]
    damaged = M.measure(REFERENCE, DECODED, [name], tmp_path)[name]
    assert same == pytest.approx(0.0, abs=1e-6) and damaged > same


def test_a_weights_file_with_pickled_code_is_refused(tmp_path):
    make_weights(tmp_path, "lpips")
    torch.save({"weights": [torch.zeros(1)], "code": ConfigError("x")}, tmp_path / "checkpoints" / "lpips_weights.pt")
    with pytest.raises(ConfigError, match="lpips_weights.pt: not a file of plain tensors"):
        M.check_weights(["lpips"], tmp_path)


class Tiny(torch.nn.Module):
    """Named as CompressAI's models are: g_a, g_s, and an entropy part."""

    def __init__(self):
        super().__init__()
        self.g_a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2, padding=2),
                                       torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, stride=2, padding=1))
        self.h_a = torch.nn.Linear(4, 6)
        self.g_s = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 8, 4, stride=2, padding=1),
                                       torch.nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1))

    def forward(self, x):
        y = self.g_a(x)
        self.h_a(y.mean((2, 3)))
        return self.g_s(y)


def test_the_operation_counter_matches_a_layer_by_layer_count():
    model, x = Tiny(), torch.rand(1, 3, 32, 48)
    macs, out = count_macs(lambda: model(x))
    assert out.shape == x.shape
    # Layer by layer: output positions x output channels x (input channels x kernel area).
    expected = (16 * 24 * 8 * 3 * 25      # conv 3->8, 5x5, stride 2: 16 x 24 outputs
                + 8 * 12 * 4 * 8 * 9      # conv 8->4, 3x3, stride 2: 8 x 12
                + 6 * 4                   # linear 4->6
                + 8 * 12 * 8 * 4 * 16     # transposed conv 4->8, 4x4: each input position, each tap
                + 16 * 24 * 3 * 8 * 16)   # transposed conv 8->3, 4x4
    assert macs == expected
    counts = parameter_counts(model)
    assert counts["params_encoder"] == (3 * 8 * 25 + 8) + (8 * 4 * 9 + 4)
    assert counts["params_entropy_model"] == 4 * 6 + 6
    assert counts["params_decoder"] == (4 * 8 * 16 + 8) + (8 * 3 * 16 + 3)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
