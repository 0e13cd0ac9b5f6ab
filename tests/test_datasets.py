import errno
import hashlib
import io
import logging
import os
import tarfile
import zipfile

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from licbench.config import load_section
from licbench.data.datasets import manifest_digest, prepare_dataset, run_datasets_stage
from licbench.data.sources import Archive, DatasetSource, ExpectedFile, Members, bsds500, kodak
from licbench.errors import ChecksumError, DiskSpaceError, DownloadError
from licbench.fileio import atomic_path

from conftest import Reply


def expected(path, relpath):
    data = path.read_bytes()
    return ExpectedFile(relpath, hashlib.sha256(data).hexdigest(), len(data))


def test_real_sources_use_the_real_urls():
    assert kodak().file_urls == ("http://r0k.us/graphics/kodak/kodak/",)
    assert len(kodak().files) == 24
    b = bsds500()
    assert any(u.endswith("/BSR/BSR_bsds500.tgz") for [archive] in [b.archives] for u in archive.urls)
    assert {b.split_of(f.relpath) for f in b.files} == {"train", "val", "test"}
    assert len(b.files) == 500


def test_kodak_from_mirror_writes_verified_files_and_manifest(mirror, tmp_path):
    table = prepare_dataset(kodak(), tmp_path / "data", tmp_path / "data/manifests/kodak.parquet",
                            mirror=mirror)
    assert table.num_rows == 24
    on_disk = pq.read_table(tmp_path / "data/manifests/kodak.parquet")
    assert on_disk.column_names == ["path", "split", "width", "height", "bytes", "sha256"]
    row = on_disk.slice(0, 1).to_pylist()[0]
    assert row == {
        "path": "kodak/kodim01.png", "split": "test", "width": 768, "height": 512,
        "bytes": 736501,
        "sha256": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    }
    assert set(on_disk["height"].to_pylist()) == {512, 768}
    assert manifest_digest(on_disk) == manifest_digest(table)


def test_mirror_missing_files_are_listed(mirror, tmp_path):
    partial = tmp_path / "mirror" / "kodak"
    partial.mkdir(parents=True)
    for f in kodak().files[2:]:
        (partial / f.relpath).symlink_to(mirror / "kodak" / f.relpath)
    with pytest.raises(DownloadError, match=r"lacks 2 file\(s\): kodim01\.png, kodim02\.png"):
        prepare_dataset(kodak(), tmp_path / "data", tmp_path / "m.parquet", mirror=tmp_path / "mirror")
    assert not (tmp_path / "m.parquet").exists()


def test_corrupted_mirror_file_is_named_and_not_kept(mirror, tmp_path):
    bad = tmp_path / "mirror" / "kodak"
    bad.mkdir(parents=True)
    for f in kodak().files:
        (bad / f.relpath).symlink_to(mirror / "kodak" / f.relpath)
    (bad / "kodim07.png").unlink()
    (bad / "kodim07.png").write_bytes((mirror / "kodak" / "kodim07.png").read_bytes()[:-10])
    with pytest.raises(ChecksumError, match=r"kodim07\.png: sha256 mismatch"):
        prepare_dataset(kodak(), tmp_path / "data", tmp_path / "m.parquet", mirror=tmp_path / "mirror")
    assert not (tmp_path / "data" / "kodak" / "kodim07.png").exists()


def test_files_over_http(mirror, file_server, tmp_path):
    names = ["kodim03.png", "kodim04.png"]
    for n in names:
        file_server.routes[f"/kodak/{n}"] = [(200, (mirror / "kodak" / n).read_bytes())]
    source = DatasetSource(
        name="mini", files=tuple(expected(mirror / "kodak" / n, n) for n in names),
        file_urls=(file_server.url("/kodak/"),),
    )
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "mini.parquet")
    assert table["path"].to_pylist() == ["mini/kodim03.png", "mini/kodim04.png"]
    assert table["width"].to_pylist() == [768, 512]


