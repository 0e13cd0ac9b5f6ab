"""The mask table: Parquet files a row per mask and a row per image.

``<out>/masks.parquet``: ``image`` (manifest path), ``mask_index`` (0 = the
largest), ``height``, ``width``, ``area``, ``bbox`` (x, y, w, h), ``predicted_iou``
and ``stability_score`` (SAM's; null for the classical fallback), ``counts``
(COCO uncompressed RLE, see :mod:`licbench.masks.rle`).
``<out>/images.parquet``: every image segmented, with its split, sha256, size,
mask count, covered fraction and seconds, so an image with no mask is still
known to be covered.

Both carry the same schema metadata: the manifest digest, the generator and its
settings (and their digest), and why a fallback was used.
``<out>/parts/<image>.parquet`` holds each image's rows as soon as they are
made (written atomically), so an interrupted run restarted skips finished
images; the two tables are assembled from the parts at the end.

``<data root>/manifests/masks/<set>.json``, the table's index: what it was made
from and with, and the sha256 of ``masks.parquet``; the same bytes whenever the
stage makes the same table. The train stage's training set is assembled from
the manifests and these indexes (licbench.data.trainset).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import MaskError
from ..fileio import atomic_path, sha256_file, write_json_atomic
from .generate import Mask
from .rle import partition_from_rles, decode_rle

MASK_SCHEMA = pa.schema([
    ("image", pa.string()),
    ("mask_index", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("area", pa.int64()),
    ("bbox", pa.list_(pa.int32(), 4)),
    ("predicted_iou", pa.float32()),
    ("stability_score", pa.float32()),
    ("counts", pa.list_(pa.int32())),
])
IMAGE_SCHEMA = pa.schema([
    ("image", pa.string()),
    ("split", pa.string()),
    ("sha256", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("masks", pa.int32()),
    ("covered_fraction", pa.float64()),
    ("seconds", pa.float64()),
])
META_KEY = b"licbench.masks"
MASKS_FILE, IMAGES_FILE, PARTS_DIR = "masks.parquet", "images.parquet", "parts"


def mask_rows(image: str, height: int, width: int, masks: list[Mask]) -> pa.Table:
    return pa.Table.from_pydict({
        "image": [image] * len(masks),
        "mask_index": list(range(len(masks))),
        "height": [height] * len(masks),
        "width": [width] * len(masks),
        "area": [m.area for m in masks],
        "bbox": [list(m.bbox) for m in masks],
        "predicted_iou": [m.predicted_iou for m in masks],
        "stability_score": [m.stability_score for m in masks],
        "counts": [m.counts.tolist() for m in masks],
    }, schema=MASK_SCHEMA)


def part_path(out_dir: Path, image: str) -> Path:
    return Path(out_dir) / PARTS_DIR / f"{image}.parquet"


def write_part(path: Path, rows: pa.Table, info: dict) -> None:
    """One image's mask rows, with its image row (``info``) in the metadata."""
    with atomic_path(path) as tmp:
        pq.write_table(rows.replace_schema_metadata({META_KEY: json.dumps(info)}), tmp)


