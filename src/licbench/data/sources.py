"""Where each dataset comes from, and the sha256 of every file we keep.

The checksums ship with the package (``checksums/<set>.tsv``); they were taken
from byte-exact copies of the files the real URLs serve.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class ExpectedFile:
    relpath: str  # path inside data/<set>/, also inside mirror/<set>/
    sha256: str
    bytes: int


@dataclass(frozen=True)
class DatasetSource:
    """A dataset, as files fetched one by one or as members of one archive.

    ``file_urls``: base URLs; file ``relpath`` is fetched from ``base + relpath``
    (tried in order). ``archive_urls``: one archive, tar (compressed or not) or
    zip (tried in order), whose member ``archive_prefix + relpath`` becomes
    ``relpath``.
    """

    name: str
    files: tuple[ExpectedFile, ...]
    file_urls: tuple[str, ...] = ()
    archive_urls: tuple[str, ...] = ()
    archive_name: str = ""
    archive_prefix: str = ""
    # The archive's own size and sha256 where the publisher gives them: the
    # size is checked against the free disk space before anything is fetched.
    archive_bytes: int | None = None
    archive_sha256: str | None = None
    # Split of a file: its first path component when it is one of these,
    # else ``default_split``.
    splits: tuple[str, ...] = ()
    default_split: str = "test"
    eval_split: str = "test"
    citation: str = ""
    extra: dict = field(default_factory=dict)

    def split_names(self) -> tuple[str, ...]:
        """Every split a manifest of this set can hold."""
        return tuple(dict.fromkeys((*self.splits, self.default_split)))

    def split_of(self, relpath: str) -> str:
        head = relpath.split("/", 1)[0]
        return head if head in self.splits else self.default_split


def load_checksums(name: str) -> tuple[ExpectedFile, ...]:
    text = resources.files("licbench.data").joinpath("checksums", f"{name}.tsv").read_text()
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return tuple(ExpectedFile(r["file"], r["sha256"], int(r["bytes"])) for r in rows)


def kodak() -> DatasetSource:
    return DatasetSource(
        name="kodak",
        files=load_checksums("kodak"),
        file_urls=("http://r0k.us/graphics/kodak/kodak/",),
        default_split="test",
        eval_split="test",
        citation="Kodak Lossless True Color Image Suite (r0k.us/graphics/kodak)",
    )


def bsds500() -> DatasetSource:
    return DatasetSource(
        name="bsds500",
        files=load_checksums("bsds500"),
        archive_urls=(
            "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
        ),
        archive_name="BSR_bsds500.tgz",
        archive_prefix="BSR/BSDS500/data/images/",
        splits=("train", "val", "test"),
        eval_split="test",
        citation=(
            "Arbelaez, Maire, Fowlkes, Malik, 'Contour Detection and Hierarchical "
            "Image Segmentation', TPAMI 33(5), 2011"
        ),
    )


SOURCES = {"kodak": kodak, "bsds500": bsds500}


def get_source(name: str) -> DatasetSource:
    try:
        return SOURCES[name]()
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(
            f"unknown dataset '{name}'; known: {', '.join(sorted(SOURCES))}"
        ) from None