def make_archive(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def archive_source(mirror, file_server, relpaths):
    return DatasetSource(
        name="bsds-mini",
        files=tuple(expected(mirror / "bsds500" / r, r) for r in relpaths),
        archives=(Archive("BSR_bsds500.tgz", (file_server.url("/BSR_bsds500.tgz"),)),),
        members=(Members("BSR_bsds500.tgz", "BSR/BSDS500/data/images/", r"(?:train|val|test)/\d+\.jpg"),),
        splits=("train", "val", "test"),
    )


def test_archive_keeps_only_expected_members(mirror, file_server, tmp_path):
    relpaths = ["train/100075.jpg", "val/101085.jpg", "test/100007.jpg"]
    members = {f"BSR/BSDS500/data/images/{r}": (mirror / "bsds500" / r).read_bytes() for r in relpaths}
    members["BSR/BSDS500/data/groundTruth/train/100075.mat"] = b"not kept"
    file_server.routes["/BSR_bsds500.tgz"] = [(200, make_archive(members))]
    source = archive_source(mirror, file_server, relpaths)
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "b.parquet", cache_dir=tmp_path / "c")
    assert sorted(table["split"].to_pylist()) == ["test", "train", "val"]
    kept = sorted(p.relative_to(tmp_path / "data").as_posix()
                  for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert kept == sorted(f"bsds-mini/{r}" for r in relpaths)


def test_archive_with_a_bad_member_is_dropped(mirror, file_server, tmp_path):
    relpaths = ["train/100075.jpg"]
    members = {"BSR/BSDS500/data/images/train/100075.jpg": b"not the jpeg"}
    file_server.routes["/BSR_bsds500.tgz"] = [(200, make_archive(members))]
    source = archive_source(mirror, file_server, relpaths)
    with pytest.raises(ChecksumError, match="100075.jpg: sha256 mismatch"):
        prepare_dataset(source, tmp_path / "data", tmp_path / "b.parquet", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "BSR_bsds500.tgz").exists()
    assert not (tmp_path / "data" / "bsds-mini" / "train" / "100075.jpg").exists()


def test_archive_missing_members_are_listed(mirror, file_server, tmp_path):
    relpaths = ["train/100075.jpg", "val/101085.jpg"]
    members = {"BSR/BSDS500/data/images/train/100075.jpg": (mirror / "bsds500/train/100075.jpg").read_bytes()}
    file_server.routes["/BSR_bsds500.tgz"] = [(200, make_archive(members))]
    source = archive_source(mirror, file_server, relpaths)
    with pytest.raises(DownloadError, match=r"lacks 1 file\(s\): val/101085\.jpg"):
        prepare_dataset(source, tmp_path / "data", tmp_path / "b.parquet", cache_dir=tmp_path / "c")


def test_stage_reads_the_mirror_from_the_environment(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("LICBENCH_MIRROR", str(mirror))
    cfg = load_section(REPO / "params.yaml", "datasets", {"sets": ["kodak"], "mirror": None})
    table = run_datasets_stage(cfg, "kodak", tmp_path / "data")
    assert table.num_rows == 24
    assert (tmp_path / "data/manifests/kodak.parquet").is_file()


def test_bsds500_from_mirror_keeps_the_splits(mirror, tmp_path):
    table = prepare_dataset(bsds500(), tmp_path / "data", tmp_path / "b.parquet", mirror=mirror)
    splits = table["split"].to_pylist()
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (200, 100, 200)
    assert {(w, h) for w, h in zip(table["width"].to_pylist(), table["height"].to_pylist())} \
        == {(481, 321), (321, 481)}
    assert (tmp_path / "data/bsds500/train/100075.jpg").is_file()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_archive_with_nested_folders(mirror, file_server, tmp_path):
    """DIV2K's layout: DIV2K_train_HR/0001.png inside DIV2K_train_HR.zip."""
    relpaths = ["train/100075.jpg", "val/101085.jpg"]
    members = {f"DIV2K/{r}": (mirror / "bsds500" / r).read_bytes() for r in relpaths}
    members["DIV2K/readme.txt"] = b"not kept"
    file_server.routes["/set.zip"] = [(200, make_zip(members))]
    source = DatasetSource(name="zipped", files=tuple(expected(mirror / "bsds500" / r, r) for r in relpaths),
                           archives=(Archive("set.zip", (file_server.url("/set.zip"),)),),
                           members=(Members("set.zip", "DIV2K/", r"(?:train|val)/\d+\.jpg"),),
                           splits=("train", "val"))
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "z.parquet", cache_dir=tmp_path / "c")
    assert sorted(table["path"].to_pylist()) == ["zipped/train/100075.jpg", "zipped/val/101085.jpg"]


def test_an_archive_cut_off_mid_transfer_resumes_with_range(mirror, file_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="licbench.progress")
    relpaths = ["train/100075.jpg", "val/101085.jpg", "test/100007.jpg"]
    members = {f"BSR/BSDS500/data/images/{r}": (mirror / "bsds500" / r).read_bytes() for r in relpaths}
    tgz = make_archive(members)
    half = len(tgz) // 2
    file_server.routes["/BSR_bsds500.tgz"] = [Reply(200, tgz, drop_at=half), Reply(200, tgz)]
    source = archive_source(mirror, file_server, relpaths)
    table = prepare_dataset(source, tmp_path / "data", tmp_path / "b.parquet", cache_dir=tmp_path / "c")
    assert table.num_rows == 3
    assert file_server.requests["/BSR_bsds500.tgz"] == ["", f"bytes={half}-"]
    assert (tmp_path / "c" / "BSR_bsds500.tgz").read_bytes() == tgz
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["BSR_bsds500.tgz"]
    # Progress off a terminal: the archive in bytes, then its members.
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("BSR_bsds500.tgz: ") and " B (" in line for line in lines)
    assert any(line.startswith("bsds-mini: extracting BSR_bsds500.tgz: 3/3 file (100%)") for line in lines)