def read_part(path: Path, settings_sha256: str, image_sha256: str) -> tuple[pa.Table, dict] | None:
    """A finished part made with these settings from this image, else None."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        info = json.loads(table.schema.metadata[META_KEY])
    except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError):
        return None
    if info.get("settings_sha256") != settings_sha256 or info.get("sha256") != image_sha256:
        return None
    if table.schema.remove_metadata() != MASK_SCHEMA:
        return None
    return table.replace_schema_metadata(None), info


def write_tables(out_dir: Path, parts: list[tuple[pa.Table, dict]], metadata: dict) -> None:
    """Assemble the parts (sorted by image) into masks.parquet and images.parquet."""
    parts = sorted(parts, key=lambda p: p[1]["image"])
    meta = {META_KEY: json.dumps(metadata, sort_keys=True)}
    masks = pa.concat_tables([p[0] for p in parts]) if parts else MASK_SCHEMA.empty_table()
    images = pa.Table.from_pylist([{k: p[1][k] for k in IMAGE_SCHEMA.names} for p in parts],
                                  schema=IMAGE_SCHEMA)
    out_dir = Path(out_dir)
    # images.parquet last: a reader checks both carry the same metadata.
    with atomic_path(out_dir / MASKS_FILE) as tmp:
        pq.write_table(masks.replace_schema_metadata(meta), tmp)
    with atomic_path(out_dir / IMAGES_FILE) as tmp:
        pq.write_table(images.replace_schema_metadata(meta), tmp)


def index_path(data_root: str | Path, dataset: str) -> Path:
    return Path(data_root) / "manifests" / "masks" / f"{dataset}.json"


INDEX_KEYS = ("dataset", "splits", "generator", "settings_sha256", "manifest_sha256")


def write_index(data_root: str | Path, dataset: str, out_dir: str | Path) -> dict:
    """The index of the table in ``out_dir`` (see the module's docstring)."""
    path = Path(out_dir) / MASKS_FILE
    meta = json.loads(pq.read_schema(path).metadata[META_KEY])  # the schema alone: no rows read
    index = {**{k: meta.get(k) for k in INDEX_KEYS}, "masks_sha256": sha256_file(path)}
    write_json_atomic(index_path(data_root, dataset), index)
    return index


def read_index(data_root: str | Path, dataset: str) -> dict | None:
    """The index of ``dataset``'s mask table, or None when it has none."""
    path = index_path(data_root, dataset)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise MaskError(f"{path}: not a mask table index; run the masks stage again") from None


def _read(path: Path, schema: pa.Schema) -> tuple[pa.Table, dict]:
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise MaskError(f"{path}: mask table not found; run the masks stage first") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise MaskError(f"{path}: not a readable Parquet mask table: {exc}") from None
    try:
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (KeyError, ValueError):
        raise MaskError(f"{path}: no licbench mask metadata; not made by the masks stage") from None
    missing = set(schema.names) - set(table.column_names)
    if missing:
        raise MaskError(f"{path}: lacks column(s) {sorted(missing)}")
    return table, meta


class MaskTable:
    """A set's masks, loaded once; ``partition(image)`` is cheap enough for a
    data loader (the RLE counts stay in one numpy array; a lookup and a decode
    per call). Picklable, so DataLoader workers can share it."""

    def __init__(self, out_dir: str | Path, manifest: str | Path | pa.Table | None = None):
        from ..data.datasets import manifest_digest, read_manifest

        out_dir = Path(out_dir)
        self.path = out_dir / MASKS_FILE
        table, self.metadata = _read(self.path, MASK_SCHEMA)
        images, image_meta = _read(out_dir / IMAGES_FILE, IMAGE_SCHEMA)
        if image_meta != self.metadata:
            raise MaskError(f"{out_dir}: {MASKS_FILE} and {IMAGES_FILE} come from different runs")
        if manifest is not None:
            where = manifest if isinstance(manifest, (str, Path)) else "the manifest"
            if not isinstance(manifest, pa.Table):
                manifest = read_manifest(manifest)
            digest = manifest_digest(manifest)
            if self.metadata.get("manifest_sha256") != digest:
                raise MaskError(
                    f"{self.path}: made for another manifest (sha256 "
                    f"{str(self.metadata.get('manifest_sha256'))[:12]}…, {where} is {digest[:12]}…); "
                    "run the masks stage again")
        self.images = {name: (int(h), int(w)) for name, h, w in zip(
            images["image"].to_pylist(), images["height"].to_pylist(), images["width"].to_pylist())}
        counts = table["counts"].combine_chunks()
        self._values = counts.values.to_numpy()
        self._offsets = counts.offsets.to_numpy()
        names = table["image"].to_numpy(zero_copy_only=False)
        # Rows are sorted by image: each image is one contiguous slice of rows.
        self._rows: dict[str, tuple[int, int]] = {}
        if len(names):
            starts = np.flatnonzero(np.concatenate(([True], names[1:] != names[:-1])))
            ends = np.concatenate((starts[1:], [len(names)]))
            self._rows = {names[s]: (int(s), int(e)) for s, e in zip(starts, ends)}

    def __len__(self) -> int:
        return len(self.images)

    def _size(self, image: str) -> tuple[int, int]:
        try:
            return self.images[image]
        except KeyError:
            raise MaskError(
                f"{self.path}: no masks for image {image!r} (the table covers {len(self.images)} "
                f"images of split(s) {', '.join(self.metadata.get('splits', []))})") from None

    def rles(self, image: str) -> list[np.ndarray]:
        self._size(image)
        start, end = self._rows.get(image, (0, 0))
        return [self._values[self._offsets[i]:self._offsets[i + 1]] for i in range(start, end)]

    def masks(self, image: str) -> list[np.ndarray]:
        height, width = self._size(image)
        return [decode_rle(c, height, width) for c in self.rles(image)]

    def partition(self, image: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """One region id per pixel (int32, ids 0..K-1); ``shape``: the image's
        (height, width) as loaded, checked against the table's."""
        height, width = self._size(image)
        if shape is not None and tuple(shape[:2]) != (height, width):
            raise MaskError(f"{self.path}: image {image!r} is {shape[0]}x{shape[1]}, "
                            f"its masks are {height}x{width}")
        try:
            return partition_from_rles(self.rles(image), height, width)
        except MaskError as exc:
            raise MaskError(f"{self.path}: image {image!r}: {exc}") from None


def load_masks(out_dir: str | Path, manifest: str | Path | pa.Table | None = None) -> MaskTable:
    """The mask table in ``out_dir``, checked against ``manifest`` when given."""
    return MaskTable(out_dir, manifest)
