"""The ``anchors`` stage: classical codecs on the evaluation sets.

Each codec encodes each image at each quality setting into the bytes its file
format stores; bpp counts those bytes (each format's own headers included),
and ``anchors.metrics`` come from :mod:`licbench.metrics`, as for the learned
models. Images run in parallel
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

- ``vtm``, ``hm``, ``bpg``: the reference software (VTM, HM) and Bellard's
  bpgenc, run as external programs when ``anchors.binaries`` in params.yaml
  points at them (sweep over QP), otherwise skipped with one log line. Their
  published curves (:mod:`licbench.report.published`) stand in for them in the
  report.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, features

from .config import AnchorsConfig, BinariesConfig
from .data.images import load_rgb8
from .errors import ConfigError, LicbenchError
from .fileio import atomic_path, write_json_atomic
from .metrics import bpp_from_bytes, check_weights, columns, measure
from .progress import progress

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


def _through_pillow(encode: Callable[[Image.Image, float], bytes]) -> Callable:
    """A codec Pillow both encodes and decodes, in memory."""

    def code(image: np.ndarray, setting: float, opts: dict, workdir: Path) -> Coded:
        t0 = time.perf_counter()
        data = encode(Image.fromarray(image), setting)
        t1 = time.perf_counter()
        with Image.open(io.BytesIO(data)) as dec:
            decoded = np.asarray(dec.convert("RGB"))
        return Coded(len(data), decoded, t1 - t0, time.perf_counter() - t1)

    return code


def _register_plugins() -> None:
    import pillow_heif
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    pillow_heif.register_heif_opener()


def _version_pillow(feature: str, library: str) -> Callable[[dict], str]:
    return lambda opts: f"{library} {features.version(feature)} (Pillow {Image.__version__})"


def _version_heif(opts: dict) -> str:
    import pillow_heif

    info = pillow_heif.libheif_info()
    return f"libheif {info['libheif']}, {info['encoders'].get('x265', 'no x265')} (pillow-heif {pillow_heif.__version__})"


def _version_jxl(opts: dict) -> str:
    from importlib.metadata import version

    return f"libjxl (pillow-jxl-plugin {version('pillow-jxl-plugin')})"


# --- Reference encoders run as external programs (VTM, HM, bpgenc) ---------
#
# Their command lines follow CompressAI's benchmark (compressai/utils/bench/
# codecs.py), which produced the published VTM, HM and BPG curves: 8-bit
# 4:4:4 input, in YCbCr (BT.601, full range, CompressAI's rgb2ycbcr) unless
# ``colour: rgb`` asks for GBR coding. Two differences, both on the measuring
# side: metrics compare the decoded RGB with the original RGB file (CompressAI
# compares with the original after its own YCbCr round trip), and the
# conversion back to RGB rounds (CompressAI truncates).

EXTERNAL_TIMEOUT_S = 3600


def _run_tool(cmd: list, codec: str, what: str) -> str:
    cmd = [str(c) for c in cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXTERNAL_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise ConfigError(f"anchors: {codec}: cannot run {cmd[0]}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise LicbenchError(f"anchors: {codec}: {cmd[0]} took over {EXTERNAL_TIMEOUT_S} s on {what}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LicbenchError(f"anchors: {codec}: {Path(cmd[0]).name} failed (exit {proc.returncode}) "
                            f"on {what}: {' | '.join(tail)}")
    return proc.stdout


def _rgb_to_planes(image: np.ndarray, colour: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) uint8 planes, YCbCr or GBR as the encoder expects."""
    planes = image.transpose(2, 0, 1)
    if colour == "rgb":
        return np.ascontiguousarray(planes)
    import torch
    from compressai.transforms.functional import rgb2ycbcr

    ycc = rgb2ycbcr(torch.from_numpy(planes.astype(np.float32) / 255)).numpy()
    return np.clip(np.round(ycc * 255), 0, 255).astype(np.uint8)


