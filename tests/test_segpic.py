"""SegPIC: MAP and expansion, the grid partition, the model's shapes and size,
the coded round trip, training with masks and with the grid, and the stages."""

import json
import math
import runpy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from licbench.tracking import Target
from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor
from licbench.coding.container import decode_container, encode_container
from licbench.data.crops import PartitionedCrops
from licbench.data.images import load_rgb8
from licbench.errors import ConfigError, FormatError, MaskError
from licbench.metrics import bpp_from_likelihoods
from licbench.models import build_model, load_checkpoint, save_checkpoint
from licbench.models.segpic import (
    SegPIC, expand_prototypes, grid_map, grid_regions, mask_regions, masked_average_pool,
)
from licbench.config import load_params, train_config
from licbench.train import train_model, training_digest

from conftest import REPO

TINY = {"N": 16, "M": 40, "grid": 4, "use_mask": 1}


# The plain reference the benchmark times against: per sample, per region
# present (ascending ids), the mean of the features under its mask, written
# back over the mask.
region_loop = runpy.run_path(str(REPO / "bench" / "segpic_map.py"))["region_loop"]


def test_map_and_expansion_equal_a_loop_over_regions():
    torch.manual_seed(0)
    features = torch.randn(3, 5, 12, 10, dtype=torch.float64, requires_grad=True)
    partition = torch.randint(0, 7, (3, 12, 10))
    partition[1][partition[1] == 3] = 20  # ids need not be contiguous...
    partition[2][partition[2] == 0] = 1  # ...nor all present
    ids, valid = mask_regions(partition)
    counts = [len(torch.unique(p)) for p in partition]
    assert valid.sum(1).tolist() == counts and valid.shape == (3, max(counts))
    prototypes = masked_average_pool(features, ids, valid.shape[1])
    expanded = expand_prototypes(prototypes, ids)
    ref_prototypes, ref_expanded = region_loop(features, partition)
    torch.testing.assert_close(prototypes[valid], ref_prototypes, rtol=0, atol=1e-12)
    assert (prototypes[~valid] == 0).all()
    torch.testing.assert_close(expanded, ref_expanded, rtol=0, atol=1e-12)
    # The gradients too (the backward of the scatter-add and of the gather).
    weights = torch.randn_like(expanded)
    grad, = torch.autograd.grad((expanded * weights).sum() + prototypes[valid].square().sum(), features)
    ref_grad, = torch.autograd.grad((ref_expanded * weights).sum() + ref_prototypes.square().sum(), features)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


