"""Class-agnostic region masks: Segment Anything, or a classical fallback.

``make_segmenter`` turns params.yaml's ``masks`` section into a
:class:`Segmenter`: SAM's ``SamAutomaticMaskGenerator`` (weights from the
official checkpoint, fetched and verified like the datasets, or an
already-built model), or scikit-image's Felzenszwalb or SLIC when asked to, or
when SAM's checkpoint cannot be had and ``fallback_when_unavailable`` is set.

Each image's masks depend only on the image and the settings: SAM's generator
and both classical segmenters are deterministic (no random draws), and images
are segmented one at a time, so neither order nor batching changes a result
(on CUDA, up to the GPU's floating-point non-determinism).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..config import FallbackConfig, MasksConfig, SamConfig, resolve_device
from ..digests import weights_digest
from ..errors import CheckpointError, ConfigError, DownloadError
from ..fileio import load_tensors
from .rle import encode_rle

log = logging.getLogger(__name__)

# The official checkpoints (github.com/facebookresearch/segment-anything,
# "Model Checkpoints"): URL, sha256, bytes.
OFFICIAL_CHECKPOINTS = {
    "vit_b": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}

FORMAT_VERSION = 1


@dataclass
class Mask:
    counts: np.ndarray  # COCO uncompressed RLE (see rle.py)
    area: int
    bbox: tuple[int, int, int, int]  # x, y, width, height (COCO)
    predicted_iou: float | None = None
    stability_score: float | None = None


@dataclass
class Segmenter:
    """What segments an image, and every setting its result depends on.

    ``segment(image)`` from the pixels alone (SAM, the fallback), or
    ``annotated(image, name)`` from annotations of the image of that manifest
    path (COCO's panoptic PNGs, :mod:`licbench.masks.panoptic`)."""

    name: str  # "sam-vit_b", "felzenszwalb" / "slic", "coco-panoptic"
    settings: dict  # goes into the settings digest and the table's metadata
    segment: Callable[[np.ndarray], list[Mask]] | None
    requested: str = ""  # the generator params.yaml asked for
    fallback_reason: str = ""
    parallel_safe: bool = False  # picklable and CPU-only: may run in worker processes
    annotated: Callable[[np.ndarray, str], list[Mask]] | None = None

    def masks_of(self, image: np.ndarray, name: str) -> list[Mask]:
        return self.annotated(image, name) if self.annotated is not None else self.segment(image)

    @property
    def digest(self) -> str:
        text = json.dumps({"format": FORMAT_VERSION, "name": self.name, **self.settings},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def mask_record(mask: np.ndarray, predicted_iou=None, stability_score=None) -> Mask:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if ys.size:
        bbox = (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))
    else:
        bbox = (0, 0, 0, 0)
    return Mask(encode_rle(mask), int(mask.sum()), bbox,
                None if predicted_iou is None else float(predicted_iou),
                None if stability_score is None else float(stability_score))


def canonical_order(masks: list[Mask], min_area: int = 0) -> list[Mask]:
    """Drop masks under ``min_area`` pixels and sort largest first (ties: first
    pixel in column-major order, then bbox), so a mask's index does not depend
    on the order a generator happened to emit it."""
    kept = [m for m in masks if m.area >= max(min_area, 1)]
    return sorted(kept, key=lambda m: (-m.area, int(m.counts[0]), m.bbox))


# --- classical fallback -------------------------------------------------------

def fallback_segment(image: np.ndarray, settings: dict) -> list[Mask]:
    """Felzenszwalb's graph segmentation or SLIC superpixels: a partition, one
    mask per segment (no predicted IoU or stability score).

    With ``downscale`` f > 1 the image is segmented at 1/f of its size (box
    filter) and each label is repeated over its f x f block: f² times less work,
    boundaries on an f-pixel grid. ``min_size`` counts full-size pixels.
    """
    from skimage.segmentation import felzenszwalb, slic

    height, width = image.shape[:2]
    f = int(settings["downscale"])
    small = image
    if f > 1:
        size = (max(1, -(-width // f)), max(1, -(-height // f)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    min_size = max(1, int(settings["min_size"]) // (f * f))
    if settings["method"] == "felzenszwalb":
        labels = felzenszwalb(small, scale=float(settings["scale"]), sigma=float(settings["sigma"]),
                              min_size=min_size)
    else:
        labels = slic(small, n_segments=int(settings["n_segments"]),
                      compactness=float(settings["compactness"]), start_label=0)
    if f > 1:
        labels = np.repeat(np.repeat(labels, f, axis=0), f, axis=1)[:height, :width]
    return canonical_order(label_map_masks(labels),
                           int(settings["min_size"]) if settings["method"] == "slic" else 0)


def label_map_masks(labels: np.ndarray) -> list[Mask]:
    """One mask per label of a label map, encoded in one pass over its runs
    (no full-image array per label)."""
    from scipy import ndimage

    height, width = labels.shape
    flat = labels.ravel(order="F")
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts]
    order = np.argsort(values, kind="stable")  # runs grouped by label, in position order
    values, starts, ends = values[order], starts[order], ends[order]
    groups = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1], [True])))
    offset = int(labels.min())
    slices = ndimage.find_objects(labels - offset + 1)
    masks = []
    for a, b in zip(groups[:-1], groups[1:]):
        points = np.empty(2 * (b - a) + 2, dtype=np.int64)
        points[0], points[-1] = 0, n
        points[1:-1:2], points[2:-1:2] = starts[a:b], ends[a:b]
        counts = np.diff(points).astype(np.int32)
        if counts[-1] == 0 and counts.size > 1:  # the mask reaches the last pixel
            counts = counts[:-1]
        sl = slices[int(values[a]) - offset]
        bbox = (sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start)
        masks.append(Mask(counts, int((ends[a:b] - starts[a:b]).sum()), bbox))
    return masks


