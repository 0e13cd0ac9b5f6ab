"""The paper-scale sets in their real archive layouts, built small here and
served on 127.0.0.1: download, extraction, verification, pinning, a set not
pinned, COCO's panoptic masks, training on a union of sets, and an evaluation
on a new set through the stage functions."""

import dataclasses
import hashlib
import io
import json
import logging
import tarfile
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import REPO
from licbench.tracking import Target
from licbench import cli
from licbench.config import load_params, load_section
from licbench.data import sources
from licbench.data.crops import RandomCrops
from licbench.data.datasets import manifest_metadata, pin_dataset, prepare_dataset
from licbench.data.sources import SOURCES, clic2020_pro_valid, coco2017, div2k, flickr2k, tecnick
from licbench.data.trainset import load_training_set, run_trainset_stage, trainset_path
from licbench.errors import ChecksumError, ConfigError, DownloadError, MaskError, ParamsError
from licbench.masks import load_masks
from licbench.masks.panoptic import rgb_to_id
from licbench.masks.stage import run_masks_stage
from licbench.masks.table import read_index
from licbench.models import ARCHITECTURES
from licbench.train import training_digest


# --- archives in the sets' real layouts ---------------------------------------

def png(h, w, seed) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(h, w, seed) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(h, w, seed))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:  # Flickr2K.tar: not compressed
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def served(source, server, archives: dict[str, bytes], counts: bool = False):
    """``source`` with its archives served by ``server``, their recorded size and
    sha256 those of these bytes; ``counts``: keep the documented file counts
    (else each rule accepts any number, as these archives are small)."""
    new = []
    for archive in source.archives:
        data = archives[archive.name]
        server.routes[f"/{archive.name}"] = [(200, data)]
        new.append(dataclasses.replace(archive, urls=(server.url(f"/{archive.name}"),), bytes=len(data),
                                       sha256=hashlib.sha256(data).hexdigest()))
    members = source.members if counts else tuple(dataclasses.replace(r, count=None) for r in source.members)
    return dataclasses.replace(source, archives=tuple(new), members=members)


def div2k_archives(n_train=3, n_valid=2):
    train = {f"DIV2K_train_HR/{i:04d}.png": png(64 + 8 * i, 96, i) for i in range(1, n_train + 1)}
    valid = {f"DIV2K_valid_HR/{i:04d}.png": png(72, 80, i) for i in range(801, 801 + n_valid)}
    return {"DIV2K_train_HR.zip": make_zip(train), "DIV2K_valid_HR.zip": make_zip(valid)}


def flickr2k_archives():
    members = {}
    for i in range(1, 4):
        members[f"Flickr2K/Flickr2K_HR/{i:06d}.png"] = png(128, 160, 10 + i)
        members[f"Flickr2K/Flickr2K_LR_bicubic/X2/{i:06d}x2.png"] = png(64, 80, 20 + i)
    return {"Flickr2K.tar": make_tar(members)}


