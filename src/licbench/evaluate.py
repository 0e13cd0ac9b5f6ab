"""The ``evaluate`` stage: real bitstream files, decoded back, measured.

For each image: compress with the model's entropy coder, write the container
file, read it back from disk, decode, crop the padding, round to 8 bits, and
measure it with ``evaluate.metrics`` (licbench.metrics). Two rates are kept per
image: ``bpp``, every byte of the file, container header included (what our
files cost, and what classical codecs' files are counted by), and
``bpp_stream``, the entropy-coded strings alone (what CompressAI's published
curves count); they differ by the header's size. The summary adds the model's
complexity (licbench.complexity) and the device the times were measured on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .coding.codec import compress_image, decompress_image, pad_to_multiple, to_tensor
from .coding.container import read_bitstream, write_bitstream
from .complexity import count_macs, parameter_counts
from .device import device_name
from .config import EvaluateConfig, resolve_device
from .data.datasets import evaluation_images, manifest_digest, read_manifest
from .data.images import load_rgb8
from .fileio import atomic_path, write_json_atomic
from .metrics import METRICS, bpp_from_bytes, bpp_from_likelihoods, check_weights, columns, measure
from .models import Checkpoint, get_architecture, load_checkpoint
from .progress import progress
from .tracking import Target

log = logging.getLogger(__name__)

RATE_COLUMNS = ("bpp", "bpp_stream", "bpp_estimated")
TIME_COLUMNS = ("encode_seconds", "decode_seconds")


def row_schema(metrics: list[str]) -> pa.Schema:
    """The columns of per_image.parquet: the image, its rates, one column per
    metric column of ``metrics``, the times."""
    return pa.schema(
        [("image", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
         ("conversion", pa.string()), ("bitstream", pa.string()),
         ("bytes", pa.int64()), ("stream_bytes", pa.int64())]
        + [(c, pa.float64()) for c in (*RATE_COLUMNS, *columns(metrics), *TIME_COLUMNS)])


@torch.no_grad()
def estimated_bpp(ckpt: Checkpoint, image: np.ndarray) -> float:
    """The rate the entropy model predicts for this image (eval-mode forward pass)."""
    spec = get_architecture(ckpt.arch)
    device = next(ckpt.model.parameters()).device
    out = ckpt.model(pad_to_multiple(to_tensor(image, device), spec.pad_multiple))
    return bpp_from_likelihoods(out["likelihoods"], image.shape[0] * image.shape[1])


def evaluate_image(ckpt: Checkpoint, image_path: Path, bitstream_path: Path, *,
                   metrics: list[str], weights: str | None = None) -> dict:
    loaded = load_rgb8(image_path)
    image = loaded.array
    t0 = time.perf_counter()
    bs = compress_image(ckpt, image)
    nbytes = write_bitstream(bitstream_path, bs)
    t1 = time.perf_counter()
    decoded = decompress_image(ckpt, read_bitstream(bitstream_path), str(bitstream_path))
    t2 = time.perf_counter()
    h, w = image.shape[:2]
    stream_bytes = sum(len(s) for s in bs.streams)
    return {
        "width": w,
        "height": h,
        "conversion": loaded.conversion,
        "bytes": nbytes,
        "stream_bytes": stream_bytes,
        "bpp": bpp_from_bytes(nbytes, h, w),
        "bpp_stream": bpp_from_bytes(stream_bytes, h, w),
        "bpp_estimated": estimated_bpp(ckpt, image),
        **measure(image, decoded, list(metrics), weights),
        "encode_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
    }


def model_complexity(ckpt: Checkpoint, image: np.ndarray) -> dict:
    """Parameters, and multiply-accumulates per pixel (thousands) of one real
    encode and decode of ``image``."""
    pixels = image.shape[0] * image.shape[1]
    enc, bs = count_macs(lambda: compress_image(ckpt, image))
    dec, _ = count_macs(lambda: decompress_image(ckpt, bs))
    return {**parameter_counts(ckpt.model), "kmac_per_pixel_encoder": enc / pixels / 1e3,
            "kmac_per_pixel_decoder": dec / pixels / 1e3,
            "measured_on": f"{image.shape[1]}x{image.shape[0]}"}


def summarize(rows: list[dict], metrics: list[str]) -> dict:
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "images": len(rows),
        **{k: mean(k) for k in (*RATE_COLUMNS, *columns(list(metrics)), *TIME_COLUMNS)},
    }


def evaluate_checkpoint(
    ckpt: Checkpoint,
    image_paths: list[tuple[str, Path]],
    out_dir: str | Path,
    *,
    metrics: list[str],
    weights: str | None = None,
) -> tuple[pa.Table, dict]:
    """Code every (name, path) image; write bitstreams and per_image.parquet in out_dir.

    ``name`` is the manifest path (``<set>/<file>``), recorded in the rows.
    """
    out_dir = Path(out_dir)
    metrics = list(metrics)
    check_weights(metrics, weights)
    rows = []
    for name, path in progress(image_paths, desc=f"evaluate {ckpt.key}", unit="image"):
        # "kodak/kodim01.png" -> bitstreams/kodim01.lic; subfolders of the set are kept.
        inside_set = Path(*Path(name).parts[1:]) if len(Path(name).parts) > 1 else Path(name)
        bitstream = out_dir / "bitstreams" / inside_set.with_suffix(".lic")
        row = evaluate_image(ckpt, path, bitstream, metrics=metrics, weights=weights)
        rows.append({"image": name, "bitstream": bitstream.relative_to(out_dir).as_posix(), **row})
    table = pa.Table.from_pylist(rows, schema=row_schema(metrics))
    with atomic_path(out_dir / "per_image.parquet") as tmp:
        pq.write_table(table, tmp)
    return table, summarize(rows, metrics)


def log_evaluation(to: Target, summary: dict, cfg: EvaluateConfig, per_image: Path) -> str:
    """Log one model's evaluation on one set as an MLflow run of its own (``to``:
    a :class:`licbench.tracking.Target`), keyed by the weights, the set (its
    manifest) and the evaluation settings: rerunning the same evaluation updates
    its run, another setting adds one. Linked to the training run that logged
    these weights, when there is one. Returns the run id."""
    import mlflow

    from . import tracking

    settings = {"max_images": cfg.max_images, "metrics": list(cfg.metrics), "device": cfg.device,
                "metric_weights": summary.get("metric_weights_sha256")}
    key = tracking.run_key(weights=summary["weights_sha256"], dataset=summary["dataset"],
                           manifest=summary["manifest_sha256"], settings=settings)
    experiment_id = tracking.use_experiment(to.experiment)
    train_run = tracking.find_model_run(experiment_id, summary["weights_sha256"])
    tags = {tracking.TAG_MODEL_KEY: summary["model"], tracking.TAG_WEIGHTS: summary["weights_sha256"],
            "licbench.dataset": summary["dataset"]}
    if train_run is None:
        log.warning("no MLflow training run logged these weights; the evaluation run links to none")
    else:
        tags[tracking.TAG_TRAIN_RUN] = train_run
        tags["mlflow.note.content"] = (f"{summary['model']} on {summary['dataset']}: "
                                       f"[training run](#/experiments/{experiment_id}/runs/{train_run})")
    with tracking.stage_run(to, stage="evaluate", item=f"{summary['model']}@{summary['dataset']}", key=key,
                            device=summary["device"], manifest_sha256=summary["manifest_sha256"],
                            tags=tags) as (run, _):
        mlflow.log_params({"arch": summary["arch"], "lambda": summary["lambda"],
                           "dataset": summary["dataset"],
                           **{f"evaluate.{k}": v for k, v in settings.items() if k != "metric_weights"}})
        mlflow.log_metrics({k: float(v) for k, v in summary.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "lambda"})
        # The model's cost: its parameters and operations do not depend on the
        # set (kMAC/pixel barely: padding); the times are this set's, on this device.
        mlflow.log_metrics({f"complexity/{k}": float(v) for k, v in summary["complexity"].items()
                            if isinstance(v, (int, float))})
        mlflow.log_artifact(str(per_image), artifact_path=f"eval/{summary['dataset']}")
        return run.info.run_id


def run_evaluate_stage(
    cfg: EvaluateConfig,
    checkpoint_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    summary_path: str | Path,
    data_root: str | Path = "data",
    *,
    mlflow_to: Target,
    metric_weights: str | None = None,
) -> dict:
    """What ``stages/evaluate.py`` runs: evaluate one model on one set, log to
    MLflow (``mlflow_to``, a :class:`licbench.tracking.Target`)."""
    device = resolve_device(cfg)
    weight_hashes = check_weights(cfg.metrics, metric_weights)
    ckpt = load_checkpoint(checkpoint_path, device=device)
    images = evaluation_images(dataset, data_root, cfg.max_images)
    table, summary = evaluate_checkpoint(ckpt, images, out_dir, metrics=cfg.metrics,
                                         weights=metric_weights)
    complexity = model_complexity(ckpt, load_rgb8(images[0][1]).array)
    summary = {"dataset": dataset, "model": ckpt.key, "arch": ckpt.arch, "lambda": ckpt.lmbda,
               "weights_sha256": ckpt.weights_sha256,
               "manifest_sha256": manifest_digest(read_manifest(Path(data_root) / "manifests" / f"{dataset}.parquet")),
               **summary,
               "device": device_name(device), "complexity": complexity,
               "metrics": {m: METRICS[m].version() for m in cfg.metrics},
               **({"metric_weights_sha256": weight_hashes} if weight_hashes else {})}

    log_evaluation(mlflow_to, summary, cfg, Path(out_dir) / "per_image.parquet")
    write_json_atomic(summary_path, summary)
    log.info("%s on %s: %.4f bpp, %.2f dB PSNR", ckpt.key, dataset, summary["bpp"], summary["psnr"])
    return summary
