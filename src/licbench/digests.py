"""The sha256 of a model's weights: what checkpoints record, bitstreams carry
(as their model id, docs/bitstream.md) and the masks' settings name."""

from __future__ import annotations

import hashlib


def weights_digest(state_dict: dict) -> str:
    """sha256 over parameter names, dtypes, shapes and values, in name order:
    for each tensor the line ``name|dtype|shape`` and its raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()
