"""The training set: the union of ``train.datasets``, for DVC and for the train stage.

DVC cannot give a matrix item (``train@<arch>-<lambda>``) one dependency per
set of a list, so the ``trainset`` stage stands between them: it depends on the
folder ``data/manifests`` (each set's manifest, from the datasets stage, and
each mask table's index, ``manifests/masks/<set>.json``, from the masks stage)
and writes ``data/trainset.parquet``, the union's manifest: a row per image of
``train.split`` and ``train.val_split`` of each set, and in its metadata each
set's manifest digest, whether it is pinned, and its mask table's index (or
none). Every train item depends on that one file. A change to any manifest or
index reruns the trainset stage (it reads a few Parquet files); the file it
writes has the same bytes unless the union changed, so DVC retrains nothing
when, say, an evaluation set is added or its masks are made again.

The train stage assembles the same union (:func:`assemble`) and, when
``data/trainset.parquet`` is there (under DVC it always is), refuses one that
differs: it trains on what DVC recorded. The resume digest
(``licbench.train.training_digest``) covers the union through the images and
partitions it hashes and the ``train`` settings, ``train.datasets`` among them.

Images whose shorter side is under ``train.crop`` are left out of training,
with one WARNING line saying how many (COCO has some), and validation takes
the first ``val_images`` images (by path) at least ``val_crop`` on each side;
a crop larger than every image is refused. Crops are then drawn across the union in proportion to pixels
(:class:`licbench.data.crops.RandomCrops`). The images are held in memory,
decoded: a union that does not fit (the sum of width x height x 3 bytes, times
the processes torchrun starts on this machine) is refused before loading.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import TrainConfig
from ..errors import ConfigError, MaskError
from ..fileio import atomic_path
from .datasets import MANIFEST_SCHEMA, manifest_digest, manifest_metadata, read_manifest
from .images import load_rgb8

log = logging.getLogger(__name__)

TRAINSET_FILE = "trainset.parquet"
META_KEY = b"licbench.trainset"


def trainset_path(data_root: str | Path) -> Path:
    return Path(data_root) / TRAINSET_FILE


def assemble(cfg: TrainConfig, data_root: str | Path) -> pa.Table:
    """The union's manifest (rows sorted by path) from each set's manifest and
    mask table index under ``data_root``."""
    from ..masks.table import read_index

    data_root = Path(data_root)
    splits = [cfg.split] + ([cfg.val_split] if cfg.val_split is not None else [])
    parts, sets = [], {}
    for name in cfg.datasets:
        manifest = read_manifest(data_root / "manifests" / f"{name}.parquet")
        rows = manifest.filter(pc.is_in(manifest["split"], pa.array(splits)))
        if not pc.any(pc.equal(rows["split"], cfg.split)).as_py():
            known = sorted(set(manifest["split"].to_pylist()))
            raise cfg.error("split", f"{name} has no image of split {cfg.split!r}", f"one of {known}")
        parts.append(rows.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA))
        sets[name] = {"manifest_sha256": manifest_digest(manifest),
                      "pinned": manifest_metadata(manifest).get("pinned", "true") == "true",
                      "masks": read_index(data_root, name)}
    table = pa.concat_tables(parts).sort_by("path")
    meta = {"datasets": list(cfg.datasets), "split": cfg.split, "val_split": cfg.val_split, "sets": sets}
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


def trainset_metadata(table: pa.Table) -> dict:
    return json.loads(table.schema.metadata[META_KEY])


def run_trainset_stage(cfg: TrainConfig, data_root: str | Path = "data") -> pa.Table:
    """What ``stages/trainset.py`` runs: write ``<data_root>/trainset.parquet``."""
    table = assemble(cfg, data_root)
    with atomic_path(trainset_path(data_root)) as tmp:
        pq.write_table(table, tmp)
    meta = trainset_metadata(table)
    unpinned = [n for n, s in meta["sets"].items() if not s["pinned"]]
    log.info("training set %s: %d images of %s%s%s", "+".join(cfg.datasets),
             sum(s == cfg.split for s in table["split"].to_pylist()), cfg.split,
             f", validation {cfg.val_split}" if cfg.val_split else "",
             f"; not pinned: {', '.join(unpinned)}" if unpinned else "")
    return table


class TrainingSet(NamedTuple):
    manifest: pa.Table  # the rows trained and validated on
    images: list[np.ndarray]
    val_images: list[np.ndarray] | None
    partitions: list[np.ndarray] | None
    masks_info: dict  # for MLflow: the mask tables' generator and settings digest


def _check_recorded(union: pa.Table, data_root: Path) -> None:
    path = trainset_path(data_root)
    if not path.is_file():
        return  # not under DVC (a direct call): nothing recorded to agree with
    recorded = pq.read_table(path)
    if manifest_digest(recorded) != manifest_digest(union) or \
            trainset_metadata(recorded) != trainset_metadata(union):
        raise ConfigError(f"{path}: made for another training set than params.yaml's train section "
                          "and the manifests give; run the trainset stage again (dvc repro)")


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB"


def _check_memory(cfg: TrainConfig, rows: list[dict], partitions: bool) -> None:
    import psutil

    pixels = sum(r["width"] * r["height"] for r in rows)
    need = pixels * (3 + (2 if partitions else 0))  # uint8 RGB, uint16 region ids
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun: each loads the union
    available = psutil.virtual_memory().available
    if need * processes > available:
        raise cfg.error("datasets", f"{'+'.join(cfg.datasets)} take {_size(need)} in memory decoded"
                        f"{f', {processes} processes {_size(need * processes)}' if processes > 1 else ''}"
                        f", {_size(available)} is available",
                        "sets that fit (the training images are held in memory, decoded)")


def _load(rows: list[dict], data_root: Path, what: str) -> list[np.ndarray]:
    images, conversions = [], Counter()
    for r in rows:
        loaded = load_rgb8(data_root / r["path"])
        images.append(loaded.array)
        if loaded.conversion:
            conversions[loaded.conversion] += 1
    for conversion, count in conversions.items():
        log.warning("%d %s image(s) converted: %s", count, what, conversion)
    return images


def _partitions(rows: list[dict], images: list[np.ndarray], meta: dict, data_root: Path,
                split: str) -> tuple[list[np.ndarray], dict]:
    """The region partition of each training image, from its set's mask table,
    which must be the one the union's index records."""
    from ..masks import load_masks

    tables, info = {}, {}
    for name, entry in meta["sets"].items():
        index = entry["masks"]
        if index is None or split not in index.get("splits", []):
            raise MaskError(f"{name} has no mask table of split {split!r}: add {name}: [{split}] to "
                            "masks.sets and run the masks stage")
        table = load_masks(data_root / "masks" / name)
        for key in ("settings_sha256", "manifest_sha256"):
            if table.metadata.get(key) != index[key]:
                raise MaskError(f"{table.path}: not the table its index records ({key}); run the "
                                "masks and trainset stages again (dvc repro)")
        if index["manifest_sha256"] != entry["manifest_sha256"]:
            raise MaskError(f"{table.path}: made for another manifest of {name}; run the masks stage again")
        tables[name] = table
        info[name] = (index["generator"], index["settings_sha256"])
    partitions = []
    for r, image in zip(rows, images):
        part = tables[r["path"].split("/", 1)[0]].partition(r["path"], image.shape)
        partitions.append(part.astype(np.uint16) if part.max() < 1 << 16 else part)
    generators = {g for g, _ in info.values()}
    digests = {d for _, d in info.values()}
    return partitions, {
        "masks_generator": generators.pop() if len(generators) == 1 else
        ",".join(f"{n}={g}" for n, (g, _) in info.items()),
        "masks_settings_sha256": digests.pop() if len(digests) == 1 else
        ",".join(f"{n}={d}" for n, (_, d) in info.items()),
    }


