"""Reading images as 8-bit RGB, the one input format of every codec here.

Policy (documented in docs/pipeline.md, "Input images"): an image that is not 8-bit RGB is converted,
and the conversion is reported so that evaluation rows record it:

- grayscale (and 1-bit) images are replicated to three channels;
- palette images are expanded to RGB;
- an alpha channel is dropped (the colour channels are kept as they are);
- 16-bit images keep their high byte (``v >> 8``), as Pillow does for 16-bit RGB;
- CMYK and YCbCr images are converted with Pillow's conversion.

Unreadable, truncated, float-valued or oversized images are refused with an
:class:`~licbench.errors.ImageError` naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageError

# 256 Mpixel: far above any evaluation set; refuse before decoding anything larger.
DEFAULT_MAX_PIXELS = 1 << 28

_CONVERTED = {
    "L": "gray->rgb",
    "1": "bilevel->rgb",
    "P": "palette->rgb",
    "PA": "palette+alpha->rgb (alpha dropped)",
    "LA": "gray+alpha->rgb (alpha dropped)",
    "La": "gray+alpha->rgb (alpha dropped)",
    "RGBA": "rgba->rgb (alpha dropped)",
    "RGBa": "rgba->rgb (alpha dropped)",
    "RGBX": "rgbx->rgb",
    "CMYK": "cmyk->rgb",
    "YCbCr": "ycbcr->rgb",
    "LAB": "lab->rgb",
    "HSV": "hsv->rgb",
}
_SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


@dataclass(frozen=True)
class LoadedImage:
    array: np.ndarray  # H x W x 3, uint8
    conversion: str  # "" when the file already was 8-bit RGB

    @property
    def height(self) -> int:
        return self.array.shape[0]

    @property
    def width(self) -> int:
        return self.array.shape[1]


def _rawmode(im: Image.Image) -> str:
    tile = getattr(im, "tile", None) or []
    if not tile:
        return ""
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def load_rgb8(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read ``path`` as an H x W x 3 uint8 array; see the module doc for conversions."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path}: {width}x{height} image exceeds the limit of {max_pixels} pixels"
                    )
                sixteen_bit = "16" in _rawmode(im)
                im.load()
                return _to_rgb8(im, sixteen_bit, path)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports unknown formats, truncation and corrupt data this way.
        raise ImageError(f"{path}: unreadable image: {exc}") from None


def _to_rgb8(im: Image.Image, sixteen_bit: bool, path: Path) -> LoadedImage:
    mode = im.mode
    if mode in _SIXTEEN_BIT_GRAY:
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(f"{path}: {mode} image with values outside 0..65535 is not supported")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return LoadedImage(np.repeat(gray[..., None], 3, axis=2), "gray16->rgb8 (high byte)")
    if mode == "RGB":
        conversion = "rgb16->rgb8 (high byte)" if sixteen_bit else ""
        return LoadedImage(np.ascontiguousarray(np.asarray(im, dtype=np.uint8)), conversion)
    if mode in _CONVERTED:
        conversion = _CONVERTED[mode]
        if sixteen_bit:
            conversion = conversion.replace("->", "16->", 1) + ", 16->8 bit (high byte)"
        rgb = im.convert("RGB")
        return LoadedImage(np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)), conversion)
    raise ImageError(f"{path}: unsupported image mode {mode!r}")
