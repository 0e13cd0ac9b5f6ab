"""Random training crops from images held in memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..errors import ConfigError
from .images import load_rgb8


def load_split(manifest: pa.Table, data_root: str | Path, split: str) -> tuple[list[np.ndarray], Counter]:
    """Every image of ``split`` as uint8 RGB, and a count of the conversions made."""
    paths = [p for p, s in zip(manifest["path"].to_pylist(), manifest["split"].to_pylist()) if s == split]
    if not paths:
        splits = sorted(set(manifest["split"].to_pylist()))
        raise ConfigError(f"the manifest has no image in split '{split}' (splits: {splits})")
    images, conversions = [], Counter()
    for p in sorted(paths):
        loaded = load_rgb8(Path(data_root) / p)
        images.append(loaded.array)
        if loaded.conversion:
            conversions[loaded.conversion] += 1
    return images, conversions


class RandomCrops:
    """Batches of ``crop`` x ``crop`` patches at uniformly random images and offsets.

    The draw depends only on the seed, so a run is repeatable.
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

    def batch(self, size: int) -> torch.Tensor:
        patches = []
        for _ in range(size):
            im = self.images[self._randint(len(self.images))]
            top = self._randint(im.shape[0] - self.crop + 1)
            left = self._randint(im.shape[1] - self.crop + 1)
            patches.append(im[top:top + self.crop, left:left + self.crop])
        x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
        return x.float().div_(255.0)