def _planes_to_rgb(planes: np.ndarray, colour: str) -> np.ndarray:
    if colour == "rgb":
        return np.ascontiguousarray(planes.transpose(1, 2, 0))
    import torch
    from compressai.transforms.functional import ycbcr2rgb

    rgb = ycbcr2rgb(torch.from_numpy(planes.astype(np.float32) / 255)).numpy()
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _reference_software(extra: list[str]) -> Callable:
    """VTM (EncoderApp/DecoderApp) or HM (TAppEncoder/TAppDecoder), all-intra, one frame."""

    def code(image: np.ndarray, qp: float, opts: dict, workdir: Path) -> Coded:
        colour = opts["colour"]
        h, w = image.shape[:2]
        src, bits, rec = workdir / "in.yuv", workdir / "out.bin", workdir / "rec.yuv"
        src.write_bytes(_rgb_to_planes(image, colour).tobytes())
        cmd = [opts["encoder"], "-c", opts["config"], "-i", src, "-b", bits, "-o", os.devnull,
               "-q", int(qp), "-wdt", w, "-hgt", h, "-fr", 1, "-f", 1,
               "--InputChromaFormat=444", "--InputBitDepth=8", *extra]
        if colour == "rgb":
            cmd += ["--InputColourSpaceConvert=RGBtoGBR", "--SNRInternalColourSpace=1",
                    "--OutputInternalColourSpace=0"]
        cmd += opts["extra_args"]
        what = f"QP {int(qp)}"
        t0 = time.perf_counter()
        _run_tool(cmd, opts["name"], what)
        t1 = time.perf_counter()
        cmd = [opts["decoder"], "-b", bits, "-o", rec, "-d", 8]
        if colour == "rgb":
            cmd.append("--OutputInternalColourSpace=GBRtoRGB")
        _run_tool(cmd, opts["name"], what)
        t2 = time.perf_counter()
        planes = np.fromfile(rec, dtype=np.uint8)
        if planes.size != 3 * h * w:
            raise LicbenchError(f"anchors: {opts['name']}: decoder wrote {planes.size} bytes, "
                                f"expected {3 * h * w} for {w}x{h} 4:4:4 8-bit")
        decoded = _planes_to_rgb(planes.reshape(3, h, w), colour)
        return Coded(bits.stat().st_size, decoded, t1 - t0, t2 - t1)

    return code


def _code_bpg(image: np.ndarray, qp: float, opts: dict, workdir: Path) -> Coded:
    """Fabrice Bellard's bpgenc/bpgdec: x265, 4:4:4, YCbCr, 8 bits (CompressAI's settings)."""
    src, bits, rec = workdir / "in.png", workdir / "out.bpg", workdir / "rec.png"
    Image.fromarray(image).save(src)
    what = f"QP {int(qp)}"
    t0 = time.perf_counter()
    _run_tool([opts["encoder"], "-o", bits, "-q", int(qp), "-f", "444", "-e", "x265",
               "-c", "ycbcr", "-b", "8", *opts["extra_args"], src], "bpg", what)
    t1 = time.perf_counter()
    _run_tool([opts["decoder"], "-o", rec, bits], "bpg", what)
    t2 = time.perf_counter()
    with Image.open(rec) as dec:
        decoded = np.asarray(dec.convert("RGB"))
    return Coded(bits.stat().st_size, decoded, t1 - t0, t2 - t1)


def _version_banner(label: str, needle: str) -> Callable[[dict], str]:
    """The line of the encoder's help text that names its version."""

    def version(opts: dict) -> str:
        try:
            proc = subprocess.run([str(opts["encoder"]), "--help"], capture_output=True,
                                  text=True, timeout=60)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        line = next((ln.strip() for ln in text.splitlines() if needle.lower() in ln.lower()), "")
        return f"{label}: {line or 'version unknown'} ({opts['encoder']})"

    return version


@dataclass(frozen=True)
class Coded:
    nbytes: int
    decoded: np.ndarray
    encode_seconds: float
    decode_seconds: float


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    code: Callable[[np.ndarray, float, dict, Path], Coded]
    version: Callable[[dict], str]
    setting: str  # what the sweep values mean
    # Keys of params.yaml anchors.binaries.<name> an external codec needs.
    needs: tuple[str, ...] = ()


