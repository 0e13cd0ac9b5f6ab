"""The ``datasets`` stage: fetch a set, verify every file, write its manifest."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..config import DatasetsConfig, resolve_mirror
from ..errors import ChecksumError, DownloadError, ImageError
from ..fileio import atomic_path, sha256_file
from ..progress import progress
from .download import check_free_space, copy_verified, download_first, save_stream_verified
from .sources import DatasetSource, ExpectedFile

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # relative to the data root, e.g. "kodak/kodim01.png"
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


def _present(path: Path, expected_sha: str) -> bool:
    return path.is_file() and sha256_file(path) == expected_sha


def _list_missing(names: list[str], where: str, limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{where} lacks {len(names)} file(s): {shown}{more}"


def _missing(source: DatasetSource, out_dir: Path) -> list[ExpectedFile]:
    """The files of ``source`` not yet in ``out_dir`` with their pinned bytes."""
    return [f for f in source.files if not _present(out_dir / f.relpath, f.sha256)]


def fetch_from_mirror(source: DatasetSource, mirror: Path, out_dir: Path) -> None:
    root = mirror / source.name
    missing = [f.relpath for f in source.files if not (root / f.relpath).is_file()]
    if missing:
        raise DownloadError(_list_missing(missing, f"mirror {root}"))
    todo = _missing(source, out_dir)
    check_free_space({out_dir: sum(f.bytes for f in todo)}, f"{source.name} from {root}")
    for f in progress(todo, desc=f"{source.name} from the mirror", unit="file"):
        copy_verified(root / f.relpath, out_dir / f.relpath, f.sha256)


def fetch_files(source: DatasetSource, out_dir: Path) -> None:
    todo = _missing(source, out_dir)
    check_free_space({out_dir: sum(f.bytes for f in todo)}, f"downloading {source.name}")
    for f in progress(todo, desc=f"{source.name} download", unit="file"):
        download_first([base + f.relpath for base in source.file_urls], out_dir / f.relpath, f.sha256,
                       size=f.bytes, show_progress=False)


def extract_archive(source: DatasetSource, archive: Path, out_dir: Path) -> None:
    """Keep the expected members of ``archive`` (tar, compressed or not, or
    zip), each streamed to disk and verified before it is renamed."""
    expected = {source.archive_prefix + f.relpath: f for f in source.files}
    todo = {source.archive_prefix + f.relpath for f in _missing(source, out_dir)}
    bar = progress(desc=f"{source.name}: extracting {archive.name}", total=len(todo), unit="file")
    try:
        with bar:
            for name, stream in _members(archive, todo):
                f = expected[name]
                save_stream_verified(stream, out_dir / f.relpath, f.sha256, f"{archive}:{name}")
                todo.discard(name)
                bar.update(1)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) != archive:
            raise  # writing a member (a full disk): not the archive's fault
        raise DownloadError(f"{archive}: damaged archive ({exc}); delete it to download again") from None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DownloadError(f"{archive}: damaged archive ({exc}); delete it to download again") from None
    if todo:
        names = sorted(n[len(source.archive_prefix):] for n in todo)
        raise DownloadError(_list_missing(names, f"archive {archive}"))


def _members(archive: Path, wanted: set[str]) -> Iterator[tuple[str, BinaryIO]]:
    """(name, readable stream) of each regular member named in ``wanted``, in
    archive order; nothing is held in memory beyond one read."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename in wanted and not info.is_dir():
                    with zf.open(info) as stream:
                        yield info.filename, stream
        return
    with tarfile.open(archive, "r|*") as tar:  # a stream: one pass, no seeking back
        for member in tar:
            if member.name in wanted and member.isfile():
                yield member.name, tar.extractfile(member)


def fetch_archive(source: DatasetSource, out_dir: Path, cache_dir: Path) -> None:
    archive = cache_dir / source.archive_name
    members = sum(f.bytes for f in _missing(source, out_dir))
    if not archive.is_file():
        # The members first, so that a disk too small is said before the
        # archive is fetched (the archive's own size once the server gives it).
        check_free_space({out_dir: members, cache_dir: source.archive_bytes or 0},
                         f"{source.name} ({source.archive_name} and its members)")
        log.info("downloading %s to %s", source.archive_name, cache_dir)
        download_first(source.archive_urls, archive, source.archive_sha256,
                       size=source.archive_bytes, reserve={out_dir: members})
    else:
        check_free_space({out_dir: members}, f"{source.name}: extracting {archive}")
    try:
        extract_archive(source, archive, out_dir)
    except ChecksumError:
        # The members are pinned, the archive may not be: a bad member means a
        # bad archive, so drop it and let the next run fetch it again.
        archive.unlink(missing_ok=True)
        raise


