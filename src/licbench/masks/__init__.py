"""Class-agnostic region masks (SAM, a classical fallback, or COCO's panoptic
annotations) for SegPIC-style training: generation, the RLE mask table, and
per-image partitions."""

from .rle import crop_flip, decode_rle, encode_rle, partition_from_masks, partition_from_rles
from .table import MaskTable, load_masks

__all__ = ["MaskTable", "crop_flip", "decode_rle", "encode_rle", "load_masks",
           "partition_from_masks", "partition_from_rles"]