def make_fallback(cfg: FallbackConfig, requested: str = "fallback", reason: str = "") -> Segmenter:
    settings = cfg.model_dump()  # typed by the schema: 300 and 300.0 give one settings digest
    return Segmenter(name=settings["method"], settings=settings,
                     segment=lambda image: fallback_segment(image, settings),
                     requested=requested, fallback_reason=reason, parallel_safe=True)


# --- Segment Anything ---------------------------------------------------------

def sam_settings(cfg: SamConfig) -> dict:
    """What SAM's masks depend on (where its weights come from: their hash, added later)."""
    return cfg.model_dump(exclude={"checkpoint", "sha256"})


def load_sam(model_type: str, checkpoint: str | Path, build: Callable[[], object] | None = None):
    """SAM of ``model_type`` with the weights of ``checkpoint`` (a state dict),
    read by :func:`licbench.fileio.load_tensors`. ``build``: makes the empty
    model instead of segment-anything's registry (tests use a tiny SAM)."""
    from segment_anything import sam_model_registry

    if build is None:
        if model_type not in sam_model_registry:
            raise ConfigError(f"unknown SAM model type {model_type!r}")
        build = lambda: sam_model_registry[model_type](checkpoint=None)  # noqa: E731
    model = build()
    state = load_tensors(checkpoint, "SAM checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{checkpoint}: not {model_type} SAM weights: {first}") from None
    return model.eval()


def make_sam(model, settings: dict, device: str, weights_sha256: str | None = None,
             requested: str = "sam") -> Segmenter:
    """A Segmenter around an already-built SAM model (checkpoint or random weights)."""
    from segment_anything import SamAutomaticMaskGenerator

    model = model.to(device).eval()
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=int(settings["points_per_side"]),
        points_per_batch=int(settings["points_per_batch"]),
        pred_iou_thresh=float(settings["pred_iou_thresh"]),
        stability_score_thresh=float(settings["stability_score_thresh"]),
        box_nms_thresh=float(settings["box_nms_thresh"]),
        # SAM's own small-region clean-up needs OpenCV; we drop small masks instead.
        min_mask_region_area=0,
        output_mode="binary_mask",
    )

    def segment(image: np.ndarray) -> list[Mask]:
        out = generator.generate(image)
        masks = [mask_record(m["segmentation"], m["predicted_iou"], m["stability_score"]) for m in out]
        return canonical_order(masks, settings["min_region_area"])

    full = dict(settings, weights_sha256=weights_sha256 or weights_digest(model.state_dict()),
                image_size=int(model.image_encoder.img_size))
    return Segmenter(name=f"sam-{settings['model_type']}", settings=full, segment=segment,
                     requested=requested)


