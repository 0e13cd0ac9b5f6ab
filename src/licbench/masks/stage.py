"""The ``masks`` stage: segment a set's chosen splits, store the mask table,
draw overlays, log the run to MLflow."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import MasksConfig
from ..data.images import load_rgb8
from ..errors import MaskError
from ..fileio import atomic_path, write_json_atomic
from ..progress import progress
from ..tracking import Target
from .generate import Segmenter, fallback_segment, make_segmenter
from .rle import ones_indices
from .table import (IMAGES_FILE, MaskTable, mask_rows, part_path, read_part, write_index, write_part,
                    write_tables)

log = logging.getLogger(__name__)


def segment_one(image: str, path: str, split: str, sha256: str, segment, settings_sha256: str,
                out_dir: str) -> dict:
    """Segment one image (``segment(array, image)``) and write its part;
    return its image row."""
    array = load_rgb8(path).array
    height, width = array.shape[:2]
    t0 = time.perf_counter()
    masks = segment(array, image)
    seconds = time.perf_counter() - t0
    covered = np.zeros(height * width, dtype=bool)
    for m in masks:
        covered[ones_indices(m.counts)] = True
    info = {"image": image, "split": split, "sha256": sha256, "height": height, "width": width,
            "masks": len(masks), "covered_fraction": float(covered.mean()), "seconds": seconds,
            "settings_sha256": settings_sha256}
    write_part(part_path(Path(out_dir), image), mask_rows(image, height, width, masks), info)
    return info


def _fallback_job(job: tuple) -> dict:
    image, path, split, sha256, settings, digest, out_dir = job
    return segment_one(image, path, split, sha256, lambda a, _: fallback_segment(a, settings),
                       digest, out_dir)


def generate_masks(images: list[dict], segmenter: Segmenter, out_dir: str | Path,
                   metadata: dict, workers: int = 1) -> MaskTable:
    """Segment ``images`` (dicts: image, path, split, sha256) into ``out_dir``.

    Images whose part exists with the same settings and image hash are not
    segmented again. Each image's result depends only on the image and the
    settings, so the order and the number of workers change nothing.
    """
    out_dir = Path(out_dir)
    digest = segmenter.digest
    done, todo = [], []
    for im in images:
        part = read_part(part_path(out_dir, im["image"]), digest, im["sha256"])
        (done if part is not None else todo).append(part if part is not None else im)
    if done:
        log.info("%d of %d images already segmented with these settings; skipping them",
                 len(done), len(images))
    jobs = [(im["image"], str(im["path"]), im["split"], im["sha256"]) for im in todo]
    bar = progress(total=len(jobs), desc=f"masks ({segmenter.name})", unit="image")
    if workers > 1 and segmenter.parallel_safe and len(jobs) > 1:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        try:
            full = [j + (segmenter.settings, digest, str(out_dir)) for j in jobs]
            for _ in pool.map(_fallback_job, full, chunksize=2):
                bar.update()
        except BaseException:
            # Interrupted or failed: drop the queued images at once; the parts
            # written so far stay for the next run.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        for job in jobs:
            segment_one(*job, segmenter.masks_of, digest, str(out_dir))
            bar.update()
    bar.close()
    parts = [read_part(part_path(out_dir, im["image"]), digest, im["sha256"]) for im in images]
    if any(p is None for p in parts):
        raise MaskError(f"{out_dir}: a part vanished while the stage ran")
    write_tables(out_dir, parts, metadata | {"settings_sha256": digest})
    return MaskTable(out_dir)


def draw_overlay(image: np.ndarray, partition: np.ndarray) -> np.ndarray:
    """The image with region boundaries in red."""
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(partition, mode="inner")] = (255, 0, 0)
    return out


def select_images(manifest, splits: list[str], data_root: Path, max_images: int | None) -> list[dict]:
    rows = manifest.select(["path", "split", "sha256"]).to_pylist()
    out = []
    for split in splits:
        chosen = sorted((r for r in rows if r["split"] == split), key=lambda r: r["path"])
        if max_images:
            chosen = chosen[: int(max_images)]
        out += [{"image": r["path"], "path": data_root / r["path"], "split": split,
                 "sha256": r["sha256"]} for r in chosen]
    return out


def run_masks_stage(cfg: MasksConfig, dataset: str, out_dir: str | Path, summary_path: str | Path,
                    data_root: str | Path = "data", *, mirror: Path | None, mlflow_to: Target,
                    model=None, build=None) -> dict:
    """What ``stages/masks.py`` runs: masks for one set's configured splits,
    logged to MLflow (``mlflow_to``, a :class:`licbench.tracking.Target`), and the table's index
    (``<data_root>/manifests/masks/<set>.json``). ``mirror``: where a SAM
    checkpoint may be copied from (:func:`licbench.config.resolve_mirror`).

    ``model``, ``build``: see :func:`licbench.masks.generate.make_segmenter` (tests).
    """
    import mlflow

    from .. import tracking
    from ..data.datasets import manifest_digest, read_manifest

    if dataset not in cfg.sets:
        raise cfg.error("sets", f"no entry for {dataset!r}", f"{dataset}: [<splits>] to segment it")
    splits = list(cfg.sets[dataset])
    data_root, out_dir = Path(data_root), Path(out_dir)
    manifest = read_manifest(data_root / "manifests" / f"{dataset}.parquet")
    known = sorted(set(manifest["split"].to_pylist()))
    missing = [s for s in splits if s not in known]
    if missing:
        raise cfg.error(f"sets.{dataset}", f"{missing} not in the manifest", f"splits of {known}")
    images = select_images(manifest, splits, data_root, cfg.max_images)
    if cfg.generator == "coco-panoptic":
        from ..data.sources import get_source
        from .panoptic import make_panoptic_segmenter

        segmenter = make_panoptic_segmenter(get_source(dataset), data_root / dataset, splits)
    else:
        segmenter = make_segmenter(cfg, mirror=mirror, model=model, build=build)
    metadata = {
        "dataset": dataset, "splits": splits, "manifest_sha256": manifest_digest(manifest),
        "generator": segmenter.name, "requested_generator": segmenter.requested or segmenter.name,
        "fallback_reason": segmenter.fallback_reason, "settings": segmenter.settings,
        "rle": "COCO uncompressed counts, column-major, first run is zeros",
        "partition": "masks drawn largest first, uncovered 4-connected pixels as own regions",
    }
    if segmenter.name == "coco-panoptic":
        metadata["regions"] = "one per panoptic segment (category dropped), one of all void (id 0) pixels"
    workers = cfg.workers or os.cpu_count() or 1
    log.info("%s: %s masks for %d images of split(s) %s", dataset, segmenter.name, len(images),
             ", ".join(splits))
    table = generate_masks(images, segmenter, out_dir, metadata, workers)
    index = write_index(data_root, dataset, out_dir)

    info = _image_rows(out_dir)
    regions = []
    overlay_dir = out_dir / "overlays"
    for old in overlay_dir.glob("*.png"):  # a persisted folder: drop the last run's
        old.unlink()
    overlays = []
    for im in images[: cfg.overlays]:
        array = load_rgb8(im["path"]).array
        part = table.partition(im["image"], array.shape)
        regions.append(int(part.max()) + 1)
        png = overlay_dir / (im["image"].replace("/", "__").rsplit(".", 1)[0] + ".png")
        with atomic_path(png) as tmp:
            Image.fromarray(draw_overlay(array, part)).save(tmp, format="PNG")
        overlays.append(png)
    summary = {
        "images": len(info),
        "masks_per_image": float(np.mean([r["masks"] for r in info])) if info else 0.0,
        "covered_fraction": float(np.mean([r["covered_fraction"] for r in info])) if info else 0.0,
        "seconds_per_image": float(np.mean([r["seconds"] for r in info])) if info else 0.0,
        "fallback": int(bool(segmenter.fallback_reason)),
    }
    write_json_atomic(summary_path, summary)

    with tracking.stage_run(mlflow_to, stage="masks", item=f"masks-{dataset}",
                            key=tracking.run_key(table=index["masks_sha256"], overlays=cfg.overlays),
                            device=segmenter.settings.get("device"), manifest_sha256=metadata["manifest_sha256"],
                            tags={"licbench.dataset": dataset}):
        mlflow.log_params({
            "dataset": dataset, "splits": ",".join(splits), "generator": segmenter.name,
            "requested_generator": metadata["requested_generator"],
            "fallback_reason": segmenter.fallback_reason[:500],
            "settings_sha256": segmenter.digest,
            **{f"setting.{k}": v for k, v in segmenter.settings.items()},
        })
        mlflow.log_metrics({k: v for k, v in summary.items() if k != "images"}
                           | {"images": summary["images"],
                              "regions_per_image_overlays": float(np.mean(regions)) if regions else 0.0})
        for png in overlays:
            mlflow.log_artifact(str(png), artifact_path="overlays")
    return summary


def _image_rows(out_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(out_dir) / IMAGES_FILE).to_pylist()
