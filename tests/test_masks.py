"""The masks stage: RLE, partitions, SAM (a tiny random one) and the fallback,
the mask table, resuming, and refusals."""

import hashlib
import json
import logging
import sqlite3
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from licbench.tracking import Target
from licbench.config import MasksConfig, load_section, with_overrides
from licbench.data.datasets import MANIFEST_SCHEMA, write_manifest
from licbench.errors import CheckpointError, ChecksumError, ConfigError, DownloadError, MaskError
from licbench.masks import (crop_flip, decode_rle, encode_rle, load_masks, partition_from_masks,
                            partition_from_rles)
from licbench.masks.generate import label_map_masks, load_sam, make_segmenter, mask_record
from licbench.masks.stage import generate_masks, run_masks_stage, select_images

from conftest import REPO


# --- helpers ---------------------------------------------------------------

def reference_rle(mask):
    """COCO counts the slow, obvious way."""
    counts, current, run = [], 0, 0
    for v in mask.ravel(order="F"):
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def same_regions(a, b):
    """Two partitions with the same regions, up to the ids' names."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def assert_partition(part, shape):
    assert part.shape == shape and part.dtype == np.int32
    ids = np.unique(part)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # contiguous, every pixel covered


def random_masks(rng, h, w, n):
    masks = []
    for _ in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.9
        masks.append(m)
    return masks


def tiny_sam():
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    torch.manual_seed(0)
    img, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=1, embed_dim=32, img_size=img, mlp_ratio=2, num_heads=2, patch_size=patch,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=[0], window_size=2, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img // patch, img // patch),
                                     input_image_size=(img, img), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=1,
                                 iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim,
                                                               mlp_dim=32, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def masks_config(overrides: dict, splits=("train", "val")) -> MasksConfig:
    """params.yaml's masks section with ``overrides``, for the set 'toy'."""
    return load_section(REPO / "params.yaml", "masks",
                        {"sets": {"toy": list(splits)}, "workers": 1, "overlays": 2, **overrides})