def remove_leftovers(out_dir: Path) -> None:
    """Temporary files a killed run left in ``out_dir`` (``.<name>.<random>.tmp``
    of atomic writes, ``.<name>.part`` of downloads): they would become part of
    the DVC output."""
    for path in out_dir.rglob(".*"):
        if path.is_file() and path.name.endswith((".tmp", ".part", ".part.json")):
            path.unlink()


def build_manifest(source: DatasetSource, out_dir: Path, data_root: Path) -> pa.Table:
    rows = {name: [] for name in MANIFEST_SCHEMA.names}
    for f in sorted(source.files, key=lambda f: f.relpath):
        path = out_dir / f.relpath
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{path}: cannot read image header: {exc}") from None
        rows["path"].append(path.relative_to(data_root).as_posix())
        rows["split"].append(source.split_of(f.relpath))
        rows["width"].append(width)
        rows["height"].append(height)
        rows["bytes"].append(path.stat().st_size)
        rows["sha256"].append(f.sha256)
    metadata = {"dataset": source.name, "citation": source.citation}
    return pa.Table.from_pydict(rows, schema=MANIFEST_SCHEMA.with_metadata(metadata))


def write_manifest(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> pa.Table:
    path = Path(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DownloadError(f"{path}: manifest not found; run the datasets stage first") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise DownloadError(f"{path}: not a readable Parquet manifest: {exc}") from None
    missing = set(MANIFEST_SCHEMA.names) - set(table.column_names)
    if missing:
        raise DownloadError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    return table


def manifest_digest(table: pa.Table) -> str:
    """A hash of what the manifest lists (paths and file hashes), independent of
    how Parquet happened to encode it."""
    h = hashlib.sha256()
    for path, digest in sorted(zip(table["path"].to_pylist(), table["sha256"].to_pylist())):
        h.update(f"{path}\t{digest}\n".encode())
    return h.hexdigest()


def prepare_dataset(
    source: DatasetSource,
    data_root: str | Path,
    manifest_path: str | Path,
    *,
    mirror: Path | None = None,
    cache_dir: Path | None = None,
) -> pa.Table:
    """Fetch ``source`` into ``data_root/<name>/``, verify it, write its manifest.

    With ``mirror``, files are read from ``mirror/<name>/<relpath>`` instead of
    the real URLs, and verified against the same sha256.
    """
    data_root = Path(data_root)
    out_dir = data_root / source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        log.info("%s: reading %d files from mirror %s", source.name, len(source.files), mirror)
        fetch_from_mirror(source, mirror, out_dir)
    elif source.file_urls:
        log.info("%s: downloading %d files", source.name, len(source.files))
        fetch_files(source, out_dir)
    else:
        fetch_archive(source, out_dir, cache_dir or default_cache_dir())
    remove_leftovers(out_dir)
    table = build_manifest(source, out_dir, data_root)
    write_manifest(table, Path(manifest_path))
    log.info("%s: %d files verified, manifest %s", source.name, table.num_rows, manifest_path)
    return table


def default_cache_dir() -> Path:
    return Path(os.environ.get("LICBENCH_CACHE", Path.home() / ".cache" / "licbench"))


def evaluation_images(dataset: str, data_root: str | Path = "data",
                      max_images: int | None = None) -> list[tuple[str, Path]]:
    """(manifest path, file path) of the set's evaluation split, sorted; the
    first ``max_images`` when given."""
    from .sources import get_source

    data_root = Path(data_root)
    manifest = read_manifest(data_root / "manifests" / f"{dataset}.parquet")
    split = get_source(dataset).eval_split
    names = sorted(p for p, s in zip(manifest["path"].to_pylist(), manifest["split"].to_pylist())
                   if s == split)
    if max_images:
        names = names[: int(max_images)]
    return [(n, data_root / n) for n in names]


def run_datasets_stage(cfg: DatasetsConfig, name: str, data_root: str | Path = "data") -> pa.Table:
    """What ``stages/datasets.py`` runs: one set, from the mirror or the real URLs."""
    from .sources import get_source

    if name not in cfg.sets:
        log.warning("%s is not in params.yaml datasets.sets; preparing it anyway", name)
    mirror = resolve_mirror(cfg)
    data_root = Path(data_root)
    return prepare_dataset(
        get_source(name), data_root, data_root / "manifests" / f"{name}.parquet", mirror=mirror
    )
