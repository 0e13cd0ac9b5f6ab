"""licbench.metrics against published reference values, on the references' own images.

The images are not ours to ship; point this at them:

- ``--piq-assets``: piq's ``tests/assets`` (goldhill.gif, goldhill_jpeg.gif),
  with the original MATLAB values piq's tests quote (FSIM, VIFp, IW-SSIM);
- ``--pyiqa-calibration``: pyiqa's ``ResultsCalibra`` (ref_dir/, dist_dir/),
  with the original MATLAB values of its results_official.csv (PSNR, MS-SSIM,
  FSIMc, NLPD), computed on MATLAB's rgb2gray;
- ``--vmaf``: a libvmaf ``vmaf`` tool, run beside vmaf-torch on Kodak JPEG
  pairs (``--kodak``: the folder of kodim*.png).

The last line is JSON: each check, its values and the largest difference.
"""

import argparse
import io
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from licbench import metrics as M

PIQ_MATLAB = {"fsim": 0.89691, "vif": 0.2665, "iw_ssim": 0.886297}  # goldhill_jpeg vs goldhill
PYIQA_IMAGES = ["I03", "I04", "I06", "I08", "I19"]
PYIQA_MATLAB = {  # ResultsCalibra/results_official.csv
    "psnr": [21.11, 20.99, 27.01, 23.3, 21.62],
    "ms_ssim": [0.6733, 0.9996, 0.9998, 0.9566, 0.8462],
    "fsim_c": [0.689, 0.9702, 0.9927, 0.9575, 0.822],
    "nlpd": [0.561610096893874, 0.019534798560102, 0.015915631543598, 0.302802106557736,
             0.432604962261603],
}


def rgb2gray(a: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2gray on uint8 (rounded to uint8)."""
    return np.round(a[..., 0] * 0.298936021293775 + a[..., 1] * 0.587043074451121
                    + a[..., 2] * 0.114020904255103).clip(0, 255)


def piq_checks(folder: Path) -> dict:
    from skimage.io import imread

    def grey(name):
        a = imread(folder / name)
        return (a[0] if a.ndim == 3 else a).astype(np.float64)

    ref, dist = grey("goldhill.gif"), grey("goldhill_jpeg.gif")
    ours = {"fsim": M.fsim_plane(ref, dist), "vif": M.vif_plane(ref, dist),
            "iw_ssim": M.iw_ssim_plane(ref, dist)}
    return {k: {"ours": ours[k], "matlab": v, "diff": abs(ours[k] - v)} for k, v in PIQ_MATLAB.items()}


def pyiqa_checks(folder: Path) -> dict:
    import piq
    import torch

    ours = {k: [] for k in PYIQA_MATLAB}
    for name in PYIQA_IMAGES:
        r = np.asarray(Image.open(folder / "ref_dir" / f"{name}.bmp").convert("RGB"))
        d = np.asarray(Image.open(folder / "dist_dir" / f"{name}.bmp").convert("RGB"))
        gr, gd = rgb2gray(r), rgb2gray(d)
        ours["psnr"].append(M.psnr(r, d))
        ours["ms_ssim"].append(M.ms_ssim_plane(gr, gd))
        tr, td = (torch.from_numpy(a.copy()).permute(2, 0, 1)[None].double() for a in (r, d))
        ours["fsim_c"].append(float(piq.fsim(td, tr, data_range=255.0, chromatic=True)))
        ours["nlpd"].append(M.nlpd_plane(gr, gd))
    return {k: {"ours": ours[k], "matlab": v, "diff": max(abs(a - b) for a, b in zip(ours[k], v))}
            for k, v in PYIQA_MATLAB.items()}


def vmaf_checks(tool: Path, kodak: Path) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("kodim01", "kodim04", "kodim13", "kodim23"):
            ref = np.asarray(Image.open(kodak / f"{name}.png").convert("RGB"))
            for quality in (10, 40):
                buf = io.BytesIO()
                Image.fromarray(ref).save(buf, "JPEG", quality=quality)
                dec = np.asarray(Image.open(buf).convert("RGB"))
                h, w = ref.shape[:2]
                planes = [np.round(M.luma(a)).astype(np.uint8) for a in (ref, dec)]
                for y, f in zip(planes, ("r.yuv", "d.yuv")):  # 4:4:4, neutral chroma: VMAF reads luma
                    np.concatenate([y.ravel(), np.full(2 * h * w, 128, np.uint8)]).tofile(tmp / f)
                subprocess.run([str(tool), "-r", str(tmp / "r.yuv"), "-d", str(tmp / "d.yuv"), "-w", str(w),
                                "-h", str(h), "-p", "444", "-b", "8", "--json", "-o", str(tmp / "v.json"),
                                "-q"], check=True)
                libvmaf = json.loads((tmp / "v.json").read_text())["frames"][0]["metrics"]["vmaf"]
                ours = M.vmaf_plane(*(p.astype(np.float64) for p in planes))
                rows.append({"image": name, "jpeg_quality": quality, "libvmaf": libvmaf, "ours": ours})
    return {"vmaf": {"pairs": rows, "diff": max(abs(r["libvmaf"] - r["ours"]) for r in rows)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piq-assets", type=Path)
    parser.add_argument("--pyiqa-calibration", type=Path)
    parser.add_argument("--vmaf", type=Path, help="libvmaf's vmaf tool")
    parser.add_argument("--kodak", type=Path, help="a folder of kodim*.png (with --vmaf)")
    args = parser.parse_args()
    result = {}
    if args.piq_assets:
        result["piq_matlab"] = piq_checks(args.piq_assets)
    if args.pyiqa_calibration:
        result["pyiqa_matlab"] = pyiqa_checks(args.pyiqa_calibration)
    if args.vmaf:
        if not args.kodak:
            parser.error("--vmaf needs --kodak")
        result["libvmaf"] = vmaf_checks(args.vmaf, args.kodak)
    for group, checks in result.items():
        for name, check in checks.items():
            print(f"{group} {name}: largest difference {check['diff']:.5f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
