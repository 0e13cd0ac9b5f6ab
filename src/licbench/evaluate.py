"""The ``evaluate`` stage: real bitstream files, decoded back, measured.

For each image: compress with the model's entropy coder, write the container
file, read it back from disk, decode, crop the padding, round to 8 bits.
bpp counts every byte of the file, header included.
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
from .config import EvaluateConfig, resolve_device
from .data.datasets import evaluation_images
from .data.images import load_rgb8
from .fileio import atomic_path, write_json_atomic
from .metrics import bpp_from_bytes, bpp_from_likelihoods, ms_ssim, psnr
from .models import Checkpoint, get_architecture, load_checkpoint
from .progress import progress

log = logging.getLogger(__name__)

ROW_SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("conversion", pa.string()),
        ("bitstream", pa.string()),
        ("bytes", pa.int64()),
        ("bpp", pa.float64()),
        ("bpp_estimated", pa.float64()),
        ("psnr", pa.float64()),
        ("ms_ssim", pa.float64()),
        ("encode_seconds", pa.float64()),
        ("decode_seconds", pa.float64()),
    ]
)


@torch.no_grad()
def estimated_bpp(ckpt: Checkpoint, image: np.ndarray) -> float:
    """The rate the entropy model predicts for this image (eval-mode forward pass)."""
    spec = get_architecture(ckpt.arch)
    device = next(ckpt.model.parameters()).device
    out = ckpt.model(pad_to_multiple(to_tensor(image, device), spec.pad_multiple))
    return bpp_from_likelihoods(out["likelihoods"], image.shape[0] * image.shape[1])


def evaluate_image(ckpt: Checkpoint, image_path: Path, bitstream_path: Path) -> dict:
    loaded = load_rgb8(image_path)
    image = loaded.array
    t0 = time.perf_counter()
    nbytes = write_bitstream(bitstream_path, compress_image(ckpt, image))
    t1 = time.perf_counter()
    decoded = decompress_image(ckpt, read_bitstream(bitstream_path), str(bitstream_path))
    t2 = time.perf_counter()
    h, w = image.shape[:2]
    return {
        "width": w,
        "height": h,
        "conversion": loaded.conversion,
        "bytes": nbytes,
        "bpp": bpp_from_bytes(nbytes, h, w),
        "bpp_estimated": estimated_bpp(ckpt, image),
        "psnr": psnr(image, decoded),
        "ms_ssim": ms_ssim(image, decoded),
        "encode_seconds": t1 - t0,
        "decode_seconds": t2 - t1,
    }


def summarize(rows: list[dict]) -> dict:
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "images": len(rows),
        **{k: mean(k) for k in ("bpp", "bpp_estimated", "psnr", "ms_ssim",
                                "encode_seconds", "decode_seconds")},
    }


def evaluate_checkpoint(
    ckpt: Checkpoint,
    image_paths: list[tuple[str, Path]],
    out_dir: str | Path,
) -> tuple[pa.Table, dict]:
    """Code every (name, path) image; write bitstreams and per_image.parquet in out_dir.

    ``name`` is the manifest path (``<set>/<file>``), recorded in the rows.
    """
    out_dir = Path(out_dir)
    rows = []
    for name, path in progress(image_paths, desc=f"evaluate {ckpt.key}", unit="image"):
        # "kodak/kodim01.png" -> bitstreams/kodim01.lic; subfolders of the set are kept.
        inside_set = Path(*Path(name).parts[1:]) if len(Path(name).parts) > 1 else Path(name)
        bitstream = out_dir / "bitstreams" / inside_set.with_suffix(".lic")
        row = evaluate_image(ckpt, path, bitstream)
        rows.append({"image": name, "bitstream": bitstream.relative_to(out_dir).as_posix(), **row})
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    with atomic_path(out_dir / "per_image.parquet") as tmp:
        pq.write_table(table, tmp)
    return table, summarize(rows)


def log_evaluation(experiment: str, summary: dict, config: dict, per_image: Path) -> str:
    """Log one model's evaluation on one set into the model's MLflow run (found by
    its weights' hash; a new run if training logged none). Returns the run id."""
    import mlflow

    from . import tracking

    experiment_id = tracking.use_experiment(experiment)
    run_id = tracking.find_model_run(experiment_id, summary["weights_sha256"])
    if run_id is None:
        log.warning("no MLflow run logged these weights; starting one for the evaluation")
    dataset = summary["dataset"]
    with tracking.start_run(run_id=run_id, experiment_id=experiment_id, run_name=summary["model"]) as run:
        if run_id is None:
            mlflow.set_tags({tracking.TAG_MODEL_KEY: summary["model"],
                             tracking.TAG_WEIGHTS: summary["weights_sha256"]})
            mlflow.log_params({"arch": summary["arch"], **config, "lambda": summary["lambda"]})
        mlflow.log_metrics({f"{dataset}/{k}": v for k, v in summary.items()
                            if isinstance(v, float) and k != "lambda"})
        mlflow.log_artifact(str(per_image), artifact_path=f"eval/{dataset}")
        return run.info.run_id


def run_evaluate_stage(
    cfg: EvaluateConfig,
    checkpoint_path: str | Path,
    dataset: str,
    out_dir: str | Path,
    summary_path: str | Path,
    data_root: str | Path = "data",
    *,
    experiment: str,
) -> dict:
    """What ``stages/evaluate.py`` runs: evaluate one model on one set, log to
    the MLflow ``experiment``."""
    ckpt = load_checkpoint(checkpoint_path, device=resolve_device(cfg))
    images = evaluation_images(dataset, data_root, cfg.max_images)
    table, summary = evaluate_checkpoint(ckpt, images, out_dir)
    summary = {"dataset": dataset, "model": ckpt.key, "arch": ckpt.arch, "lambda": ckpt.lmbda,
               "weights_sha256": ckpt.weights_sha256, **summary}

    log_evaluation(experiment, summary, ckpt.config,
                   Path(out_dir) / "per_image.parquet")
    write_json_atomic(summary_path, summary)
    log.info("%s on %s: %.4f bpp, %.2f dB PSNR", ckpt.key, dataset, summary["bpp"], summary["psnr"])
    return summary