def fetch_checkpoint(cfg: SamConfig, mirror: Path | None, cache_dir: Path) -> tuple[Path, str]:
    """The SAM checkpoint file and its sha256: a local path, or the configured
    (default: official) URL fetched into ``cache_dir/sam/`` via the mirror's
    ``sam/<file name>`` when there is one. Raises DownloadError when it cannot
    be had, ChecksumError when what was found is not the expected file."""
    from ..data.download import copy_verified, download
    from ..fileio import sha256_file

    official_url, official_sha = OFFICIAL_CHECKPOINTS[cfg.model_type]
    source = cfg.checkpoint or official_url
    sha256 = cfg.sha256 or (official_sha if source == official_url else None)
    if "://" not in str(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DownloadError(f"SAM checkpoint {path}: no such file")
        digest = sha256_file(path)
        if sha256 and digest != sha256:
            from ..errors import ChecksumError
            raise ChecksumError(f"{path}: sha256 mismatch (expected {sha256}, got {digest})")
        return path, digest
    if not sha256:
        raise cfg.error("sha256", f"null, but checkpoint {source} is not the official URL of "
                        f"{cfg.model_type}", "the sha256 of that file")
    name = str(source).rsplit("/", 1)[-1]
    dest = cache_dir / "sam" / name
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest, sha256
    if mirror is not None:
        candidate = mirror / "sam" / name
        if not candidate.is_file():
            raise DownloadError(f"mirror {mirror} lacks sam/{name}")
        copy_verified(candidate, dest, sha256)
        return dest, sha256
    log.info("downloading SAM checkpoint %s", source)
    download(str(source), dest, sha256)
    return dest, sha256


def make_segmenter(cfg: MasksConfig, *, mirror: Path | None = None, cache_dir: Path | None = None,
                   model=None, build: Callable[[], object] | None = None) -> Segmenter:
    """The Segmenter params.yaml's ``masks`` section asks for.

    ``model``: an already-built SAM (tests, benchmarks) used instead of a
    checkpoint; ``build``: makes the empty model the checkpoint is loaded into
    (default: segment-anything's registry for ``model_type``). With ``generator: sam`` and no checkpoint to be had, the
    fallback is used when ``fallback_when_unavailable`` is true (one WARNING
    line, recorded in the output's metadata); otherwise it is an error.
    """
    if cfg.generator == "fallback":
        return make_fallback(cfg.fallback)
    if cfg.generator != "sam":  # coco-panoptic reads a set's annotations: licbench.masks.panoptic
        raise ConfigError(f"masks.generator {cfg.generator!r} needs the set it segments; "
                          "run it through the masks stage")
    settings = sam_settings(cfg.sam)
    device = resolve_device(cfg)
    if model is not None:
        return make_sam(model, settings, device)
    from ..data.datasets import default_cache_dir

    try:
        path, sha256 = fetch_checkpoint(cfg.sam, mirror, cache_dir or default_cache_dir())
    except DownloadError as exc:
        if not cfg.fallback_when_unavailable:
            raise DownloadError(f"no SAM checkpoint ({exc}); set masks.fallback_when_unavailable "
                                "to use the classical segmenter instead") from None
        reason = f"SAM checkpoint unavailable: {str(exc).splitlines()[0]}"
        fallback = make_fallback(cfg.fallback, requested="sam", reason=reason)
        log.warning("%s; using the %s fallback segmenter", reason, fallback.name)
        return fallback
    return make_sam(load_sam(settings["model_type"], path, build), settings, device, sha256)
