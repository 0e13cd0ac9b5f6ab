"""The ``datasets`` stage: fetch a set, verify every file, write its manifest.

A pinned set (``checksums/<set>.tsv`` lists its files) is checked file by file
against the table, from the real URLs or a mirror alike. A set not pinned yet
keeps what its :class:`~licbench.data.sources.Members` rules name, checks the
number of files where the publisher's documentation gives it, says in one
WARNING line that its files are not verified, and its manifest's metadata
says ``pinned: false``; :func:`pin_dataset` (``licbench datasets pin <set>``)
writes the table from one download.

The manifest (``data/manifests/<set>.parquet``) lists the set's images, a row
each; annotations (COCO's panoptic JSON and PNGs) are kept and verified beside
them but are not rows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..config import DatasetsConfig, resolve_mirror
from ..errors import ChecksumError, ConfigError, DownloadError, ImageError
from ..fileio import atomic_path, sha256_file
from ..progress import progress
from .download import check_free_space, copy_verified, download_first, save_stream_verified, sha256_stream
from .sources import CHECKSUM_COLUMNS, Archive, DatasetSource, ExpectedFile, Members, checksums_path, \
    load_checksums

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


def _missing(files, out_dir: Path) -> list[ExpectedFile]:
    """Those of the pinned ``files`` not yet in ``out_dir`` with their bytes."""
    return [f for f in files if not _present(out_dir / f.relpath, f.sha256)]


def _check_counts(source: DatasetSource, found: dict[str, ExpectedFile], where: str) -> None:
    """An unpinned set: each rule's number of files, where its documentation gives one."""
    for rule in source.members:
        n = sum(rule.holds(r) for r in found)
        if rule.count is not None and n != rule.count:
            raise DownloadError(
                f"{where}: {n} file(s) in {rule.dest or './'} (from {rule.inner or rule.archive}), "
                f"where {source.name}'s documentation lists {rule.count}")


# --- from a mirror --------------------------------------------------------------

def fetch_from_mirror(source: DatasetSource, mirror: Path, out_dir: Path) -> list[ExpectedFile]:
    """Copy the set from ``mirror/<set>/`` (the pinned files, each checked; or,
    not pinned, every file its rules name); return what was kept."""
    root = mirror / source.name
    if source.pinned:
        missing = [f.relpath for f in source.files if not (root / f.relpath).is_file()]
        if missing:
            raise DownloadError(_list_missing(missing, f"mirror {root}"))
        todo = _missing(source.files, out_dir)
        check_free_space({out_dir: sum(f.bytes for f in todo)}, f"{source.name} from {root}")
        for f in progress(todo, desc=f"{source.name} from the mirror", unit="file"):
            copy_verified(root / f.relpath, out_dir / f.relpath, f.sha256)
        return list(source.files)
    relpaths = _mirror_files(source, root)
    check_free_space({out_dir: sum((root / r).stat().st_size for r in relpaths)},
                     f"{source.name} from {root}")
    kept = {}
    for relpath in progress(relpaths, desc=f"{source.name} from the mirror", unit="file"):
        digest = copy_verified(root / relpath, out_dir / relpath, None)
        kept[relpath] = ExpectedFile(relpath, digest, (out_dir / relpath).stat().st_size)
    _check_counts(source, kept, f"mirror {root}")
    return list(kept.values())


def _mirror_files(source: DatasetSource, root: Path) -> list[str]:
    """The files under ``root`` that the rules of an unpinned set name."""
    if not source.members:
        raise ConfigError(f"{source.name}: fetched file by file, so it needs its checksums "
                          f"({checksums_path(source.name)}) to know its files")
    if not root.is_dir():
        raise DownloadError(f"mirror {root}: no such folder")
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [r for r in found if source.rule_of(r) is not None]


# --- file by file -----------------------------------------------------------------