def test_a_set_larger_than_the_free_disk_is_refused_before_fetching(mirror, file_server, tmp_path):
    huge = ExpectedFile("train/100075.jpg", "0" * 64, 10**15)
    source = DatasetSource(name="huge", files=(huge,), archives=(Archive("huge.tgz", (file_server.url("/huge.tgz"),)),),
                           members=(Members("huge.tgz", "", r"train/\d+\.jpg"),), splits=("train",))
    with pytest.raises(DiskSpaceError, match=r"^huge \(huge\.tgz and its members\): not enough disk "
                                             r"space on the file system of .*: needs 1\.00PB, .* free$"):
        prepare_dataset(source, tmp_path / "data", tmp_path / "h.parquet", cache_dir=tmp_path / "c")
    assert file_server.hits == {}
    files = tuple(ExpectedFile(f"kodim0{i}.png", "0" * 64, 10**14) for i in range(1, 10))
    with pytest.raises(DiskSpaceError, match=r"^downloading files: .* needs 900TB"):
        prepare_dataset(DatasetSource(name="files", files=files, file_urls=(file_server.url("/"),)),
                        tmp_path / "data", tmp_path / "f.parquet")
    assert file_server.hits == {}


def test_a_full_disk_while_extracting_names_the_member_not_the_archive(mirror, file_server, tmp_path,
                                                                        monkeypatch):
    relpaths = ["train/100075.jpg"]
    members = {f"BSR/BSDS500/data/images/{r}": (mirror / "bsds500" / r).read_bytes() for r in relpaths}
    file_server.routes["/BSR_bsds500.tgz"] = [(200, make_archive(members))]
    source = archive_source(mirror, file_server, relpaths)
    from licbench.data import datasets

    def full(stream, dest, *args):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(stream.read(10))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datasets, "save_stream_verified", full)
    with pytest.raises(OSError) as caught:
        prepare_dataset(source, tmp_path / "data", tmp_path / "b.parquet", cache_dir=tmp_path / "c")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "data" / "bsds-mini" / "train" / "100075.jpg")
    assert (tmp_path / "c" / "BSR_bsds500.tgz").is_file()  # the archive is fine: kept
    assert list((tmp_path / "data" / "bsds-mini").rglob("*.jpg")) == []


def test_files_a_killed_run_left_are_not_part_of_the_output(mirror, tmp_path):
    out = tmp_path / "data" / "kodak"
    out.mkdir(parents=True)
    (out / ".kodim01.png.0a1b2c3d4e5f.tmp").write_bytes(b"half")
    (out / ".kodim02.png.part").write_bytes(b"half")
    (out / ".kodim02.png.part.json").write_text("{}")
    prepare_dataset(kodak(), tmp_path / "data", tmp_path / "k.parquet", mirror=mirror)
    assert sorted(p.name for p in out.iterdir()) == sorted(f.relpath for f in kodak().files)