CODECS = {
    c.name: c
    for c in (
        ClassicalCodec("jpeg", _through_pillow(_pillow_encoder("JPEG")),
                       _version_pillow("libjpeg_turbo", "libjpeg-turbo"), "quality"),
        ClassicalCodec("webp", _through_pillow(_pillow_encoder("WEBP")),
                       _version_pillow("webp", "libwebp"), "quality"),
        ClassicalCodec("jpeg2000", _through_pillow(_encode_jpeg2000),
                       _version_pillow("jpg_2000", "OpenJPEG"), "compression ratio"),
        ClassicalCodec("avif", _through_pillow(_pillow_encoder("AVIF", subsampling="4:4:4", speed=6)),
                       _version_pillow("avif", "libavif"), "quality"),
        ClassicalCodec("hevc444", _through_pillow(_pillow_encoder("HEIF", chroma=444)),
                       _version_heif, "quality"),
        ClassicalCodec("jpegxl", _through_pillow(_pillow_encoder("JXL")), _version_jxl, "quality"),
        ClassicalCodec("vtm", _reference_software(["--ConformanceWindowMode=1"]),
                       _version_banner("VTM", "version"), "QP", ("encoder", "decoder", "config")),
        ClassicalCodec("hm", _reference_software(["--SEIDecodedPictureHash", "--Level=5.1",
                                                  "--CUNoSplitIntraACT=0", "--ConformanceMode=1"]),
                       _version_banner("HM", "version"), "QP", ("encoder", "decoder", "config")),
        ClassicalCodec("bpg", _code_bpg, _version_banner("BPG", "version"), "QP",
                       ("encoder", "decoder")),
    )
}

def row_schema(metrics: list[str]) -> pa.Schema:
    return pa.schema(
        [("codec", pa.string()), ("setting", pa.float64()), ("image", pa.string()),
         ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int64()), ("bpp", pa.float64())]
        + [(c, pa.float64()) for c in (*columns(metrics), "encode_seconds", "decode_seconds")])


# The columns CompressAI's results layout names its own way.
RESULT_KEYS = {"psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb"}


def _options(codec: str, binaries: BinariesConfig | None) -> dict:
    """What a codec's functions receive: its name and its ``anchors.binaries`` entry."""
    return {"name": codec, **(binaries or BinariesConfig()).model_dump()}


def code_image(codec: str, setting: float, name: str, path: str,
               binaries: BinariesConfig | None = None, metrics: tuple[str, ...] = ("psnr",),
               weights: str | None = None) -> dict:
    """Encode one image with one codec setting, decode it, measure it with ``metrics``.

    ``binaries``: for an external codec, its entry of ``anchors.binaries``.
    """
    _register_plugins()
    image = load_rgb8(path).array
    with tempfile.TemporaryDirectory(prefix=f"licbench-{codec}-") as workdir:
        try:
            coded = CODECS[codec].code(image, setting, _options(codec, binaries), Path(workdir))
        except LicbenchError as exc:
            raise type(exc)(f"{name}: {exc}") from None
    decoded = coded.decoded
    h, w = image.shape[:2]
    if decoded.shape != image.shape:
        raise LicbenchError(f"anchors: {codec} at {setting} decoded {name} to {decoded.shape}, "
                            f"expected {image.shape}")
    return {"codec": codec, "setting": float(setting), "image": name, "width": w, "height": h,
            "bytes": coded.nbytes, "bpp": bpp_from_bytes(coded.nbytes, h, w),
            **measure(image, decoded, list(metrics), weights),
            "encode_seconds": coded.encode_seconds, "decode_seconds": coded.decode_seconds}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def available_codecs(cfg: AnchorsConfig) -> dict[str, BinariesConfig | None]:
    """The codecs of ``anchors.codecs`` that can run, each with its binaries.

    An external codec (VTM, HM, bpg) whose binaries params.yaml does not give is
    skipped with one log line; one whose binaries are given but missing is an error.
    """
    out = {}
    for codec in cfg.codecs:
        needs = CODECS[codec].needs
        binaries = cfg.binaries.get(codec)
        given = binaries.model_dump() if binaries is not None else {}
        if any(not given.get(k) for k in needs):
            log.warning("anchors: %s skipped: set anchors.binaries.%s.{%s} in params.yaml to run it",
                        codec, codec, ",".join(needs))
            continue
        for key in needs:
            if not Path(given[key]).is_file():
                raise cfg.error(f"binaries.{codec}.{key}", f"{given[key]} is not a file",
                                f"the path of {CODECS[codec].name}'s {key}")
        out[codec] = binaries
    return out


