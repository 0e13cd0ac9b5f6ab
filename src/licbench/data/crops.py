"""Random training crops from images held in memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import ConfigError
from .images import load_rgb8


def load_split(manifest: pa.Table, data_root: str | Path, split: str,
               limit: int | None = None) -> tuple[list[np.ndarray], Counter]:
    """Every image of ``split`` (the first ``limit`` by path) as uint8 RGB, and a
    count of the conversions made."""
    paths = [p for p, s in zip(manifest["path"].to_pylist(), manifest["split"].to_pylist()) if s == split]
    if not paths:
        splits = sorted(set(manifest["split"].to_pylist()))
        raise ConfigError(f"the manifest has no image in split '{split}' (splits: {splits})")
    images, conversions = [], Counter()
    for p in sorted(paths)[:limit]:
        loaded = load_rgb8(Path(data_root) / p)
        images.append(loaded.array)
        if loaded.conversion:
            conversions[loaded.conversion] += 1
    return images, conversions


class RandomCrops:
    """Batches of ``crop`` x ``crop`` patches at uniformly random images and offsets.

    The draw depends only on the seed and the number of batches drawn so far;
    ``state()`` / ``set_state()`` save and restore that position, so a resumed
    run sees the batches an uninterrupted one would. With ``world`` processes
    every process draws the whole batch (three integers per patch, cheap) and
    cuts out only its share, patches ``rank::world``: together the processes
    train on exactly the batch a single process would.
    """

    def __init__(self, images: list[np.ndarray], crop: int, seed: int):
        small = [i for i, im in enumerate(images) if min(im.shape[:2]) < crop]
        if small:
            raise ConfigError(
                f"crop size {crop} exceeds the shorter side of {len(small)} training image(s)"
            )
        self.images = images
        self.crop = crop
        self.generator = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def batch(self, size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        patches = []
        for i in range(size):
            im = self.images[self._randint(len(self.images))]
            top = self._randint(im.shape[0] - self.crop + 1)
            left = self._randint(im.shape[1] - self.crop + 1)
            if i % world == rank:
                patches.append(im[top:top + self.crop, left:left + self.crop])
        x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
        return x.float().div_(255.0)


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
