"""Image <-> bitstream with a trained model and CompressAI's rANS coder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FormatError
from ..models import Checkpoint, get_architecture
from .container import Bitstream


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


def model_id(ckpt: Checkpoint) -> bytes:
    return bytes.fromhex(ckpt.weights_sha256)[:8]


@torch.no_grad()
def compress_image(ckpt: Checkpoint, image: np.ndarray) -> Bitstream:
    spec = get_architecture(ckpt.arch)
    device = next(ckpt.model.parameters()).device
    x = pad_to_multiple(to_tensor(image, device), spec.pad_multiple)
    out = ckpt.model.compress(x)
    streams = []
    for strings in out["strings"]:
        if len(strings) != 1:
            raise ValueError("compress_image codes one image at a time")
        streams.append(bytes(strings[0]))
    return Bitstream(
        arch=ckpt.arch,
        model_id=model_id(ckpt),
        height=image.shape[0],
        width=image.shape[1],
        pad_multiple=spec.pad_multiple,
        shape=tuple(int(d) for d in out["shape"]),
        streams=tuple(streams),
    )


@torch.no_grad()
def decompress_image(ckpt: Checkpoint, bs: Bitstream, source: str = "<bitstream>") -> np.ndarray:
    if bs.arch != ckpt.arch or bs.model_id != model_id(ckpt):
        raise FormatError(
            f"{source}: made by {bs.arch} weights {bs.model_id.hex()}, but the model given is "
            f"{ckpt.arch} weights {model_id(ckpt).hex()}"
        )
    spec = get_architecture(ckpt.arch)
    # The coded latent's spatial shape follows from the image size; a header
    # that says otherwise is damaged, and must not drive an allocation.
    expected = tuple(-(-side // spec.pad_multiple) for side in (bs.height, bs.width))
    if len(bs.streams) != spec.n_streams:
        raise FormatError(f"{source}: {len(bs.streams)} streams, {ckpt.arch} codes {spec.n_streams}")
    if bs.pad_multiple != spec.pad_multiple or bs.shape != expected:
        raise FormatError(
            f"{source}: latent shape {bs.shape} / padding {bs.pad_multiple} do not match a "
            f"{bs.width}x{bs.height} image for {ckpt.arch} (expected {expected} / {spec.pad_multiple})"
        )
    out = ckpt.model.decompress([[s] for s in bs.streams], torch.Size(bs.shape))
    return to_uint8(out["x_hat"][..., : bs.height, : bs.width])
