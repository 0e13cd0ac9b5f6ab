"""Random training crops from images held in memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import ConfigError
from ..masks.rle import crop_flip
from .images import load_rgb8


def split_paths(manifest: pa.Table, split: str, limit: int | None = None) -> list[str]:
    """The manifest paths of ``split``, sorted, the first ``limit`` of them."""
    paths = [p for p, s in zip(manifest["path"].to_pylist(), manifest["split"].to_pylist()) if s == split]
    if not paths:
        splits = sorted(set(manifest["split"].to_pylist()))
        raise ConfigError(f"the manifest has no image in split '{split}' (splits: {splits})")
    return sorted(paths)[:limit]


def load_split(manifest: pa.Table, data_root: str | Path, split: str,
               limit: int | None = None) -> tuple[list[np.ndarray], Counter]:
    """Every image of ``split`` (the first ``limit`` by path) as uint8 RGB, and a
    count of the conversions made."""
    images, conversions = [], Counter()
    for p in split_paths(manifest, split, limit):
        loaded = load_rgb8(Path(data_root) / p)
        images.append(loaded.array)
        if loaded.conversion:
            conversions[loaded.conversion] += 1
    return images, conversions


class RandomCrops:
    """Batches of ``crop`` x ``crop`` patches at random images and offsets.

    An image is drawn with a probability in proportion to its pixels, then
    the offset uniformly: each set of a union (licbench.data.trainset) gives
    its share of the pixels, not of the files (COCO's 0.3 Mpixel images are
    cropped a tenth as often as DIV2K's 2.8 Mpixel ones).
    The draw depends only on the seed and the number of batches drawn so far;
    ``state()`` / ``set_state()`` save and restore that position, so a resumed
    run sees the batches an uninterrupted one would. With ``world`` processes
    every process draws the whole batch (three integers per patch, cheap) and
    cuts out only its share, patches ``rank::world``: together the processes
    train on exactly the batch a single process would.
    """

    def __init__(self, images: list[np.ndarray], crop: int, seed: int):
        if not images:
            raise ConfigError("no training image")
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < crop]
        if small:
            raise ConfigError(
                f"crop size {crop} exceeds the shorter side of {len(small)} training image(s)"
            )
        self.images = images
        self.crop = crop
        self.generator = torch.Generator().manual_seed(seed)
        # Image k holds the draws [ends[k-1], ends[k]) of one integer below the total.
        self._ends = np.cumsum([im.shape[0] * im.shape[1] for im in images], dtype=np.int64)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _image(self) -> int:
        """An image index, drawn in proportion to pixels."""
        return int(np.searchsorted(self._ends, self._randint(int(self._ends[-1])), side="right"))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def batch(self, size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        patches = []
        for i in range(size):
            im = self.images[self._image()]
            top = self._randint(im.shape[0] - self.crop + 1)
            left = self._randint(im.shape[1] - self.crop + 1)
            if i % world == rank:
                patches.append(im[top:top + self.crop, left:left + self.crop])
        # Contiguous N x C x H x W, not the channels-last strides of the permuted
        # stack: in torch 2.14 on the CPU, the backward pass of a strided 1x1
        # convolution (Cheng2020's ResidualBlockWithStride skip) on such an
        # input corrupts the heap.
        x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()
        return x.float().div_(255.0)


def load_partitions(masks, manifest: pa.Table, split: str, images: list[np.ndarray],
                    limit: int | None = None) -> list[np.ndarray]:
    """The region partition of each image of ``split`` (in :func:`load_split`'s
    order), from the masks stage's table ``masks`` (a ``MaskTable``); uint16 ids
    when they fit (as much memory as the images' channels take, two thirds)."""
    partitions = []
    for path, image in zip(split_paths(manifest, split, limit), images):
        part = masks.partition(path, image.shape)
        partitions.append(part.astype(np.uint16) if part.max() < 1 << 16 else part)
    return partitions


class PartitionedCrops(RandomCrops):
    """:class:`RandomCrops` of images and their region partitions together, with
    a random horizontal and a random vertical flip of both (SegPIC's training
    crops); ``batch`` returns (images, partitions: B x crop x crop int64, each
    crop's ids renumbered 0..K-1)."""

    def __init__(self, images: list[np.ndarray], partitions: list[np.ndarray], crop: int, seed: int):
        super().__init__(images, crop, seed)
        if len(partitions) != len(images):
            raise ConfigError(f"{len(partitions)} partitions for {len(images)} training images")
        for i, (im, part) in enumerate(zip(images, partitions)):
            if part.shape != im.shape[:2]:
                raise ConfigError(f"training image {i}: partition {part.shape} differs from the image "
                                  f"{im.shape[:2]}")
        self.partitions = partitions

    def batch(self, size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        patches, parts = [], []
        for i in range(size):
            k = self._image()
            im = self.images[k]
            top = self._randint(im.shape[0] - self.crop + 1)
            left = self._randint(im.shape[1] - self.crop + 1)
            hflip, vflip = self._randint(2), self._randint(2)
            if i % world == rank:
                patch, part = crop_flip(im, self.partitions[k], top, left, self.crop, self.crop, bool(hflip))
                if vflip:
                    patch, part = patch[::-1], part[::-1]
                patches.append(np.ascontiguousarray(patch))
                parts.append(np.ascontiguousarray(part))
        x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        return x, torch.from_numpy(np.stack(parts)).long()


def center_crops(images: list[np.ndarray], crop: int) -> torch.Tensor:
    """The central ``crop`` x ``crop`` patch of each image, as one float batch in [0, 1]."""
    small = [i for i, im in enumerate(images) if min(im.shape[:2]) < crop]
    if small:
        raise ConfigError(f"crop size {crop} exceeds the shorter side of {len(small)} validation image(s)")
    patches = []
    for im in images:
        top, left = (im.shape[0] - crop) // 2, (im.shape[1] - crop) // 2
        patches.append(im[top:top + crop, left:left + crop])
    if not patches:
        return torch.empty(0, 3, crop, crop)
    return torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float().div_(255.0)
