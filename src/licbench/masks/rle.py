"""Run-length encoded masks and the partition a training loader needs.

RLE: COCO's uncompressed format. The mask is read in column-major (Fortran)
order, top to bottom then left to right, and stored as alternating run
lengths starting with a run of zeros (0 when the first pixel is set). The
counts sum to ``height * width``. ``encode_rle`` / ``decode_rle`` are exact
inverses; they are what pycocotools' ``frPyObjects`` / ``decode`` use before
its string compression.

Partition: SAM's masks overlap and leave holes. ``partition_from_rles``
flattens them into one region id per pixel: masks are drawn largest first, so
a smaller mask stays visible over a larger one (SAM's own display order);
every maximal 4-connected set of pixels no mask covers becomes a region of its
own; ids are then renumbered to 0..K-1 (masks in drawing order, then the
leftover regions in raster order). A mask hidden entirely by smaller ones has
no region. Everything is vectorised numpy: one pass over each mask's pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import MaskError


def encode_rle(mask: np.ndarray) -> np.ndarray:
    """COCO uncompressed counts (int32) of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise MaskError(f"a mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(1, np.int32)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int32)


def _check_counts(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != height * width:
        raise MaskError(
            f"RLE counts do not describe a {height}x{width} mask "
            f"(sum {int(counts.sum()) if counts.size else 0}, expected {height * width})"
        )
    return counts


def ones_indices(counts: np.ndarray) -> np.ndarray:
    """Column-major flat indices of the set pixels of an RLE (no checks)."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    lengths = counts[1::2]
    starts = (ends - counts)[1::2]
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    # Each run's indices are start + 0..length-1: one arange, shifted per run.
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def decode_rle(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """The H x W boolean mask of COCO uncompressed ``counts``."""
    counts = _check_counts(counts, height, width)
    flat = np.zeros(height * width, dtype=bool)
    flat[ones_indices(counts)] = True
    return flat.reshape(width, height).T


def rle_area(counts: np.ndarray) -> int:
    return int(np.asarray(counts, dtype=np.int64)[1::2].sum())


def relabel_contiguous(partition: np.ndarray) -> np.ndarray:
    """Renumber region ids to 0..K-1, keeping their order."""
    partition = np.asarray(partition)
    if partition.size == 0:
        return partition.astype(np.int32)
    used = np.zeros(int(partition.max()) + 1, dtype=bool)
    used[partition.ravel()] = True
    remap = (np.cumsum(used) - 1).astype(np.int32)
    return remap[partition]


def partition_from_rles(rles: Sequence[np.ndarray], height: int, width: int,
                        check: bool = True) -> np.ndarray:
    """One region id per pixel (int32, H x W, ids 0..K-1); see the module doc."""
    flat = np.full(height * width, -1, dtype=np.int32)
    if check:
        rles = [_check_counts(c, height, width) for c in rles]
    areas = np.array([rle_area(c) for c in rles], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    for label, i in enumerate(order):
        # Within one mask the indices are distinct, so the assignment is well
        # defined; later (smaller) masks overwrite earlier ones.
        flat[ones_indices(rles[i])] = label
    part = flat.reshape(width, height).T
    uncovered = part < 0
    if uncovered.any():
        components, _ = ndimage.label(uncovered)
        part = np.where(uncovered, components - 1 + len(rles), part)
    return np.ascontiguousarray(relabel_contiguous(part), dtype=np.int32)


def partition_from_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    """``partition_from_rles`` for boolean masks of one shape."""
    if not len(masks):
        raise MaskError("partition_from_masks needs at least one mask (or use partition_from_rles)")
    height, width = masks[0].shape
    return partition_from_rles([encode_rle(m) for m in masks], height, width, check=False)


def crop_flip(image: np.ndarray, partition: np.ndarray, top: int, left: int,
              height: int, width: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The same crop (and horizontal flip) of an image and its partition, with
    the partition's ids renumbered to 0..K-1 (regions outside the crop vanish)."""
    if image.shape[:2] != partition.shape:
        raise MaskError(f"image {image.shape[:2]} and partition {partition.shape} differ in size")
    if top < 0 or left < 0 or top + height > partition.shape[0] or left + width > partition.shape[1]:
        raise MaskError(f"crop {height}x{width} at ({top}, {left}) leaves the {partition.shape} image")
    im = image[top:top + height, left:left + width]
    part = partition[top:top + height, left:left + width]
    if flip:
        im, part = im[:, ::-1], part[:, ::-1]
    return np.ascontiguousarray(im), np.ascontiguousarray(relabel_contiguous(part), dtype=np.int32)
