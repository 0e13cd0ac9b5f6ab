"""The ``anchors`` stage: classical codecs on the evaluation sets.

Each codec encodes each image at each quality setting into the bytes its file
format stores; bpp counts those bytes, and PSNR and MS-SSIM come from
:mod:`licbench.metrics`, as for the learned models. Images run in parallel
worker processes.

The codecs and what drives them:

- ``jpeg``: libjpeg-turbo through Pillow, ``quality`` (default 4:2:0 chroma);
- ``webp``: libwebp through Pillow, ``quality``;
- ``jpeg2000``: OpenJPEG through Pillow, irreversible wavelet with the colour
  transform, one layer at a compression ratio (the setting is the ratio:
  24 / ratio = bpp);
- ``avif``: libavif (AV1 intra) through Pillow, ``quality``, 4:4:4;
- ``hevc444``: HEVC intra by x265 in a HEIF file through pillow-heif (libheif),
  ``quality``, 4:4:4. The closest available stand-in for BPG (also x265 HEVC
  intra, 4:4:4), not BPG itself;
- ``jpegxl``: libjxl through pillow-jxl-plugin, ``quality``.

VTM, HM and bpgenc are not driven here: their published curves are the
reference for those (see the report).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, features

from .data.images import load_rgb8
from .errors import ConfigError
from .fileio import atomic_path, write_json_atomic
from .metrics import bpp_from_bytes, ms_ssim, psnr

log = logging.getLogger(__name__)


def _pillow_encoder(fmt: str, **fixed) -> Callable[[Image.Image, float], bytes]:
    def encode(im: Image.Image, setting: float) -> bytes:
        buf = io.BytesIO()
        im.save(buf, fmt, **fixed, quality=int(setting))
        return buf.getvalue()

    return encode


def _encode_jpeg2000(im: Image.Image, ratio: float) -> bytes:
    buf = io.BytesIO()
    # mct=1: the colour transform JPEG 2000 applies to RGB, off by default in
    # Pillow; without it the same rate costs about 3 dB on Kodak.
    im.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)],
            irreversible=True, mct=1)
    return buf.getvalue()


def _register_plugins() -> None:
    import pillow_heif
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    pillow_heif.register_heif_opener()


def _version_pillow(feature: str, library: str) -> Callable[[], str]:
    return lambda: f"{library} {features.version(feature)} (Pillow {Image.__version__})"


def _version_heif() -> str:
    import pillow_heif

    info = pillow_heif.libheif_info()
    return f"libheif {info['libheif']}, {info['encoders'].get('x265', 'no x265')} (pillow-heif {pillow_heif.__version__})"


def _version_jxl() -> str:
    from importlib.metadata import version

    return f"libjxl (pillow-jxl-plugin {version('pillow-jxl-plugin')})"


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    encode: Callable[[Image.Image, float], bytes]
    version: Callable[[], str]
    setting: str  # what the sweep values mean


CODECS = {
    c.name: c
    for c in (
        ClassicalCodec("jpeg", _pillow_encoder("JPEG"), _version_pillow("libjpeg_turbo", "libjpeg-turbo"), "quality"),
        ClassicalCodec("webp", _pillow_encoder("WEBP"), _version_pillow("webp", "libwebp"), "quality"),
        ClassicalCodec("jpeg2000", _encode_jpeg2000, _version_pillow("jpg_2000", "OpenJPEG"), "compression ratio"),
        ClassicalCodec("avif", _pillow_encoder("AVIF", subsampling="4:4:4", speed=6),
                       _version_pillow("avif", "libavif"), "quality"),
        ClassicalCodec("hevc444", _pillow_encoder("HEIF", chroma=444), _version_heif, "quality"),
        ClassicalCodec("jpegxl", _pillow_encoder("JXL"), _version_jxl, "quality"),
    )
}

ROW_SCHEMA = pa.schema([
    ("codec", pa.string()), ("setting", pa.float64()), ("image", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()), ("bpp", pa.float64()),
    ("psnr", pa.float64()), ("ms_ssim", pa.float64()),
    ("encode_seconds", pa.float64()), ("decode_seconds", pa.float64()),
])


def code_image(codec: str, setting: float, name: str, path: str) -> dict:
    """Encode one image with one codec setting, decode it, measure it."""
    _register_plugins()
    image = load_rgb8(path).array
    im = Image.fromarray(image)
    t0 = time.perf_counter()
    data = CODECS[codec].encode(im, setting)
    t1 = time.perf_counter()
    with Image.open(io.BytesIO(data)) as dec:
        decoded = np.asarray(dec.convert("RGB"))
    t2 = time.perf_counter()
    h, w = image.shape[:2]
    return {"codec": codec, "setting": float(setting), "image": name, "width": w, "height": h,
            "bytes": len(data), "bpp": bpp_from_bytes(len(data), h, w),
            "psnr": psnr(image, decoded), "ms_ssim": ms_ssim(image, decoded),
            "encode_seconds": t1 - t0, "decode_seconds": t2 - t1}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_anchors(images: list[tuple[str, Path]], sweeps: dict[str, list], workers: int) -> pa.Table:
    unknown = sorted(set(sweeps) - set(CODECS))
    if unknown:
        raise ConfigError(f"params.yaml anchors.codecs: unknown codec(s) {unknown}; known: {sorted(CODECS)}")
    jobs = [(codec, s, name, str(path)) for codec, settings in sweeps.items()
            for s in settings for name, path in images]
    if workers <= 1:
        rows = [code_image(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            rows = list(pool.map(code_image, *zip(*jobs), chunksize=4))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def curves(table: pa.Table) -> dict[str, dict]:
    """Per codec, the mean over images at each setting, in CompressAI's results
    JSON layout (``{"name", "description", "results": {"bpp", "psnr-rgb", ...}}``),
    ordered by rate."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        groups[(row["codec"], row["setting"])].append(row)
    out: dict[str, dict] = {}
    for (codec, setting), rows in sorted(groups.items()):
        entry = out.setdefault(codec, {
            "name": codec,
            "description": f"{CODECS[codec].version()}; sweep over {CODECS[codec].setting}",
            "results": defaultdict(list),
        })
        res = entry["results"]
        res[CODECS[codec].setting.replace(" ", "_")].append(setting)
        res["bpp"].append(float(np.mean([r["bpp"] for r in rows])))
        res["psnr-rgb"].append(float(np.mean([r["psnr"] for r in rows])))
        values = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
        res["ms-ssim-rgb"].append(float(np.mean(values)) if values else None)
        res["encoding_time"].append(float(np.mean([r["encode_seconds"] for r in rows])))
        res["decoding_time"].append(float(np.mean([r["decode_seconds"] for r in rows])))
    for entry in out.values():
        res = entry["results"]
        order = np.argsort(res["bpp"])
        entry["results"] = {k: [v[i] for i in order] for k, v in res.items()}
    return out


def run_anchors_stage(params: dict, dataset: str, out_dir: str | Path,
                      data_root: str | Path = "data") -> dict:
    """What ``stages/anchors.py`` runs: every configured codec on one evaluation set."""
    from .data.datasets import evaluation_images

    cfg = params.get("anchors") or {}
    sweeps = cfg.get("codecs") or {}
    out_dir = Path(out_dir)
    images = evaluation_images(dataset, data_root, cfg.get("max_images"))
    workers = int(cfg.get("workers") or os.cpu_count() or 1)
    log.info("%s: %d codecs x their settings on %d images, %d workers",
             dataset, len(sweeps), len(images), workers)
    table = run_anchors(images, sweeps, workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "per_image.parquet") as tmp:
        pq.write_table(table, tmp)
    result = curves(table)
    write_json_atomic(out_dir / "curves.json", result)
    return result
