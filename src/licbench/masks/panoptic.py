"""COCO's panoptic annotations as class-agnostic regions (``masks.generator: coco-panoptic``).

SegPIC's authors trained with these: their loader reads each image's panoptic
PNG and makes one region per distinct colour (``mask_rgb2gray``:
``torch.unique`` over the PNG's pixels, GityuxiLiu/SegPIC-for-Image-Compression
``compressai/datasets/utils.py``), the category of each segment unused.

A panoptic PNG codes each pixel's segment id in its colour, ``id = R + 256 G +
256^2 B`` (panopticapi's ``rgb2id``); the split's JSON lists each image's
segments (``segments_info``: id, category, area, bbox, iscrowd). Here each
segment becomes one mask, its category and crowd flag dropped, and the pixels
of no segment (id 0: COCO's void, unlabelled or ambiguous) become one mask
together, as in the authors' loader, where all of them are one colour and so
one region, connected or not. Every pixel is thus covered and the partition
(:mod:`licbench.masks.rle`) is exactly the PNG's segments plus the void.

The PNG is checked against its JSON before it is used: its size is the
image's, each id in it is 0 or a listed segment, and each listed segment
covers exactly its listed area; anything else is a :class:`MaskError` naming
the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MaskError
from ..fileio import sha256_file
from .generate import Mask, Segmenter, canonical_order, label_map_masks

NAME = "coco-panoptic"
FORMAT_VERSION = 1


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG's H x W x 3 colours (panopticapi's ``rgb2id``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def load_annotations(json_path: Path) -> dict[str, tuple[str, list[dict]]]:
    """Image file name (``000000000009.jpg``) -> (its PNG's file name, its
    segments_info), from one split's panoptic JSON."""
    try:
        data = json.loads(Path(json_path).read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        return {names[a["image_id"]]: (a["file_name"], a["segments_info"]) for a in data["annotations"]}
    except FileNotFoundError:
        raise MaskError(f"{json_path}: no such file; run the datasets stage first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise MaskError(f"{json_path}: not a COCO panoptic annotation file ({type(exc).__name__}: "
                        f"{exc})") from None


def panoptic_masks(png: Path, segments: list[dict], shape: tuple[int, int]) -> list[Mask]:
    """One mask per segment of ``png`` and one of its void pixels (when there
    are any), largest first; ``shape``: the image's (height, width)."""
    try:
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise MaskError(f"{png}: no such file") from None
    except (OSError, ValueError) as exc:
        raise MaskError(f"{png}: unreadable panoptic PNG: {exc}") from None
    if rgb.shape[:2] != tuple(shape[:2]):
        raise MaskError(f"{png}: {rgb.shape[0]}x{rgb.shape[1]}, its image is {shape[0]}x{shape[1]}")
    ids = rgb_to_id(rgb)
    present, areas = np.unique(ids, return_counts=True)
    listed = {int(s["id"]): int(s["area"]) for s in segments}
    stray = [int(i) for i in present if i and int(i) not in listed]
    if stray:
        raise MaskError(f"{png}: segment id(s) {stray[:5]} are in no segments_info of its JSON")
    found = dict(zip(present.tolist(), areas.tolist()))
    wrong = [(i, a, found.get(i, 0)) for i, a in listed.items() if found.get(i, 0) != a]
    if wrong:
        i, a, n = wrong[0]
        raise MaskError(f"{png}: segment {i} has {n} pixels, its JSON says {a}"
                        + (f" ({len(wrong) - 1} more segments differ)" if len(wrong) > 1 else ""))
    # label_map_masks gives one mask per distinct id, void (0) included.
    return canonical_order(label_map_masks(ids))


def make_panoptic_segmenter(source, set_dir: Path, splits: list[str]) -> Segmenter:
    """The Segmenter of ``masks.generator: coco-panoptic`` for ``splits`` of
    ``source`` (a DatasetSource with ``panoptic`` annotations) in ``set_dir``.
    Its settings digest covers each split's JSON (its sha256): new annotations
    make new masks."""
    lacking = [s for s in splits if s not in source.panoptic]
    if lacking:
        raise MaskError(f"{source.name}: no panoptic annotations of split(s) {', '.join(lacking)}")
    tables, jsons = {}, {}
    for split in splits:
        json_rel, png_dir = source.panoptic[split]
        jsons[split] = sha256_file(set_dir / json_rel) if (set_dir / json_rel).is_file() else None
        tables[split] = (load_annotations(set_dir / json_rel), set_dir / png_dir)

    def segment(image: np.ndarray, name: str) -> list[Mask]:
        split = source.split_of(name.split("/", 1)[1])
        annotations, png_dir = tables[split]
        file_name = Path(name).name
        if file_name not in annotations:
            raise MaskError(f"{set_dir / source.panoptic[split][0]}: no annotation of {file_name}")
        png, segments = annotations[file_name]
        return panoptic_masks(png_dir / png, segments, image.shape[:2])

    settings = {"format": FORMAT_VERSION, "annotations_sha256": jsons}
    return Segmenter(name=NAME, settings=settings, segment=None, annotated=segment)