def segments_png(ids: np.ndarray) -> bytes:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def panoptic_ids(h, w, image_id) -> np.ndarray:
    """Three segments (one of them two pieces) and void pixels."""
    ids = np.zeros((h, w), np.int64)
    ids[:, : w // 2] = 1000 + image_id
    ids[: h // 2, w // 2:] = 70000 + image_id  # an id that needs the blue channel
    ids[h - 4:, w // 2 + 4: w // 2 + 10] = 1000 + image_id  # the same id apart: still one segment
    ids[h // 2:, w - 10:] = 300 + image_id
    return ids  # the rest (bottom middle) is void, 0


def coco_archives(train_ids=(9, 25, 30), val_ids=(139,), size=(48, 64)):
    h, w = size
    archives, panoptic = {}, {}
    for split, ids in (("train2017", train_ids), ("val2017", val_ids)):
        archives[f"{split}.zip"] = make_zip({f"{split}/{i:012d}.jpg": jpeg(h, w, i) for i in ids})
        pngs, images, annotations = {}, [], []
        for i in ids:
            seg = panoptic_ids(h, w, i)
            pngs[f"panoptic_{split}/{i:012d}.png"] = segments_png(seg)
            images.append({"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w})
            annotations.append({"image_id": i, "file_name": f"{i:012d}.png", "segments_info": [
                {"id": int(s), "category_id": 1 + k, "iscrowd": 0, "area": int((seg == s).sum()), "bbox": [0, 0, 1, 1]}
                for k, s in enumerate(sorted(set(np.unique(seg)) - {0}))]})
        panoptic[f"annotations/panoptic_{split}.json"] = json.dumps(
            {"images": images, "annotations": annotations, "categories": []}).encode()
        panoptic[f"annotations/panoptic_{split}.zip"] = make_zip(pngs)
    panoptic["__MACOSX/annotations/._panoptic_train2017.json"] = b"resource fork"
    archives["panoptic_annotations_trainval2017.zip"] = make_zip(panoptic)
    return archives


@pytest.fixture
def checksums(tmp_path, monkeypatch):
    """checksums/<set>.tsv in a folder of this test's (every set unpinned, as
    the new sets are), read afresh."""
    folder = tmp_path / "checksums"
    folder.mkdir()
    for name in SOURCES:
        (folder / f"{name}.tsv").write_text("file\tbytes\tsha256\n")
    monkeypatch.setattr(sources, "CHECKSUMS_DIR", folder)
    sources.load_checksums.cache_clear()
    yield folder
    sources.load_checksums.cache_clear()


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- the real sources ---------------------------------------------------------

def test_every_set_has_its_url_layout_checksums_and_evaluation_split():
    for name, factory in SOURCES.items():
        s = factory()
        assert s.name == name and s.citation and s.homepage and s.licence
        assert sources.checksums_path(name).is_file(), name  # a DVC dependency of datasets@<set>
        assert s.eval_split in s.split_names(), name
        assert (s.file_urls and s.pinned) or (s.archives and s.members), name
        for archive in s.archives:
            assert all(u.startswith(("http://", "https://")) for u in archive.urls)
            assert any(r.archive == archive.name for r in s.members), archive.name
    assert (div2k().eval_split, clic2020_pro_valid().eval_split, tecnick().eval_split,
            coco2017().eval_split) == ("val", "valid", "test", "val2017")
    # The archives' records (tensorflow/datasets url_checksums).
    assert div2k().archive("DIV2K_train_HR.zip").bytes == 3530603713
    assert coco2017().archive("train2017.zip").sha256.startswith("69a8bb58")


def test_rules_map_the_documented_member_names():
    [train, valid] = div2k().members
    assert train.relpath("DIV2K_train_HR/0001.png") == "train/0001.png"
    assert valid.relpath("DIV2K_valid_HR/0801.png") == "val/0801.png"
    assert train.relpath("DIV2K_train_HR/readme.txt") is None
    [hr] = flickr2k().members
    assert hr.relpath("Flickr2K/Flickr2K_HR/000001.png") == "000001.png"
    assert hr.relpath("Flickr2K/Flickr2K_LR_bicubic/X2/000001x2.png") is None
    [clic] = clic2020_pro_valid().members
    assert clic.relpath("valid/alberto-montalesi-176097.png") == "alberto-montalesi-176097.png"
    assert clic.relpath("__MACOSX/valid/._alberto-montalesi-176097.png") is None
    [rgb] = tecnick().members
    for folder in ("", "TESTIMAGES/", "testimages/TESTIMAGES/"):  # the folders above RGB/ vary
        assert rgb.relpath(f"{folder}RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_001.png") == "RGB_OR_1200x1200_001.png"
    assert rgb.relpath("GRAY/GRAY_OR_1200x1200/GRAY_OR_1200x1200_001.png") is None
    coco = coco2017()
    assert coco.rule_of("annotations/panoptic_train2017/000000000009.png").inner == \
        "annotations/panoptic_train2017.zip"
    assert not coco.is_image("annotations/panoptic_val2017.json") and coco.is_image("val2017/000000000139.jpg")


# --- download, extraction, verification, pinning --------------------------------

def test_an_unpinned_set_downloads_says_so_and_is_marked_in_its_manifest(file_server, checksums, tmp_path,
                                                                          caplog):
    source = served(div2k(), file_server, div2k_archives())
    assert not source.pinned
    with caplog.at_level(logging.WARNING, logger="licbench.data.datasets"):
        table = prepare_dataset(source, tmp_path / "data", tmp_path / "data/manifests/div2k.parquet",
                                cache_dir=tmp_path / "cache")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ("div2k is not pinned (checked: its archives, against their recorded sha256; the files "
                       "are not pinned); `licbench datasets pin div2k` pins its files")
    assert files_under(tmp_path / "data/div2k") == [
        "train/0001.png", "train/0002.png", "train/0003.png", "val/0801.png", "val/0802.png"]
    assert table["split"].to_pylist() == ["train"] * 3 + ["val"] * 2
    assert table["height"].to_pylist()[:3] == [72, 80, 88]
    meta = manifest_metadata(pq.read_table(tmp_path / "data/manifests/div2k.parquet"))
    assert meta["pinned"] == "false" and meta["dataset"] == "div2k"
    on_disk = tmp_path / "data/div2k/train/0002.png"
    assert table["sha256"].to_pylist()[1] == hashlib.sha256(on_disk.read_bytes()).hexdigest()


def test_an_archive_that_is_not_the_recorded_one_is_refused(file_server, checksums, tmp_path):
    source = served(div2k(), file_server, div2k_archives())
    source = dataclasses.replace(source, archives=(
        dataclasses.replace(source.archives[0], sha256="0" * 64), source.archives[1]))
    with pytest.raises(ChecksumError, match=r"DIV2K_train_HR\.zip: sha256 mismatch"):
        prepare_dataset(source, tmp_path / "data", tmp_path / "m.parquet", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "DIV2K_train_HR.zip").exists()


def test_the_documented_count_is_checked_while_a_set_is_not_pinned(file_server, checksums, tmp_path):
    source = served(div2k(), file_server, div2k_archives(), counts=True)
    with pytest.raises(DownloadError, match=r"^div2k: 3 file\(s\) in train/ \(from DIV2K_train_HR\.zip\), "
                                            r"where div2k's documentation lists 800$"):
        prepare_dataset(source, tmp_path / "data", tmp_path / "m.parquet", cache_dir=tmp_path / "cache")


def test_pin_writes_every_member_and_later_fetches_are_checked_against_it(file_server, checksums, tmp_path,
                                                                         monkeypatch, capsys):
    source = served(div2k(), file_server, div2k_archives())
    monkeypatch.setitem(SOURCES, "div2k", lambda: dataclasses.replace(
        source, files=sources.load_checksums("div2k")))
    assert cli.main(["datasets", "pin", "div2k", "--cache", str(tmp_path / "cache")]) == 0
    table = checksums / "div2k.tsv"
    assert capsys.readouterr().out == f"{table}: 5 files of div2k pinned from its archives; commit it\n"
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0] == ["file", "bytes", "sha256"] and [r[0] for r in rows[1:]] == [
        "train/0001.png", "train/0002.png", "train/0003.png", "val/0801.png", "val/0802.png"]
    member = zipfile.ZipFile(io.BytesIO(div2k_archives()["DIV2K_train_HR.zip"])).read("DIV2K_train_HR/0003.png")
    assert rows[3][1:] == [str(len(member)), hashlib.sha256(member).hexdigest()]
    assert not (tmp_path / "data").exists()  # hashed as it streamed: nothing extracted
    # Pinned: the manifest says so, and a member that changed is refused.
    pinned = SOURCES["div2k"]()
    assert pinned.pinned and len(pinned.files) == 5
    table_ = prepare_dataset(pinned, tmp_path / "data", tmp_path / "m.parquet", cache_dir=tmp_path / "cache")
    assert manifest_metadata(table_)["pinned"] == "true"
    other = div2k_archives()
    other["DIV2K_valid_HR.zip"] = make_zip({"DIV2K_valid_HR/0801.png": png(72, 80, 5),
                                            "DIV2K_valid_HR/0802.png": png(72, 80, 802)})
    changed = dataclasses.replace(served(div2k(), file_server, other), files=pinned.files)
    with pytest.raises(ChecksumError, match=r"DIV2K_valid_HR/0801\.png: sha256 mismatch"):
        prepare_dataset(changed, tmp_path / "data2", tmp_path / "m2.parquet", cache_dir=tmp_path / "cache2")
    assert cli.main(["datasets", "pin", "div2k"]) == 2
    assert "already pins 5 files of div2k" in capsys.readouterr().err


def test_a_mirror_of_an_unpinned_set_is_its_files_under_their_paths(checksums, tmp_path):
    mirror = tmp_path / "mirror"
    for relpath, data in {"train/0001.png": png(64, 64, 1), "val/0801.png": png(64, 64, 2),
                          "notes.txt": b"not a file of the set"}.items():
        (mirror / "div2k" / relpath).parent.mkdir(parents=True, exist_ok=True)
        (mirror / "div2k" / relpath).write_bytes(data)
    source = dataclasses.replace(div2k(), members=tuple(dataclasses.replace(r, count=None)
                                                        for r in div2k().members))
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "m.parquet", mirror=mirror)
    assert table["path"].to_pylist() == ["div2k/train/0001.png", "div2k/val/0801.png"]
    assert manifest_metadata(table)["verified"] == "nothing: no checksum is recorded for these files"
    path, count = pin_dataset(source, mirror=mirror)
    assert count == 2 and path == checksums / "div2k.tsv"


def test_flickr2k_keeps_the_high_resolution_images_of_its_tar(file_server, checksums, tmp_path):
    source = served(flickr2k(), file_server, flickr2k_archives())
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "m.parquet", cache_dir=tmp_path / "cache")
    assert table["path"].to_pylist() == [f"flickr2k/{i:06d}.png" for i in (1, 2, 3)]
    assert set(table["split"].to_pylist()) == {"train"}


def test_clic_and_tecnick_keep_their_images_from_their_zips(file_server, checksums, tmp_path):
    clic = {"professional_valid_2020.zip": make_zip({
        "valid/a.png": png(40, 48, 1), "valid/b.png": png(48, 40, 2), "__MACOSX/valid/._a.png": b"fork"})}
    table = prepare_dataset(served(clic2020_pro_valid(), file_server, clic), tmp_path / "data",
                            tmp_path / "c.parquet", cache_dir=tmp_path / "cache")
    assert table["path"].to_pylist() == ["clic2020-pro-valid/a.png", "clic2020-pro-valid/b.png"]
    assert set(table["split"].to_pylist()) == {"valid"}
    images = {f"TESTIMAGES/RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_{i:03d}.png": png(32, 32, i) for i in (1, 2)}
    images["TESTIMAGES/GRAY/GRAY_OR_1200x1200/GRAY_OR_1200x1200_001.png"] = png(32, 32, 9)
    table = prepare_dataset(served(tecnick(), file_server, {"testimages.zip": make_zip(images)}),
                            tmp_path / "data", tmp_path / "t.parquet", cache_dir=tmp_path / "cache")
    assert table["path"].to_pylist() == ["tecnick/RGB_OR_1200x1200_001.png", "tecnick/RGB_OR_1200x1200_002.png"]
    twice = {**images, "OTHER/RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_001.png": png(32, 32, 3)}
    with pytest.raises(DownloadError, match=r"both become RGB_OR_1200x1200_001\.png"):
        prepare_dataset(served(tecnick(), file_server, {"testimages.zip": make_zip(twice)}),
                        tmp_path / "data2", tmp_path / "t2.parquet", cache_dir=tmp_path / "cache2")


# --- COCO and its panoptic masks ---------------------------------------------------

@pytest.fixture
def coco_root(file_server, checksums, tmp_path):
    root = tmp_path / "data"
    prepare_dataset(served(coco2017(), file_server, coco_archives()), root, root / "manifests/coco2017.parquet",
                    cache_dir=tmp_path / "cache")
    return root


def masks_cfg(**overrides):
    return load_section(REPO / "params.yaml", "masks", {
        "sets": {"coco2017": ["train2017"]}, "generator": "coco-panoptic", "workers": 1, "overlays": 1,
        **overrides})


def test_coco_keeps_images_and_panoptic_annotations_with_the_authors_layout(coco_root):
    table = pq.read_table(coco_root / "manifests/coco2017.parquet")
    assert table["path"].to_pylist() == [
        "coco2017/train2017/000000000009.jpg", "coco2017/train2017/000000000025.jpg",
        "coco2017/train2017/000000000030.jpg", "coco2017/val2017/000000000139.jpg"]
    assert table["split"].to_pylist() == ["train2017"] * 3 + ["val2017"]
    assert files_under(coco_root / "coco2017/annotations") == [
        "panoptic_train2017.json", *(f"panoptic_train2017/{i:012d}.png" for i in (9, 25, 30)),
        "panoptic_val2017.json", "panoptic_val2017/000000000139.png"]


def test_panoptic_masks_are_the_png_segments_one_region_each(coco_root, tmp_path):
    summary = run_masks_stage(masks_cfg(), "coco2017", tmp_path / "masks", tmp_path / "masks.json", coco_root,
                              mirror=None, mlflow_to=Target("test", "tests"))
    assert summary["images"] == 3 and summary["covered_fraction"] == 1.0
    table = load_masks(tmp_path / "masks", coco_root / "manifests/coco2017.parquet")
    assert table.metadata["generator"] == "coco-panoptic"
    for i in (9, 25, 30):
        name = f"coco2017/train2017/{i:012d}.jpg"
        png_path = coco_root / f"coco2017/annotations/panoptic_train2017/{i:012d}.png"
        ids = rgb_to_id(np.asarray(Image.open(png_path).convert("RGB")))
        part = table.partition(name, ids.shape)
        # One region per segment id (its two pieces together), and one of the void pixels.
        assert len(np.unique(part)) == len(np.unique(ids)) == 4
        pairs = np.unique(np.stack([part.ravel(), ids.ravel()]), axis=1)
        assert pairs.shape[1] == 4  # a bijection between regions and segment ids
        assert sorted(m.sum() for m in table.masks(name)) == sorted(np.unique(ids, return_counts=True)[1])
    index = read_index(coco_root, "coco2017")
    assert index["generator"] == "coco-panoptic" and index["splits"] == ["train2017"]
    assert index["masks_sha256"] == hashlib.sha256((tmp_path / "masks/masks.parquet").read_bytes()).hexdigest()


def test_a_panoptic_png_that_disagrees_with_its_json_is_named(coco_root, tmp_path):
    png_path = coco_root / "coco2017/annotations/panoptic_train2017/000000000025.png"
    ids = panoptic_ids(48, 64, 25)
    ids[0, 0] = 4242
    png_path.write_bytes(segments_png(ids))
    with pytest.raises(MaskError, match=r"000000000025\.png: segment id\(s\) \[4242\] are in no segments_info"):
        run_masks_stage(masks_cfg(), "coco2017", tmp_path / "masks", tmp_path / "m.json", coco_root,
                        mirror=None, mlflow_to=Target("test", "tests"))


def test_coco_panoptic_on_a_set_without_panoptic_annotations_is_refused():
    with pytest.raises(ParamsError, match=r"params.yaml: masks.sets.bsds500: masks.generator is coco-panoptic, "
                                          r"but bsds500 has no panoptic annotations of train, val; sets with "
                                          r"them: coco2017; or generator sam or fallback"):
        load_params(REPO / "params.yaml", {"datasets": {"sets": ["kodak", "bsds500", "coco2017"]},
                                           "masks": {"generator": "coco-panoptic"}}, sources=SOURCES)


# --- training on a union --------------------------------------------------------------

def union_cfg(**overrides):
    return load_section(REPO / "params.yaml", "train", {
        "datasets": ["div2k", "flickr2k"], "split": "train", "val_split": "val", "val_images": 2,
        "val_crop": 64, "crop": 64, "steps": 2, "batch_size": 2, "device": "cpu", "lr_schedule": "none",
        **overrides})


@pytest.fixture
def union_root(file_server, checksums, tmp_path):
    root = tmp_path / "data"
    for source, archives in ((div2k(), div2k_archives()), (flickr2k(), flickr2k_archives())):
        prepare_dataset(served(source, file_server, archives), root, root / f"manifests/{source.name}.parquet",
                        cache_dir=tmp_path / "cache")
    return root


def test_the_union_is_every_set_of_the_list_and_its_digest_covers_them(union_root, caplog):
    cfg = union_cfg()
    both = load_training_set(cfg, union_root, partitions=False)
    assert [r["path"] for r in both.manifest.to_pylist()] == [
        "div2k/train/0001.png", "div2k/train/0002.png", "div2k/train/0003.png",
        "flickr2k/000001.png", "flickr2k/000002.png", "flickr2k/000003.png",
        "div2k/val/0801.png", "div2k/val/0802.png"]
    assert len(both.images) == 6 and len(both.val_images) == 2 and both.partitions is None
    alone = load_training_set(union_cfg(datasets=["div2k"]), union_root, partitions=False)
    assert len(alone.images) == 3

    def digest(cfg, data):
        return training_digest("mbt2018-mean", {"N": 16, "M": 24}, 0.01, cfg, data.images, data.val_images)

    assert digest(cfg, both) != digest(union_cfg(datasets=["div2k"]), alone)
    # The same settings and images give the same digest: a resumed run finds its state.
    assert digest(cfg, both) == digest(cfg, load_training_set(cfg, union_root, partitions=False))
    # Images smaller than the crop are left out, with one line.
    with caplog.at_level(logging.WARNING, logger="licbench.data.trainset"):
        large = load_training_set(union_cfg(crop=128), union_root, partitions=False)
    assert [im.shape[:2] for im in large.images] == [(128, 160)] * 3
    assert ("3 of 6 training images of div2k+flickr2k are smaller than the 128-pixel crop (the smallest: "
            "div2k/train/0001.png, 96 x 72); left out") in caplog.text


def test_crops_are_drawn_in_proportion_to_pixels():
    small, large = np.zeros((64, 64, 3), np.uint8), np.full((128, 256, 3), 255, np.uint8)
    crops = RandomCrops([small, large], 32, seed=3)
    means = torch.cat([crops.batch(50).mean(dim=(1, 2, 3)) for _ in range(40)])
    share = float((means > 0.5).float().mean())  # crops from the large image
    assert abs(share - 8 / 9) < 0.03  # 32768 of 36864 pixels; 2000 draws: sd 0.007
    again = RandomCrops([small, large], 32, seed=3)
    assert torch.equal(again.batch(50).mean(dim=(1, 2, 3)), means[:50])  # seeded


def test_the_trainset_stage_records_the_union_and_training_refuses_another(union_root):
    run_trainset_stage(union_cfg(), union_root)
    recorded = pq.read_table(trainset_path(union_root))
    meta = json.loads(recorded.schema.metadata[b"licbench.trainset"])
    assert meta["datasets"] == ["div2k", "flickr2k"] and set(meta["sets"]) == {"div2k", "flickr2k"}
    assert meta["sets"]["div2k"]["pinned"] is False and meta["sets"]["div2k"]["masks"] is None
    first = trainset_path(union_root).read_bytes()
    run_trainset_stage(union_cfg(), union_root)
    assert trainset_path(union_root).read_bytes() == first  # DVC sees no change: nothing retrains
    load_training_set(union_cfg(), union_root, partitions=False)
    with pytest.raises(ConfigError, match=r"trainset\.parquet: made for another training set"):
        load_training_set(union_cfg(datasets=["div2k"]), union_root, partitions=False)


def test_a_union_trained_with_masks_needs_every_set_masked():
    with pytest.raises(ParamsError, match=r"params.yaml: masks.sets: no 'train' masks of flickr2k; segpic "
                                          r"trains with the masks of every set of train.datasets: add "
                                          r"flickr2k: \[train\]"):
        load_params(REPO / "params.yaml", {
            "datasets": {"sets": ["kodak", "div2k", "flickr2k"]}, "archs": ["segpic"],
            "train": {"datasets": ["div2k", "flickr2k"], "split": "train", "val_split": "val"},
            "evaluate": {"datasets": ["kodak"]}, "masks": {"sets": {"div2k": ["train"]}}},
            sources=SOURCES, architectures=ARCHITECTURES)
    with pytest.raises(ParamsError, match=r"train.val_split: 'valid' is a split of no set of train.datasets"):
        load_params(REPO / "params.yaml", {
            "datasets": {"sets": ["kodak", "div2k", "flickr2k"]},
            "train": {"datasets": ["div2k", "flickr2k"], "split": "train", "val_split": "valid"},
            "evaluate": {"datasets": ["kodak"]}, "masks": {"sets": {}}}, sources=SOURCES)


# --- evaluation on a new set, through the stage functions ---------------------------

def test_train_on_a_union_then_evaluate_and_report_on_a_new_set(union_root, file_server, tmp_path):
    from licbench.anchors import run_anchors_stage
    from licbench.evaluate import run_evaluate_stage
    from licbench.report.rd import run_report_stage
    from licbench.train import run_train_stage

    images = {f"RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_{i:03d}.png": png(64, 64, 40 + i) for i in (1, 2)}
    prepare_dataset(served(tecnick(), file_server, {"testimages.zip": make_zip(images)}), union_root,
                    union_root / "manifests/tecnick.parquet", cache_dir=tmp_path / "cache")
    params = load_params(REPO / "params.yaml", {
        "datasets": {"sets": ["div2k", "flickr2k", "tecnick"]},
        "architectures": {"mbt2018-mean": {"N": 16, "M": 24}}, "lambdas": [0.01, 0.05],
        "train": union_cfg().model_dump(),
        "evaluate": {"datasets": ["tecnick"], "device": "cpu", "max_images": None},
        "anchors": {"codecs": {"jpeg": [20, 80]}, "binaries": {}, "workers": 1},
        "report": {"method": "pchip", "published": ["hpcm-large", "vtm"]},
        "masks": {"sets": {}}, "mlflow": {"experiment": "test"}}, sources=SOURCES)
    for lmbda in params.lambdas:
        model = tmp_path / f"models/mbt2018-mean-{lmbda}"
        summary = run_train_stage(params.train, "mbt2018-mean", params.architecture("mbt2018-mean", lmbda), lmbda,
                                  model / "checkpoint.pt", model / "train.json", union_root, mlflow_to=Target("test", "tests"))
        assert summary["steps"] == 2
        run_evaluate_stage(params.evaluate, model / "checkpoint.pt", "tecnick",
                           union_root / f"eval/tecnick/mbt2018-mean-{lmbda}",
                           union_root / f"metrics/tecnick/mbt2018-mean-{lmbda}.json", union_root, mlflow_to=Target("test", "tests"))
    evaluated = json.loads((union_root / "metrics/tecnick/mbt2018-mean-0.01.json").read_text())
    assert evaluated["dataset"] == "tecnick" and evaluated["images"] == 2  # the set's evaluation split
    run_anchors_stage(params.anchors, "tecnick", union_root / "anchors/tecnick", union_root)
    report = run_report_stage(params.report, "tecnick", tmp_path / "report", union_root, archs=params.archs,
                              lambdas=params.lambdas, mlflow_to=Target("test", "tests"))
    kinds = {c.id: c.kind for c in report.curves}
    # HPCM's Tecnick points are drawn; Kodak's VTM curve is not (none is published for Tecnick).
    assert kinds == {"mbt2018-mean": "trained", "jpeg": "anchor", "published_hpcm_large": "published"}
    assert "HPCM-Large (paper) [published]" in report.markdown