def test_grid_regions_are_the_cells_of_adaptive_pooling_and_nearest_expansion():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 16, 8)
    ids, valid = grid_regions(2, 16, 8, 4)
    assert valid.shape == (2, 16) and valid.all() and ids[1].unique().tolist() == list(range(16))
    prototypes = masked_average_pool(features, ids, 16)
    maps = F.adaptive_avg_pool2d(features, 4)  # divisible: the same cells
    torch.testing.assert_close(grid_map(prototypes, 4), maps)
    torch.testing.assert_close(expand_prototypes(prototypes, ids),
                               F.interpolate(maps, size=(16, 8), mode="nearest"))
    # Not divisible: one set of integer cells for pooling and expansion alike.
    # (adaptive_avg_pool2d's bins overlap there, and nearest interpolation's
    # float index rounds 12 * (4 / 48) down: their cells disagree.)
    ids, _ = grid_regions(1, 7, 48, 4)
    rows, cols = ids[0] // 4, ids[0] % 4
    assert rows[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert cols[0].tolist() == [i * 4 // 48 for i in range(48)]
    # Fewer rows than cells: the empty cells' prototypes are 0, read by no pixel.
    ids, _ = grid_regions(1, 2, 8, 4)
    prototypes = masked_average_pool(torch.ones(1, 1, 2, 8), ids, 16)
    assert prototypes.view(4, 4)[:, 0].tolist() == [1, 0, 1, 0]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("segpic", TINY).eval()


def test_forward_shapes_and_likelihoods(tiny_model):
    x = torch.rand(2, 3, 64, 128)
    partition = torch.zeros(2, 64, 128, dtype=torch.long)
    partition[0, :, 64:] = 5  # two regions in the first image, one in the second
    partition[1, 40:, :] = 2
    partition[1, :, :16] = 9  # a 16-pixel strip: 4 columns at 1/4, 1 at 1/16
    with torch.no_grad():
        out = tiny_model(x, partition)
        grid = tiny_model(x)
    assert out["x_hat"].shape == x.shape
    lik = out["likelihoods"]
    assert set(lik) == {"y", "z", "prototypes1", "prototypes2"}
    assert lik["y"].shape == (2, 40, 4, 8) and lik["z"].shape == (2, 16, 1, 2)
    # One prototype per region present at each resolution (8 ids at 1/4 and at
    # 1/16; the rows from 40 are rows 10.. at 1/4, 2.. at 1/16).
    assert lik["prototypes1"].shape == (5, 8, 1, 1) and lik["prototypes2"].shape == (5, 8, 1, 1)
    assert grid["likelihoods"]["prototypes1"].shape == (32, 8, 1, 1)  # 2 x 4 x 4 cells
    assert all(((v > 0) & (v <= 1)).all() for v in lik.values())


def test_training_on_the_grid_is_the_inference_path(tiny_model):
    """The grid given as a partition at image resolution (as use_mask: false
    would) takes exactly the path of the model without partition."""
    x = torch.rand(1, 3, 128, 192)
    grid, _ = grid_regions(1, 128, 192, 4)  # at image resolution
    with torch.no_grad():
        a = tiny_model(x)
        b = tiny_model(x, grid)
    assert torch.equal(a["x_hat"], b["x_hat"])
    for k in a["likelihoods"]:
        assert torch.equal(a["likelihoods"][k], b["likelihoods"][k])
    with pytest.raises(ValueError, match=r"partition \(1, 64, 64\) does not fit"):
        tiny_model(x, grid[:, :64, :64])


def official_parameter_count(N=192, M=320) -> int:
    """The official SegPIC (``compressai/models/sac.py``) counted layer by layer
    from its definition, independently of licbench's modules."""
    from compressai.entropy_models import EntropyBottleneck

    def conv(i, o, k):
        return i * o * k * k + o

    def gdn(c):
        return c * c + c

    def sal(c):
        return conv(c, c, 1) + conv(c, 2 * c, 1)

    def residual_unit(n):
        return conv(n, n // 2, 1) + conv(n // 2, n // 2, 3) + conv(n // 2, n, 1)

    def win_attention(n, heads, window):  # Win_noShift_Attention
        return (6 * residual_unit(n) + (2 * window - 1) ** 2 * heads + conv(n, 3 * n, 1)
                + conv(n, n, 1) + conv(n, n, 1))

    def rat(c, k=3):  # RegionAdaTransform: conv, k_sp_gen, k_ch_gen, conv_out
        return (2 * conv(c, c, 1) + conv(2 * c, c, 1) + conv(c, c, k) + c * k * k * k * k + c * k * k
                + 2 * conv(c, c, 1) + conv(c, c, 1))

    def slice_transform(i):
        w = [i, 224, 176, 128, 64, 32]
        return sum(conv(a, b, 3) for a, b in zip(w, w[1:]))

    def eb(c):
        return sum(p.numel() for p in EntropyBottleneck(c).parameters())

    down = lambda i, o: conv(i, o, 5) + gdn(o) + sal(o)  # noqa: E731  Downblock_SAL
    up = lambda i, o: sal(i) + conv(i, o, 5) + gdn(o)  # noqa: E731  Upblock_SAL
    total = down(3, N) + down(N, N) + win_attention(N, 8, 8)
    total += down(N, N) + down(N, M) + win_attention(M, 8, 4)
    total += win_attention(M, 8, 4) + up(M, N) + up(N, N) + win_attention(N, 8, 8) + up(N, N) + up(N, 32)
    total += conv(32, 3, 1)
    total += conv(320, 320, 3) + conv(320, 288, 3) + conv(288, 256, 3) + conv(256, 224, 3) + conv(224, 192, 3)
    h_s = (conv(192, 192, 3) + conv(192, 224 * 4, 3) + conv(224, 256, 3) + conv(256, 288 * 4, 3)
           + conv(288, 320, 3))
    total += 2 * h_s
    total += conv(192, 128, 1) + gdn(128) + conv(128, 96, 1) + gdn(96) + conv(96, 96, 1)  # g_ab
    total += conv(96, 128, 1) + gdn(128) + conv(128, 192, 1) + gdn(192) + conv(192, 192, 1)  # g_sb
    total += conv(320, 192, 1) + gdn(192) + conv(192, 128, 1) + gdn(128) + conv(128, 96, 1)  # g_ab2
    total += conv(96, 128, 1) + gdn(128) + conv(128, 192, 1) + gdn(192) + conv(192, 320, 1)  # g_sb2
    total += sum(2 * slice_transform(320 + 32 * min(i, 5)) + slice_transform(320 + 32 * min(i + 1, 6))
                 for i in range(10))
    total += eb(192) + 2 * eb(96)
    return total + 2 * rat(192) + 3 * rat(320)


def test_paper_size_parameters_and_shapes():
    torch.manual_seed(0)
    model = SegPIC().eval()
    ours = sum(p.numel() for p in model.parameters())
    assert ours == official_parameter_count() == 83_503_971
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        out = model(x)
    assert out["x_hat"].shape == x.shape
    shapes = {k: tuple(v.shape) for k, v in out["likelihoods"].items()}
    assert shapes == {"y": (1, 320, 4, 8), "z": (1, 192, 1, 2), "prototypes1": (16, 96, 1, 1),
                      "prototypes2": (16, 96, 1, 1)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("segpic", TINY).eval()
    model.update(force=True)
    path = tmp_path_factory.mktemp("segpic") / "checkpoint.pt"
    save_checkpoint(path, model, "segpic", TINY, 0.01)
    return load_checkpoint(path)


def test_round_trip_through_the_container(tiny_checkpoint, mirror):
    ckpt = tiny_checkpoint
    image = load_rgb8(mirror / "kodak" / "kodim23.png").array[100:171, 300:397]  # 71 x 97
    bs, enc_latent = encode(ckpt, image)
    assert len(bs.streams) == 4 and all(len(s) >= 8 for s in bs.streams)
    data = encode_container(bs)
    # bpp counts the whole file: header plus every stream, prototypes included.
    header = len(data) - sum(len(s) for s in bs.streams)
    assert 0 < header < 100

    captured = []
    hook = ckpt.model.g_s0.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    decoded, dec_latent = decode(ckpt, decode_container(data))
    hook.remove()
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    # Entropy coding is lossless: the synthesis gets exactly the encoder's latent.
    assert torch.equal(dec_latent, enc_latent) and torch.equal(captured[0], enc_latent)
    assert torch.equal(decode(ckpt, decode_container(data))[1], enc_latent)  # deterministic

    # The file's size is what the model's likelihoods predict, streams and all
    # (loose: a random model's scales sit where the coder's table is coarse).
    x = pad_to_multiple(to_tensor(image), 64)
    with torch.no_grad():
        estimated = bpp_from_likelihoods(ckpt.model(x)["likelihoods"], image.shape[0] * image.shape[1])
    assert 8 * len(data) / (image.shape[0] * image.shape[1]) == pytest.approx(estimated, rel=0.5)

    from dataclasses import replace

    with pytest.raises(FormatError, match="3 streams, segpic codes 4"):
        decode(ckpt, replace(bs, streams=bs.streams[:3]), "x.lic")


def test_crops_cut_and_flip_image_and_partition_together():
    rng = np.random.default_rng(0)
    partition = rng.integers(0, 6, (80, 90)).astype(np.uint16)
    palette = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    image = palette[partition]  # each region's colour says its id
    crops = PartitionedCrops([image], [partition], 64, seed=0)
    flips = set()
    for _ in range(4):
        x, parts = crops.batch(4)
        assert x.shape == (4, 3, 64, 64) and parts.shape == (4, 64, 64) and parts.dtype == torch.long
        for patch, part in zip((x * 255).round().byte().permute(0, 2, 3, 1).numpy(), parts.numpy()):
            assert part.max() + 1 == len(np.unique(part))  # renumbered 0..K-1
            for k in np.unique(part):  # one colour per region, one region per colour
                assert len(np.unique(patch[part == k], axis=0)) == 1
            colours = {tuple(c) for c in patch.reshape(-1, 3)}
            assert len(colours) == len(np.unique(part))
            # Where the crop came from, and whether flipped: find it in the image.
            flips.add(next(f for f, view in (("none", image), ("h", image[:, ::-1]),
                                              ("v", image[::-1]), ("hv", image[::-1, ::-1]))
                           if any((view[t:t + 64, l:l + 64] == patch).all()
                                  for t in range(17) for l in range(27))))
    assert flips == {"none", "h", "v", "hv"}
    with pytest.raises(ConfigError, match="partition .* differs from the image"):
        PartitionedCrops([image], [partition[:-1]], 64, seed=0)


def tiny_set(n=2, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (70, 80, 3), dtype=np.uint8) for _ in range(n)]
    partitions = [np.repeat(np.arange(7), 10)[:, None].repeat(80, 1).astype(np.uint16) for _ in range(n)]
    return images, partitions


@pytest.mark.parametrize("use_mask", [1, 0])
def test_training_with_masks_and_with_the_grid(use_mask, tmp_path):
    images, partitions = tiny_set()
    cfg = train_config(REPO / "params.yaml", steps=2, batch_size=2, crop=64, lr=1e-3, seed=0,
                       device="cpu", log_every=1, lr_schedule="none", val_split=None)
    config = dict(TINY, use_mask=use_mask)
    summary = train_model("segpic", config, 0.01, cfg, images, tmp_path / "c.pt",
                          partitions=partitions if use_mask else None)
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["loss"])
    assert summary["use_mask"] == use_mask
    assert load_checkpoint(tmp_path / "c.pt").config == config
    with pytest.raises(ConfigError, match="region partitions"):
        train_model("segpic", config, 0.01, cfg, images, tmp_path / "d.pt",
                    partitions=None if use_mask else partitions)


def test_the_resume_digest_covers_the_partitions():
    images, partitions = tiny_set()
    cfg = train_config(REPO / "params.yaml", steps=2, batch_size=2, crop=64, val_split=None)
    other = [p.copy() for p in partitions]
    other[1][0, 0] = 9
    digests = {training_digest("segpic", TINY, 0.01, cfg, images, None, p)
               for p in (partitions, other, None)}
    assert len(digests) == 3


# --- the stages (dvc repro of SegPIC with masks and with the grid: tests/test_zoo.py)


def test_missing_masks_are_named(mirror, tmp_path):
    from licbench.data.datasets import prepare_dataset
    from licbench.data.sources import kodak
    from licbench.train import run_train_stage

    root = tmp_path / "data"  # the images, but no masks stage output
    prepare_dataset(kodak(), root, root / "manifests" / "kodak.parquet", mirror=mirror)
    params = load_params(REPO / "params.yaml", {
        "datasets": {"sets": ["kodak"]}, "archs": ["segpic"], "architectures": {"segpic": TINY},
        "train": {"datasets": ["kodak"], "split": "test", "steps": 1, "batch_size": 2, "crop": 64,
                  "device": "cpu", "val_split": None},
        "evaluate": {"datasets": ["kodak"]}, "masks": {"sets": {"kodak": ["test"]}}})
    with pytest.raises(MaskError, match=r"^kodak has no mask table of split 'test': add kodak: \[test\] "
                                        r"to masks.sets and run the masks stage$"):
        run_train_stage(params.train, "segpic", TINY, 0.01, tmp_path / "c.pt", tmp_path / "t.json", root,
                        mlflow_to=Target("test", "tests"))
    assert not (tmp_path / "c.pt").exists()


def test_quick_and_paper_settings_are_valid():
    quick = load_params(REPO / "params.yaml")
    build_model("segpic", quick.architecture("segpic", 0.01))
    assert "segpic" not in quick.archs
    paper = load_params(REPO / "configs" / "paper-segpic.yaml")
    cfg = paper.train
    assert (cfg.crop, cfg.batch_size, cfg.lr) == (256, 32, 1e-4)
    assert (cfg.lr_schedule, cfg.lr_factor, cfg.lr_patience) == ("plateau", 0.5, 16)
    assert all(paper.architecture("segpic", lmbda) == {"N": 192, "M": 320, "grid": 4, "use_mask": 1}
               for lmbda in paper.lambdas)
    # The authors' recipe: COCO train2017 with its panoptic masks.
    assert cfg.datasets == ["coco2017"] and cfg.split == "train2017"
    assert paper.masks.generator == "coco-panoptic" and paper.masks.sets == {"coco2017": ["train2017"]}
    published = json.loads((REPO / "src/licbench/report/published/kodak/segpic.json").read_text())
    assert len(published["results"]["bpp"]) == len(paper.lambdas) == 6