def fetch_files(source: DatasetSource, out_dir: Path) -> list[ExpectedFile]:
    if not source.pinned:  # nothing but its table names the files of such a set
        raise ConfigError(f"{source.name}: fetched file by file, so it needs its checksums "
                          f"({checksums_path(source.name)}) to know its files")
    todo = _missing(source.files, out_dir)
    check_free_space({out_dir: sum(f.bytes for f in todo)}, f"downloading {source.name}")
    for f in progress(todo, desc=f"{source.name} download", unit="file"):
        download_first([base + f.relpath for base in source.file_urls], out_dir / f.relpath, f.sha256,
                       size=f.bytes, show_progress=False)
    return list(source.files)


# --- from archives ------------------------------------------------------------------

def _members(archive: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, BinaryIO]]:
    """(name, readable stream) of each regular member ``keep`` accepts, in
    archive order; nothing is held in memory beyond one read."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and keep(info.filename):
                    with zf.open(info) as stream:
                        yield info.filename, stream
        return
    with tarfile.open(archive, "r|*") as tar:  # a stream: one pass, no seeking back
        for member in tar:
            if member.isfile() and keep(member.name):
                yield member.name, tar.extractfile(member)


def archive_files(archive: Path, rules: list[Members], scratch: Path) -> Iterator[tuple[str, BinaryIO, str]]:
    """(relpath under data/<set>/, stream, what to call it) of every member of
    ``archive`` that ``rules`` name, those of zips inside it too (each written
    to ``scratch`` first: a zip is read by seeking). Two members that would
    become one file are refused."""
    plain = [r for r in rules if not r.inner]
    inner = {r.inner for r in rules if r.inner}
    seen: dict[str, str] = {}

    def claim(relpath: str, what: str) -> None:
        if relpath in seen:
            raise DownloadError(f"{archive}: {seen[relpath]} and {what} would both become {relpath}")
        seen[relpath] = what

    def target(name: str) -> str | None:
        return next((p for p in (r.relpath(name) for r in plain) if p is not None), None)

    saved = {}
    for name, stream in _members(archive, lambda n: n in inner or target(n) is not None):
        if name in inner:
            saved[name] = scratch / f"{len(saved)}-{Path(name).name}"
            save_stream_verified(stream, saved[name], None, f"{archive}:{name}")
            continue
        relpath = target(name)
        claim(relpath, f"{archive.name}:{name}")
        yield relpath, stream, f"{archive}:{name}"
    missing = sorted(inner - set(saved))
    if missing:
        raise DownloadError(_list_missing(missing, f"archive {archive}"))
    for name, path in saved.items():
        rules_here = [r for r in rules if r.inner == name]

        def target_inner(n: str, rules_here=rules_here) -> str | None:
            return next((p for p in (r.relpath(n) for r in rules_here) if p is not None), None)

        try:
            for member, stream in _members(path, lambda n: target_inner(n) is not None):
                relpath = target_inner(member)
                claim(relpath, f"{archive.name}:{name}:{member}")
                yield relpath, stream, f"{archive}:{name}:{member}"
        finally:
            path.unlink(missing_ok=True)


def _damaged(archive: Path, exc: BaseException) -> DownloadError:
    return DownloadError(f"{archive}: damaged archive ({exc}); delete it to download again")


def extract_archive(source: DatasetSource, archive: Archive, path: Path, out_dir: Path,
                    todo: dict[str, ExpectedFile] | None) -> dict[str, ExpectedFile]:
    """Keep the members of ``path`` the rules of ``archive`` name, each streamed
    to disk and verified before it is renamed: the pinned files of ``todo``,
    or every one (None: not pinned). Returns what was written."""
    rules = [r for r in source.members if r.archive == archive.name]
    total = len(todo) if todo is not None else \
        (sum(r.count for r in rules) if all(r.count is not None for r in rules) else None)
    bar = progress(desc=f"{source.name}: extracting {archive.name}", total=total, unit="file")
    written: dict[str, ExpectedFile] = {}
    try:
        with bar, tempfile.TemporaryDirectory(dir=path.parent, prefix=".inner-") as scratch:
            for relpath, stream, what in archive_files(path, rules, Path(scratch)):
                if todo is not None and relpath not in todo:
                    continue  # present already, or not in the pinned table
                digest = save_stream_verified(stream, out_dir / relpath,
                                              todo[relpath].sha256 if todo is not None else None, what)
                written[relpath] = ExpectedFile(relpath, digest, (out_dir / relpath).stat().st_size)
                bar.update(1)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) != path:
            raise  # writing a member (a full disk): not the archive's fault
        raise _damaged(path, exc) from None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _damaged(path, exc) from None
    if todo is not None and set(todo) - set(written):
        raise DownloadError(_list_missing(sorted(set(todo) - set(written)), f"archive {path}"))
    return written


def fetch_archive_file(source: DatasetSource, archive: Archive, cache_dir: Path,
                       members: dict[Path, int]) -> Path:
    """The archive in ``cache_dir``, downloaded (and checked against its
    recorded size and sha256) unless already there; ``members``: bytes the
    caller will extract, by folder, for the free-space check."""
    path = cache_dir / archive.name
    if not path.is_file():
        # The members first, so that a disk too small is said before the
        # archive is fetched (the archive's own size once the server gives it).
        check_free_space({**members, cache_dir: archive.bytes or 0},
                         f"{source.name} ({archive.name} and its members)")
        log.info("downloading %s to %s", archive.name, cache_dir)
        download_first(archive.urls, path, archive.sha256, size=archive.bytes, reserve=members)
    else:
        check_free_space(members, f"{source.name}: extracting {path}")
    return path


def fetch_archives(source: DatasetSource, out_dir: Path, cache_dir: Path) -> list[ExpectedFile]:
    """Each archive of the set, then its members: the pinned files not yet in
    ``out_dir`` (an archive whose files are all there is not fetched), or,
    not pinned, every member its rules name."""
    pinned = {f.relpath: f for f in source.files}
    kept: dict[str, ExpectedFile] = {}
    for archive in source.archives:
        rules = [r for r in source.members if r.archive == archive.name]
        if source.pinned:
            expected = [f for k, f in pinned.items() if any(r.holds(k) for r in rules)]
            kept.update((f.relpath, f) for f in expected)
            todo = {f.relpath: f for f in _missing(expected, out_dir)}
            if not todo:
                continue
            need = sum(f.bytes for f in todo.values())
        else:
            # Images and annotations barely compress: about the archive's size again.
            todo, need = None, archive.bytes or 0
        path = fetch_archive_file(source, archive, cache_dir, {out_dir: need})
        try:
            written = extract_archive(source, archive, path, out_dir, todo)
        except ChecksumError:
            # The members are pinned, the archive may not be: a bad member means a
            # bad archive, so drop it and let the next run fetch it again.
            path.unlink(missing_ok=True)
            raise
        if todo is None:
            kept.update(written)
    if not source.pinned:
        _check_counts(source, kept, source.name)
    return list(kept.values())


def hash_archives(source: DatasetSource, cache_dir: Path) -> list[ExpectedFile]:
    """Every member the rules name, hashed as it streams out of its archive
    (downloaded into ``cache_dir``), nothing written beside the archives."""
    found: dict[str, ExpectedFile] = {}
    for archive in source.archives:
        rules = [r for r in source.members if r.archive == archive.name]
        path = fetch_archive_file(source, archive, cache_dir, {})
        try:
            with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".inner-") as scratch:
                for relpath, stream, _ in progress(archive_files(path, rules, Path(scratch)),
                                                   desc=f"{source.name}: hashing {archive.name}", unit="file"):
                    digest, nbytes = sha256_stream(stream)
                    found[relpath] = ExpectedFile(relpath, digest, nbytes)
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise _damaged(path, exc) from None
    return list(found.values())


def remove_leftovers(out_dir: Path) -> None:
    """Temporary files a killed run left in ``out_dir`` (``.<name>.<random>.tmp``
    of atomic writes, ``.<name>.part`` of downloads): they would become part of
    the DVC output."""
    for path in out_dir.rglob(".*"):
        if path.is_file() and path.name.endswith((".tmp", ".part", ".part.json")):
            path.unlink()


# --- the manifest -------------------------------------------------------------------

def build_manifest(source: DatasetSource, files: list[ExpectedFile], out_dir: Path,
                   data_root: Path, verified: str) -> pa.Table:
    """A row per image of ``files``; the metadata names the set, its citation,
    whether it is pinned and what its files were checked against."""
    rows = {name: [] for name in MANIFEST_SCHEMA.names}
    for f in sorted((f for f in files if source.is_image(f.relpath)), key=lambda f: f.relpath):
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
    metadata = {"dataset": source.name, "citation": source.citation,
                "pinned": "true" if source.pinned else "false", "verified": verified}
    return pa.Table.from_pydict(rows, schema=MANIFEST_SCHEMA.with_metadata(metadata))


def manifest_metadata(table: pa.Table) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}


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


# --- the stage ----------------------------------------------------------------------

def _verified_by(source: DatasetSource, mirror: Path | None) -> str:
    if source.pinned:
        return f"every file, against checksums/{source.name}.tsv"
    if mirror is None and source.archives and all(a.sha256 for a in source.archives):
        return "its archives, against their recorded sha256; the files are not pinned"
    return "nothing: no checksum is recorded for these files"


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
    verified = _verified_by(source, mirror)
    if not source.pinned:
        log.warning("%s is not pinned (checked: %s); `licbench datasets pin %s` pins its files",
                    source.name, verified, source.name)
    if mirror is not None:
        log.info("%s: reading from mirror %s", source.name, mirror)
        files = fetch_from_mirror(source, mirror, out_dir)
    elif source.file_urls:
        log.info("%s: downloading %d files", source.name, len(source.files))
        files = fetch_files(source, out_dir)
    else:
        files = fetch_archives(source, out_dir, cache_dir or default_cache_dir())
    remove_leftovers(out_dir)
    table = build_manifest(source, files, out_dir, data_root, verified)
    write_manifest(table, Path(manifest_path))
    log.info("%s: %d files (%d images) %s, manifest %s", source.name, len(files), table.num_rows,
             "verified" if source.pinned else "kept", manifest_path)
    return table


def pin_dataset(source: DatasetSource, *, mirror: Path | None = None,
                cache_dir: Path | None = None) -> tuple[Path, int]:
    """Write ``checksums/<set>.tsv`` from one download (or the mirror's copy)
    of an unpinned set: the sha256 and size of every file its rules keep.
    Returns the table's path and its number of rows."""
    path = checksums_path(source.name)
    if source.pinned:
        raise ConfigError(f"{path} already pins {len(source.files)} files of {source.name}; "
                          "empty it (keep its header line) to pin the set again")
    if mirror is not None:
        root = mirror / source.name
        files = [ExpectedFile(r, sha256_file(root / r), (root / r).stat().st_size)
                 for r in progress(_mirror_files(source, root), desc=f"{source.name}: hashing", unit="file")]
    else:
        if not source.archives:
            raise ConfigError(f"{source.name}: fetched file by file, so there is nothing to pin from")
        files = hash_archives(source, cache_dir or default_cache_dir())
    found = {f.relpath: f for f in files}
    _check_counts(source, found, source.name if mirror is None else f"mirror {mirror / source.name}")
    if not files:
        raise DownloadError(f"{source.name}: its rules name no file; nothing to pin")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(CHECKSUM_COLUMNS)
    writer.writerows((f.relpath, f.bytes, f.sha256) for f in sorted(files, key=lambda f: f.relpath))
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    load_checksums.cache_clear()
    return path, len(files)


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