def load_training_set(cfg: TrainConfig, data_root: str | Path, partitions: bool) -> TrainingSet:
    """The train stage's data: the union's training images (those at least
    ``train.crop`` on each side), its first ``val_images`` validation images,
    and, with ``partitions``, each training image's region partition."""
    data_root = Path(data_root)
    union = assemble(cfg, data_root)
    _check_recorded(union, data_root)
    meta = trainset_metadata(union)
    rows = union.to_pylist()
    train = [r for r in rows if r["split"] == cfg.split]
    kept = [r for r in train if min(r["width"], r["height"]) >= cfg.crop]
    sets = "+".join(cfg.datasets)
    if not kept:
        largest = max(train, key=lambda r: min(r["width"], r["height"]))
        raise cfg.error("crop", f"{cfg.crop} is larger than every image of {sets} {cfg.split} "
                        f"(the largest: {largest['path']}, {largest['width']} x {largest['height']})",
                        f"at most {min(largest['width'], largest['height'])}")
    if len(kept) < len(train):
        small = min(train, key=lambda r: min(r["width"], r["height"]))
        log.warning("%d of %d training images of %s are smaller than the %d-pixel crop (the smallest: "
                    "%s, %d x %d); left out", len(train) - len(kept), len(train), sets, cfg.crop,
                    small["path"], small["width"], small["height"])
    val = []
    if cfg.val_split is not None:
        candidates = sorted((r for r in rows if r["split"] == cfg.val_split), key=lambda r: r["path"])
        large = [r for r in candidates if min(r["width"], r["height"]) >= cfg.val_crop]
        if candidates and not large:
            largest = max(candidates, key=lambda r: min(r["width"], r["height"]))
            raise cfg.error("val_crop", f"{cfg.val_crop} is larger than every image of {sets} "
                            f"{cfg.val_split} (the largest: {largest['path']}, {largest['width']} x "
                            f"{largest['height']})", f"at most {min(largest['width'], largest['height'])}")
        val = large[:cfg.val_images]
        skipped = sum(min(r["width"], r["height"]) < cfg.val_crop
                      for r in candidates[:candidates.index(val[-1]) + 1]) if val else 0
        if skipped:
            log.warning("%d validation image(s) of %s %s smaller than the %d-pixel validation crop "
                        "passed over", skipped, sets, cfg.val_split, cfg.val_crop)
    _check_memory(cfg, kept + val, partitions)
    images = _load(kept, data_root, "training")
    val_images = _load(val, data_root, "validation") if cfg.val_split is not None else None
    parts, masks_info = (_partitions(kept, images, meta, data_root, cfg.split) if partitions
                         else (None, {}))
    manifest = pa.Table.from_pylist(kept + val, schema=union.schema)
    return TrainingSet(manifest, images, val_images, parts, masks_info)
