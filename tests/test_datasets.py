import hashlib
import io
import tarfile

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from licbench.config import load_section
from licbench.data.datasets import manifest_digest, prepare_dataset, run_datasets_stage
from licbench.data.sources import DatasetSource, ExpectedFile, bsds500, kodak
from licbench.errors import ChecksumError, DownloadError


def expected(path, relpath):
    data = path.read_bytes()
    return ExpectedFile(relpath, hashlib.sha256(data).hexdigest(), len(data))


def test_real_sources_use_the_real_urls():
    assert kodak().file_urls == ("http://r0k.us/graphics/kodak/kodak/",)
    assert len(kodak().files) == 24
    b = bsds500()
    assert any(u.endswith("/BSR/BSR_bsds500.tgz") for u in b.archive_urls)
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
        archive_urls=(file_server.url("/BSR_bsds500.tgz"),),
        archive_name="BSR_bsds500.tgz",
        archive_prefix="BSR/BSDS500/data/images/",
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
