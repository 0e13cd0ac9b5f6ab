"""Rate-distortion points published by others, shipped as data.

``published/<dataset>/<id>.json`` holds one curve in CompressAI's results
layout (``results: {bpp, psnr-rgb, ms-ssim-rgb}``, ordered by rate) plus where
it comes from (``source``: repository, path, commit) and under which licence.
``published/README.md`` lists them. The report labels each "[published]".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

ROOT = Path(str(resources.files("licbench.report") / "published"))


def available(dataset: str) -> list[str]:
    folder = ROOT / dataset
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load(dataset: str, curve_id: str) -> dict:
    path = ROOT / dataset / f"{curve_id}.json"
    if not path.is_file():
        known = available(dataset)
        raise ConfigError(f"params.yaml report.published: no published curve '{curve_id}' for "
                          f"{dataset}; available: {known or 'none'}")
    return json.loads(path.read_text())
