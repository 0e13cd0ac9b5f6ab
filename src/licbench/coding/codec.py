"""Image <-> bitstream with a trained model and CompressAI's rANS coder.

This module pads, writes and reads the container (coding/container.py) and
enforces the decoding limits; it knows no architecture by name. An
architecture's declaration (models/registry.py) names its coding style, one
of ``CODERS``: the style modules (hyper.py, autoregressive.py,
channelwise.py, prototypes.py, scctx.py) compose the latent coders of coding/latent/,
where the device-independence rule lives (everything that chooses a symbol's
CDF runs in float64 on the CPU, encoder and decoder through the same calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, FormatError, ModelMismatchError
from ..models import Checkpoint, get_architecture
from . import autoregressive, channelwise, hyper, prototypes, scctx
from .container import Bitstream
from .hyper import entropy_parameters  # noqa: F401  (re-exported)
from .latent import transforms_input
from .rans import GuardedStream, guard


def to_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    return torch.as_tensor(np.array(image, dtype=np.uint8), device=device).permute(2, 0, 1)[None].float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float in [0, 1] -> H x W x 3 uint8, rounded to 8 bits."""
    return x.clamp(0, 1).mul(255.0).round().to(torch.uint8).squeeze(0).permute(1, 2, 0).cpu().numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right by edge replication up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


# Decoding allocates activations proportional to the image area (for N=192,
# about 1 KB per pixel in the first synthesis layers): refuse files that claim
# more than this unless the caller raises the limit.
DEFAULT_DECODE_MAX_PIXELS = 1 << 24


def model_id(ckpt: Checkpoint) -> bytes:
    return bytes.fromhex(ckpt.weights_sha256)[:8]


@dataclass(frozen=True)
class Coder:
    """A coding style (an architecture's declaration names one): ``compress(ckpt, x)``
    returns ``{"strings": [[bytes], ...], "shape": latent shape, "y_hat": latent}``,
    one entry per stream the architecture declares, and
    ``decompress(ckpt, streams, shape)`` (coding/rans.py's guarded streams, each
    checked to end where its symbols do) returns ``{"x_hat": image, "y_hat": latent}``;
    ``y_hat`` is what g_s receives, identical on both sides. ``max_symbols(config,
    height, width)`` bounds the symbols of any one stream of such an image (what
    the guard after each stream is sized by)."""

    compress: Callable[[Checkpoint, torch.Tensor], dict]
    decompress: Callable[[Checkpoint, list, torch.Size], dict]
    max_symbols: Callable[[dict, int, int], int]


CODERS: dict[str, Coder] = {
    "factorized": Coder(hyper.factorized_compress, hyper.factorized_decompress, hyper.max_symbols),
    "hyperprior": Coder(hyper.hyper_compress, hyper.hyper_decompress, hyper.max_symbols),
    "wavefront": Coder(autoregressive.compress, autoregressive.decompress, hyper.max_symbols),
    "channelwise": Coder(channelwise.compress, channelwise.decompress, hyper.max_symbols),
    "prototypes": Coder(prototypes.compress, prototypes.decompress, prototypes.max_symbols),
    "scctx": Coder(scctx.compress, scctx.decompress, hyper.max_symbols),
}


def get_coder(arch: str) -> Coder:
    style = get_architecture(arch).coder
    try:
        return CODERS[style]
    except KeyError:
        raise ConfigError(f"architecture '{arch}' names the coding style '{style}'; "
                          f"known: {', '.join(sorted(CODERS))}") from None