def run_anchors(images: list[tuple[str, Path]], cfg: AnchorsConfig, desc: str = "anchors",
                weights: str | None = None) -> pa.Table:
    """Every runnable codec of ``cfg`` at each of its settings on each image,
    ``anchors.workers`` images at a time; ``weights``: params.yaml's metric_weights."""
    check_weights(cfg.metrics, weights)
    runnable = available_codecs(cfg)
    metrics = tuple(cfg.metrics)
    jobs = [(codec, s, name, str(path), runnable[codec], metrics, weights)
            for codec, settings in cfg.codecs.items()
            if codec in runnable for s in settings for name, path in images]
    workers = cfg.workers or os.cpu_count() or 1
    # One step per codec x setting x image: VTM takes minutes per image.
    bar = progress(total=len(jobs), desc=desc, unit="image")
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            rows = []
            for job in jobs:
                bar.set_postfix_str(f"{job[0]} {job[1]:g}", refresh=False)
                rows.append(code_image(*job))
                bar.update()
        else:
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker)
            try:
                futures = [pool.submit(code_image, *job) for job in jobs]
                for future in as_completed(futures):
                    future.result()  # the first failure stops the stage
                    bar.update()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            rows = [f.result() for f in futures]
    return pa.Table.from_pylist(rows, schema=row_schema(list(cfg.metrics)))


def curves(table: pa.Table, binaries: dict[str, BinariesConfig | None] | None = None) -> dict[str, dict]:
    """Per codec, the mean over images at each setting, in CompressAI's results
    JSON layout (``{"name", "description", "results": {"bpp", "psnr-rgb", ...}}``;
    the metric columns it has no name for under their own), ordered by rate."""
    quality = [c for c in table.column_names
               if c not in ("codec", "setting", "image", "width", "height", "bytes", "bpp",
                            "encode_seconds", "decode_seconds")]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in table.to_pylist():
        groups[(row["codec"], row["setting"])].append(row)
    out: dict[str, dict] = {}
    for (codec, setting), rows in sorted(groups.items()):
        entry = out.setdefault(codec, {
            "name": codec,
            "description": f"{CODECS[codec].version(_options(codec, (binaries or {}).get(codec)))}; "
                           f"sweep over {CODECS[codec].setting}",
            "results": defaultdict(list),
        })
        res = entry["results"]
        res[CODECS[codec].setting.replace(" ", "_").lower()].append(setting)
        res["bpp"].append(float(np.mean([r["bpp"] for r in rows])))
        for column in quality:
            values = [r[column] for r in rows if r[column] is not None]
            res[RESULT_KEYS.get(column, column)].append(float(np.mean(values)) if values else None)
        res["encoding_time"].append(float(np.mean([r["encode_seconds"] for r in rows])))
        res["decoding_time"].append(float(np.mean([r["decode_seconds"] for r in rows])))
    for entry in out.values():
        res = entry["results"]
        order = np.argsort(res["bpp"])
        entry["results"] = {k: [v[i] for i in order] for k, v in res.items()}
    return out


def run_anchors_stage(cfg: AnchorsConfig, dataset: str, out_dir: str | Path,
                      data_root: str | Path = "data", metric_weights: str | None = None) -> dict:
    """What ``stages/anchors.py`` runs: every configured codec on one evaluation set."""
    from .data.datasets import evaluation_images

    out_dir = Path(out_dir)
    images = evaluation_images(dataset, data_root, cfg.max_images)
    log.info("%s: %d codecs x their settings on %d images, %d workers",
             dataset, len(cfg.codecs), len(images), cfg.workers or os.cpu_count() or 1)
    table = run_anchors(images, cfg, desc=f"anchors {dataset}", weights=metric_weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "per_image.parquet") as tmp:
        pq.write_table(table, tmp)
    result = curves(table, cfg.binaries)
    write_json_atomic(out_dir / "curves.json", result)
    return result