SAM_CFG = {"generator": "sam", "device": "cpu", "fallback_when_unavailable": False,
           "sam": {"model_type": "vit_b", "points_per_side": 4, "points_per_batch": 16,
                   "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                   "box_nms_thresh": 0.9, "min_region_area": 0}}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory, mirror):
    """A set 'toy' of three small real images (Kodak, downscaled), with its manifest."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for name, split, size in [("kodim01", "train", (96, 64)), ("kodim04", "train", (64, 96)),
                              ("kodim23", "val", (80, 56))]:
        path = root / "toy" / split / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(mirror / "kodak" / f"{name}.png").convert("RGB").resize(size).save(path)
        rows.append({"path": f"toy/{split}/{name}.png", "split": split, "width": size[0],
                     "height": size[1], "bytes": path.stat().st_size,
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "manifests" / "toy.parquet")
    return root


def run_stage(cfg: MasksConfig, out, summary, root, mirror=None, **kwargs) -> dict:
    return run_masks_stage(cfg, "toy", out, summary, root, mirror=mirror, mlflow_to=Target("test-masks", "tests"), **kwargs)


# --- RLE and partitions ----------------------------------------------------

def test_rle_round_trip_is_exact(rng):
    cases = [np.zeros((3, 4), bool), np.ones((3, 4), bool), np.array([[0, 1], [1, 1]], bool),
             np.eye(5, dtype=bool), np.ones((1, 7), bool), np.zeros((6, 1), bool)]
    cases += [rng.random((rng.integers(1, 40), rng.integers(1, 40))) < p for p in (0.05, 0.5, 0.95)]
    for m in cases:
        counts = encode_rle(m)
        assert counts.tolist() == reference_rle(m)
        assert int(counts.sum()) == m.size
        np.testing.assert_array_equal(decode_rle(counts, *m.shape), m)
    # COCO layout: column-major, a leading zero run when the first pixel is set.
    assert encode_rle(np.array([[0, 1], [1, 1]], bool)).tolist() == [1, 3]
    assert encode_rle(np.array([[1, 0], [1, 1]], bool)).tolist() == [0, 2, 1, 1]


def test_rle_refuses_counts_of_another_size():
    with pytest.raises(MaskError, match="do not describe a 3x4 mask"):
        decode_rle(np.array([2, 3]), 3, 4)
    with pytest.raises(MaskError):
        decode_rle(np.array([20, -8]), 3, 4)


def test_label_map_masks_match_one_mask_per_label(rng):
    labels = rng.integers(0, 5, (17, 23))
    labels[-1, -1] = 4  # a mask reaching the last pixel
    masks = label_map_masks(labels)
    assert len(masks) == 5
    for k, m in enumerate(masks):
        ref = mask_record(labels == k)
        assert m.counts.tolist() == ref.counts.tolist() and m.area == ref.area and m.bbox == ref.bbox


def test_partition_covers_every_pixel_with_smaller_masks_on_top(rng):
    h, w = 30, 40
    big = np.zeros((h, w), bool); big[:, :20] = True
    small = np.zeros((h, w), bool); small[5:10, 5:10] = True
    part = partition_from_masks([small, big])  # order given does not matter
    assert_partition(part, (h, w))
    assert len(np.unique(part[small])) == 1 and part[7, 7] != part[20, 15]
    # Uncovered pixels: here one connected block (x >= 20), one region of its own.
    assert len(np.unique(part[:, 20:])) == 1 and part[0, 25] not in part[:, :20]
    # Two separate holes become two regions.
    split_big = big.copy(); split_big[:, 30:] = True
    assert len(np.unique(partition_from_masks([split_big])[:, 20:30])) == 1
    assert len(np.unique(partition_from_masks([split_big]))) == 2
    for n in (1, 5, 40):
        masks = random_masks(rng, h, w, n)
        assert_partition(partition_from_masks(masks), (h, w))
    np.testing.assert_array_equal(partition_from_rles([], 3, 4), np.zeros((3, 4), np.int32))


def test_crop_and_flip_of_image_and_partition_stay_consistent(rng):
    h, w = 48, 64
    masks = random_masks(rng, h, w, 12)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    part = partition_from_masks(masks)
    # Flip: the partition of the flipped masks has exactly the flipped regions.
    flipped = partition_from_masks([m[:, ::-1] for m in masks])
    im_f, part_f = crop_flip(image, part, 0, 0, h, w, flip=True)
    np.testing.assert_array_equal(im_f, image[:, ::-1])
    assert same_regions(part_f, flipped)
    assert_partition(part_f, (h, w))
    # Crop: ids renumbered 0..K-1, the same regions as the crop of the full
    # partition. (A loader crops the partition; the partition of cropped masks
    # may differ, since cropping changes the areas that order the drawing.)
    for top, left, flip in [(5, 7, False), (10, 3, True), (0, 0, False)]:
        im_c, part_c = crop_flip(image, part, top, left, 32, 40, flip)
        ref = part[top:top + 32, left:left + 40]
        ref_im = image[top:top + 32, left:left + 40]
        if flip:
            ref, ref_im = ref[:, ::-1], ref_im[:, ::-1]
        np.testing.assert_array_equal(im_c, ref_im)
        assert_partition(part_c, (32, 40))
        assert same_regions(part_c, ref)
    with pytest.raises(MaskError, match="leaves"):
        crop_flip(image, part, 40, 0, 32, 32)


# --- generators ------------------------------------------------------------

def test_random_sam_yields_masks_through_the_stage_generator(rng):
    segmenter = make_segmenter(masks_config(SAM_CFG), model=tiny_sam())
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = segmenter.segment(image)
    assert segmenter.name == "sam-vit_b" and len(masks) > 0
    assert [m.area for m in masks] == sorted((m.area for m in masks), reverse=True)
    assert all(m.predicted_iou is not None and m.stability_score is not None for m in masks)
    for m in masks:
        assert decode_rle(m.counts, 40, 56).sum() == m.area
    # Deterministic: the same image and settings give the same masks.
    again = make_segmenter(masks_config(SAM_CFG), model=tiny_sam()).segment(image)
    assert [m.counts.tolist() for m in again] == [m.counts.tolist() for m in masks]
    assert segmenter.digest == make_segmenter(masks_config(SAM_CFG), model=tiny_sam()).digest
    assert_partition(partition_from_rles([m.counts for m in masks], 40, 56), (40, 56))


def test_checkpoint_loads_through_the_stage_loader(tmp_path, rng):
    ckpt = tmp_path / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), ckpt)
    loaded = load_sam("vit_b", ckpt, build=tiny_sam)
    for (k, a), (_, b) in zip(sorted(tiny_sam().state_dict().items()), sorted(loaded.state_dict().items())):
        assert torch.equal(a, b), k
    # The stage's way: a checkpoint URL found in the mirror, verified, cached, loaded.
    mirror = tmp_path / "mirror"
    (mirror / "sam").mkdir(parents=True)
    (mirror / "sam" / "tiny_sam.pth").write_bytes(ckpt.read_bytes())
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cfg = masks_config(with_overrides(SAM_CFG, {"sam": {"checkpoint": "https://example.invalid/tiny_sam.pth",
                                                        "sha256": sha}}, MasksConfig))
    seg = make_segmenter(cfg, mirror=mirror, cache_dir=tmp_path / "cache", build=tiny_sam)
    assert (tmp_path / "cache" / "sam" / "tiny_sam.pth").is_file()
    assert seg.settings["weights_sha256"] == sha
    assert len(seg.segment(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))) > 0
    # Refusals: wrong bytes in the mirror, a file that is not a state dict, other weights.
    (mirror / "sam" / "tiny_sam.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ChecksumError):
        make_segmenter(cfg, mirror=mirror, cache_dir=tmp_path / "cache2", build=tiny_sam)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable SAM checkpoint"):
        load_sam("vit_b", bad, build=tiny_sam)
    torch.save({"image_encoder.pos_embed": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="not vit_b SAM weights"):
        load_sam("vit_b", bad, build=tiny_sam)
    with pytest.raises(CheckpointError, match="no such SAM checkpoint"):
        load_sam("vit_b", tmp_path / "missing.pth", build=tiny_sam)


def test_missing_checkpoint_falls_back_only_when_allowed(tmp_path, caplog):
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    cfg = masks_config(dict(SAM_CFG, fallback_when_unavailable=True))
    with caplog.at_level(logging.WARNING):
        seg = make_segmenter(cfg, mirror=empty_mirror, cache_dir=tmp_path / "cache")
    assert seg.name == "felzenszwalb" and seg.requested == "sam"
    assert "sam_vit_b_01ec64.pth" in seg.fallback_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fallback" in warnings[0].getMessage()
    with pytest.raises(DownloadError, match="fallback_when_unavailable"):
        make_segmenter(masks_config(SAM_CFG), mirror=empty_mirror, cache_dir=tmp_path / "cache")


# --- the stage and the table ----------------------------------------------

def test_stage_with_random_sam_writes_table_overlays_and_mlflow_run(toy_root, tmp_path):
    out, summary = tmp_path / "masks", tmp_path / "masks.json"
    stats = run_stage(masks_config(SAM_CFG), out, summary, toy_root, model=tiny_sam())
    assert stats["images"] == 3 and stats["masks_per_image"] > 0 and stats["fallback"] == 0
    assert json.loads(summary.read_text()) == stats
    table = load_masks(out, toy_root / "manifests" / "toy.parquet")
    assert table.metadata["generator"] == "sam-vit_b" and table.metadata["splits"] == ["train", "val"]
    rows = pq.read_table(out / "masks.parquet")
    assert rows["predicted_iou"].null_count == 0 and set(rows["image"].to_pylist()) <= set(table.images)
    for name, (h, w) in table.images.items():
        assert_partition(table.partition(name), (h, w))
    assert len(list((out / "overlays").glob("*.png"))) == 2
    # The same masks whatever the order the images come in.
    manifest = pq.read_table(toy_root / "manifests" / "toy.parquet")
    images = select_images(manifest, ["train", "val"], toy_root, None)[::-1]
    generate_masks(images, make_segmenter(masks_config(SAM_CFG), model=tiny_sam()), tmp_path / "rev", {})
    a, b = pq.read_table(out / "masks.parquet"), pq.read_table(tmp_path / "rev" / "masks.parquet")
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        [(run,)] = db.execute("SELECT run_uuid FROM runs WHERE name = 'masks-toy'").fetchall()
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run,)).fetchall())
        assert tags["licbench.stage"] == "masks"
        keys = {k for (k,) in db.execute("SELECT key FROM metrics WHERE run_uuid = ?", (run,))}
        assert {"masks_per_image", "covered_fraction", "seconds_per_image"} <= keys


def test_fallback_stage_resumes_and_does_not_depend_on_order_or_workers(toy_root, tmp_path, monkeypatch):
    from licbench.masks import stage

    cfg = masks_config({"generator": "fallback", "fallback": {"scale": 50, "min_size": 20}})
    out = tmp_path / "a"
    calls, interrupt_at = [], [2]
    real = stage.segment_one

    def interrupted(image, *args):
        calls.append(image)
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        return real(image, *args)

    monkeypatch.setattr(stage, "segment_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, out, tmp_path / "a.json", toy_root)
    assert not (out / "masks.parquet").exists() and not (tmp_path / "a.json").exists()
    assert len(list((out / "parts").rglob("*.parquet"))) == 1
    calls.clear()
    interrupt_at[0] = None
    stats = run_stage(cfg, out, tmp_path / "a.json", toy_root)
    assert len(calls) == 2  # the finished image was not segmented again
    assert stats["covered_fraction"] == 1.0 and stats["fallback"] == 0
    monkeypatch.setattr(stage, "segment_one", real)

    # Reversed order, two worker processes: the same table.
    manifest = pq.read_table(toy_root / "manifests" / "toy.parquet")
    images = select_images(manifest, ["train", "val"], toy_root, None)[::-1]
    seg = make_segmenter(cfg)
    generate_masks(images, seg, tmp_path / "b", {"note": "x"}, workers=2)
    a, b = pq.read_table(out / "masks.parquet"), pq.read_table(tmp_path / "b" / "masks.parquet")
    assert a.replace_schema_metadata(None).equals(b.replace_schema_metadata(None))

    # Unchanged settings: nothing is made again; changed settings: every part.
    calls.clear()
    monkeypatch.setattr(stage, "segment_one", interrupted)
    run_stage(cfg, out, tmp_path / "a.json", toy_root)
    assert calls == []
    cfg2 = masks_config({"generator": "fallback", "fallback": {"scale": 80, "min_size": 20}})
    run_stage(cfg2, out, tmp_path / "a.json", toy_root)
    assert len(calls) == 3
    assert load_masks(out).metadata["settings"]["scale"] == 80


def test_bad_input_gives_clear_errors(toy_root, tmp_path):
    out = tmp_path / "masks"
    # SAM asked for, offline (an empty mirror): the fallback runs and says so.
    (tmp_path / "mirror").mkdir()
    cfg = dict(SAM_CFG, fallback_when_unavailable=True, fallback={"scale": 50, "min_size": 20})
    stats = run_stage(masks_config(cfg, splits=["train"]), out, tmp_path / "s.json", toy_root,
                      mirror=tmp_path / "mirror")
    manifest_path = toy_root / "manifests" / "toy.parquet"
    table = load_masks(out, manifest_path)
    assert stats["fallback"] == 1 and table.metadata["requested_generator"] == "sam"
    assert table.metadata["generator"] == "felzenszwalb"
    assert "SAM checkpoint unavailable" in table.metadata["fallback_reason"]
    with pytest.raises(MaskError, match=r"masks\.parquet: no masks for image 'toy/val/kodim23.png'"):
        table.partition("toy/val/kodim23.png")
    with pytest.raises(MaskError, match="is 10x10, its masks are 64x96"):
        table.partition("toy/train/kodim01.png", (10, 10))
    # A manifest whose files differ (another hash): refused, naming the table.
    manifest = pq.read_table(manifest_path)
    other = manifest.set_column(5, "sha256", pa.array(["0" * 64] * manifest.num_rows))
    write_manifest(other, tmp_path / "other.parquet")
    with pytest.raises(MaskError, match=r"masks\.parquet: made for another manifest"):
        load_masks(out, tmp_path / "other.parquet")
    with pytest.raises(MaskError, match="not found"):
        load_masks(tmp_path / "nowhere")
    (out / "masks.parquet").write_bytes(b"PAR1 damaged")
    with pytest.raises(MaskError, match="not a readable Parquet mask table"):
        load_masks(out)
    with pytest.raises(ConfigError, match=r"params.yaml: masks.sets.toy: \['nope'\] not in the manifest"):
        run_stage(masks_config(cfg, splits=["nope"]), out, tmp_path / "s.json", toy_root)