@torch.no_grad()
def encode(ckpt: Checkpoint, image: np.ndarray) -> tuple[Bitstream, torch.Tensor]:
    """The bitstream of ``image`` and the quantized latent it codes."""
    spec = get_architecture(ckpt.arch)
    device = next(ckpt.model.parameters()).device
    x = transforms_input(pad_to_multiple(to_tensor(image, device), spec.pad_multiple), ckpt.model)
    out = get_coder(ckpt.arch).compress(ckpt, x)
    if len(out["strings"]) != spec.n_streams:
        raise ValueError(f"{ckpt.arch}'s coder wrote {len(out['strings'])} streams, not {spec.streams}")
    streams = []
    for strings in out["strings"]:
        if len(strings) != 1:
            raise ValueError("compress_image codes one image at a time")
        streams.append(bytes(strings[0]))
    bs = Bitstream(
        arch=ckpt.arch,
        model_id=model_id(ckpt),
        height=image.shape[0],
        width=image.shape[1],
        pad_multiple=spec.pad_multiple,
        shape=tuple(int(d) for d in out["shape"]),
        streams=tuple(streams),
    )
    return bs, out["y_hat"]


def compress_image(ckpt: Checkpoint, image: np.ndarray) -> Bitstream:
    return encode(ckpt, image)[0]


def guarded_streams(ckpt: Checkpoint, bs: Bitstream, source: str) -> list[GuardedStream]:
    """The streams as the rANS decoder takes them, checked and guarded (coding/rans.py).

    CompressAI's encoder always writes whole 32-bit words and at least the
    8-byte final state, so anything else is refused. The guard after each
    stream allows two words per latent symbol plus 4 KiB.
    """
    for i, s in enumerate(bs.streams):
        if len(s) < 8 or len(s) % 4:
            raise FormatError(f"{source}: stream {i} has {len(s)} bytes; an rANS stream is a "
                              "whole number of 32-bit words, at least 2")
    symbols = get_coder(ckpt.arch).max_symbols(ckpt.config, bs.height, bs.width)
    return [guard(s, 2 * symbols + 1024, f"{source}: stream {i}") for i, s in enumerate(bs.streams)]


@torch.no_grad()
def decode(ckpt: Checkpoint, bs: Bitstream, source: str = "<bitstream>",
           max_pixels: int = DEFAULT_DECODE_MAX_PIXELS) -> tuple[np.ndarray, torch.Tensor]:
    """The decoded H x W x 3 uint8 image and the quantized latent g_s received."""
    if bs.arch != ckpt.arch or bs.model_id != model_id(ckpt):
        raise ModelMismatchError(
            f"{source}: made by {bs.arch} weights {bs.model_id.hex()}, but the model given is "
            f"{ckpt.arch} weights {model_id(ckpt).hex()}"
        )
    spec = get_architecture(ckpt.arch)
    # The coded latent's spatial shape follows from the image size; a header
    # that says otherwise is damaged, and must not drive an allocation.
    expected = tuple(-(-side // spec.pad_multiple) for side in (bs.height, bs.width))
    if bs.height * bs.width > max_pixels:
        raise FormatError(
            f"{source}: {bs.width}x{bs.height} image exceeds the decoding limit of {max_pixels} "
            "pixels (raise it with --max-pixels if the file is trusted)"
        )
    if len(bs.streams) != spec.n_streams:
        raise FormatError(f"{source}: {len(bs.streams)} streams, {ckpt.arch} codes {spec.n_streams} "
                          f"({', '.join(spec.streams)})")
    if bs.pad_multiple != spec.pad_multiple or bs.shape != expected:
        raise FormatError(
            f"{source}: latent shape {bs.shape} / padding {bs.pad_multiple} do not match a "
            f"{bs.width}x{bs.height} image for {ckpt.arch} (expected {expected} / {spec.pad_multiple})"
        )
    streams = guarded_streams(ckpt, bs, source)
    out = get_coder(ckpt.arch).decompress(ckpt, streams, torch.Size(bs.shape))
    return to_uint8(out["x_hat"][..., : bs.height, : bs.width]), out["y_hat"]


def decompress_image(ckpt: Checkpoint, bs: Bitstream, source: str = "<bitstream>",
                     max_pixels: int = DEFAULT_DECODE_MAX_PIXELS) -> np.ndarray:
    return decode(ckpt, bs, source, max_pixels)[0]
