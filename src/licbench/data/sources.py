"""Where each dataset comes from, what of it is kept, and the sha256 of every kept file.

A set is fetched as files one by one (Kodak) or as members of archives (the
others). An archive's kept members are named by :class:`Members` rules: member
``<folder><name>`` of the archive (or of a zip inside it, ``inner``) becomes
``data/<set>/<dest><name>``, which is also its path in a mirror
(``<mirror>/<set>/<dest><name>``). Every set's files under ``data/<set>/``
keep their own names; the first folder of a path is its split when it is one
of ``splits``.

Checksums: ``checksums/<set>.tsv`` (file, bytes, sha256 of every kept file)
ships with the package, one per set. Kodak's and BSDS500's were taken from
byte-exact copies of what the real URLs serve. A table with no rows means the
set is not pinned yet: no publisher gives a sha256 of each image, so the set
downloads unverified member by member (its archives are still checked against
a recorded sha256 where one exists, below), its manifest says ``pinned:
false``, and ``licbench datasets pin <set>`` downloads it once and fills the
table, to be committed; every later fetch is checked against it.

Where each fact comes from (none of these URLs could be fetched when this was
written: the layouts and sizes are the cited documentation's):

- The archives' sizes and sha256 of DIV2K, CLIC 2020 and COCO 2017 are those
  recorded by tensorflow/datasets (``tensorflow_datasets/url_checksums/
  div2k.txt`` @ 1054f22d, ``clic.txt`` @ 05e20adf, ``coco2017.txt`` and
  ``coco2017_panoptic.txt`` @ 2282548b), not the publishers' (they publish none).
- DIV2K: ``DIV2K_train_HR/0001.png`` .. ``0800.png`` and
  ``DIV2K_valid_HR/0801.png`` .. ``0900.png`` (data.vision.ee.ethz.ch/cvl/DIV2K;
  the layout as deepinv's and facebookresearch/NeuralCompression's
  ``_div2k_dataset.py`` read it).
- Flickr2K: 2650 PNGs, ``Flickr2K/Flickr2K_HR/000001.png`` .. inside
  ``Flickr2K.tar`` beside its low-resolution copies (EDSR, github.com/limbee/
  NTIRE2017; XPixelGroup/BasicSR ``docs/DatasetPreparation.md``; the folder as
  EDSR-PyTorch's ``data/flickr2k.py`` reads it). No size or checksum recorded.
- CLIC 2020 professional: ``train/*.png`` in ``professional_train_2020.zip``,
  ``valid/*.png`` (41) in ``professional_valid_2020.zip``, beside a
  ``__MACOSX/`` folder (facebookresearch/NeuralCompression
  ``data/_clic_2020_image.py``; fab-jul/RC-PyTorch README).
- Tecnick TESTIMAGES, the 100 RGB 1200x1200 images of the old SAMPLING
  release: ``RGB/RGB_OR_1200x1200/RGB_OR_1200x1200_001.png`` .. ``_100.png``
  in ``OLD/OLD_SAMPLING/testimages.zip`` on SourceForge (project
  ``testimages``, Asuni and Giachetti 2014). The folders above ``RGB/`` are
  documented differently by different users, so any are accepted.
- COCO 2017: ``train2017/*.jpg`` (118,287) and ``val2017/*.jpg`` (5,000);
  ``panoptic_annotations_trainval2017.zip`` holds
  ``annotations/panoptic_{train,val}2017.json`` and the zips
  ``annotations/panoptic_{train,val}2017.zip`` of ``panoptic_{train,val}2017/*.png``
  (cocodataset.org/#download; facebookresearch/Mask2Former
  ``datasets/README.md``). Kept as SegPIC's README lays it out:
  ``annotations/panoptic_train2017/<image id>.png`` beside the JSON.
"""

from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

# Inside the package: read by every fetch, written by `licbench datasets pin`.
CHECKSUMS_DIR = Path(__file__).with_name("checksums")
CHECKSUM_COLUMNS = ("file", "bytes", "sha256")


@dataclass(frozen=True)
class ExpectedFile:
    relpath: str  # path inside data/<set>/, also inside mirror/<set>/
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Archive:
    """One archive of a set: tar (compressed or not) or zip, the first URL that
    works. ``bytes`` and ``sha256`` where a record of them exists: the download
    is checked against both (the size also against the free disk space first)."""

    name: str  # its file name in the download cache
    urls: tuple[str, ...]
    bytes: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Members:
    """Files kept from an archive: member ``<folder><name>`` (``folder`` and
    ``name`` are regular expressions) becomes ``<dest><name>`` under data/<set>/.

    ``inner``: a zip inside the archive whose members these are (COCO's
    panoptic PNGs). ``count``: how many there are by the publisher's
    documentation, checked while the set is not pinned (None where no source
    says). ``images``: False for annotations, which are kept, verified and
    pinned like images but are not rows of the manifest."""

    archive: str
    folder: str
    name: str
    dest: str = ""
    inner: str = ""
    count: int | None = None
    images: bool = True

    def relpath(self, member: str) -> str | None:
        """Where archive member ``member`` goes under data/<set>/, or None."""
        m = re.fullmatch(f"(?:{self.folder})(?P<name>{self.name})", member)
        return self.dest + m["name"] if m else None

    def holds(self, relpath: str) -> bool:
        """Whether ``relpath`` (under data/<set>/) is a file of this rule."""
        return re.fullmatch(re.escape(self.dest) + f"(?:{self.name})", relpath) is not None


@dataclass(frozen=True)
class DatasetSource:
    """A dataset: files fetched one by one (``file_urls``: file ``relpath`` is
    ``base + relpath``, bases tried in order), or members of ``archives``
    named by ``members`` rules.

    ``files``: the pinned files (checksums/<set>.tsv); empty while the set is
    not pinned. ``eval_split``: what the evaluate and anchors stages code, the
    set's one definition of its evaluation images. ``panoptic``: split -> (the
    panoptic JSON, the folder of its PNGs), for ``masks.generator: coco-panoptic``.
    """

    name: str
    files: tuple[ExpectedFile, ...]
    file_urls: tuple[str, ...] = ()
    archives: tuple[Archive, ...] = ()
    members: tuple[Members, ...] = ()
    # Split of a file: its first path component when it is one of these,
    # else ``default_split``.
    splits: tuple[str, ...] = ()
    default_split: str = "test"
    eval_split: str = "test"
    panoptic: dict[str, tuple[str, str]] = field(default_factory=dict)
    citation: str = ""
    homepage: str = ""
    licence: str = ""

    @property
    def pinned(self) -> bool:
        return bool(self.files)

    def split_names(self) -> tuple[str, ...]:
        """Every split a manifest of this set can hold."""
        return tuple(dict.fromkeys((*self.splits, self.default_split)))

    def split_of(self, relpath: str) -> str:
        head = relpath.split("/", 1)[0]
        return head if head in self.splits else self.default_split

    def rule_of(self, relpath: str) -> Members | None:
        return next((r for r in self.members if r.holds(relpath)), None)

    def is_image(self, relpath: str) -> bool:
        """A row of the manifest (every file of a set fetched file by file is one)."""
        rule = self.rule_of(relpath)
        return rule is None or rule.images

    def archive(self, name: str) -> Archive:
        return next(a for a in self.archives if a.name == name)


@functools.lru_cache(maxsize=None)
def load_checksums(name: str) -> tuple[ExpectedFile, ...]:
    """The pinned files of set ``name`` (none: not pinned yet)."""
    path = CHECKSUMS_DIR / f"{name}.tsv"
    rows = csv.DictReader(path.read_text().splitlines(), delimiter="\t")
    return tuple(ExpectedFile(r["file"], r["sha256"], int(r["bytes"])) for r in rows)


def checksums_path(name: str) -> Path:
    return CHECKSUMS_DIR / f"{name}.tsv"


def kodak() -> DatasetSource:
    return DatasetSource(
        name="kodak",
        files=load_checksums("kodak"),
        file_urls=("http://r0k.us/graphics/kodak/kodak/",),
        default_split="test",
        eval_split="test",
        citation="Kodak Lossless True Color Image Suite (r0k.us/graphics/kodak)",
        homepage="http://r0k.us/graphics/kodak/",
        licence="released by Kodak for unrestricted use in electronic imaging; photographer credit requested",
    )


def bsds500() -> DatasetSource:
    archive = "BSR_bsds500.tgz"
    return DatasetSource(
        name="bsds500",
        files=load_checksums("bsds500"),
        archives=(Archive(archive, (
            "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
        )),),
        members=(Members(archive, r"BSR/BSDS500/data/images/", r"(?:train|val|test)/\d+\.jpg",
                         count=500),),
        splits=("train", "val", "test"),
        eval_split="test",
        citation=("Arbelaez, Maire, Fowlkes, Malik, 'Contour Detection and Hierarchical "
                  "Image Segmentation', TPAMI 33(5), 2011"),
        homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
        licence="research use; cite the paper",
    )


def div2k() -> DatasetSource:
    base = "data.vision.ee.ethz.ch/cvl/DIV2K/"
    train, valid = "DIV2K_train_HR.zip", "DIV2K_valid_HR.zip"
    return DatasetSource(
        name="div2k",
        files=load_checksums("div2k"),
        archives=(
            Archive(train, (f"https://{base}{train}", f"http://{base}{train}"), 3530603713,
                    "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335"),
            Archive(valid, (f"https://{base}{valid}", f"http://{base}{valid}"), 448993893,
                    "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc"),
        ),
        members=(Members(train, r"DIV2K_train_HR/", r"\d{4}\.png", "train/", count=800),
                 Members(valid, r"DIV2K_valid_HR/", r"\d{4}\.png", "val/", count=100)),
        splits=("train", "val"),
        default_split="train",
        eval_split="val",
        citation=("Agustsson, Timofte, 'NTIRE 2017 Challenge on Single Image Super-Resolution: "
                  "Dataset and Study', CVPR Workshops 2017"),
        homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
        licence="academic research only; the copyright stays with the images' owners",
    )


def flickr2k() -> DatasetSource:
    archive = "Flickr2K.tar"
    return DatasetSource(
        name="flickr2k",
        files=load_checksums("flickr2k"),
        archives=(Archive(archive, ("https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar",)),),
        members=(Members(archive, r"Flickr2K/Flickr2K_HR/", r"\d{6}\.png", count=2650),),
        default_split="train",
        eval_split="train",
        citation=("Lim, Son, Kim, Nah, Lee, 'Enhanced Deep Residual Networks for Single Image "
                  "Super-Resolution', CVPR Workshops 2017"),
        homepage="https://github.com/limbee/NTIRE2017",
        licence="no terms published; Flickr images under their owners' licences",
    )


CLIC_CITATION = ("Toderici et al., 'Workshop and Challenge on Learned Image Compression "
                 "(CLIC2020)', CVPR 2020 (compression.cc)")
CLIC_LICENCE = "the challenge's images (compression.cc); terms not restated in the archives"


def clic2020_pro_train() -> DatasetSource:
    archive = "professional_train_2020.zip"
    return DatasetSource(
        name="clic2020-pro-train",
        files=load_checksums("clic2020-pro-train"),
        archives=(Archive(archive, (f"https://data.vision.ee.ethz.ch/cvl/clic/{archive}",), 2003385131,
                          "54a2a684b5cbd0db91770a8695efb774fed1f612194fee68bceaf6b1c48e5d5f"),),
        # The count (585 is the usual figure) is in no source at hand.
        members=(Members(archive, r"train/", r"[^/]+\.png"),),
        default_split="train",
        eval_split="train",
        citation=CLIC_CITATION,
        homepage="https://www.compression.cc/",
        licence=CLIC_LICENCE,
    )


def clic2020_pro_valid() -> DatasetSource:
    archive = "professional_valid_2020.zip"
    return DatasetSource(
        name="clic2020-pro-valid",
        files=load_checksums("clic2020-pro-valid"),
        archives=(Archive(archive, (f"https://data.vision.ee.ethz.ch/cvl/clic/{archive}",), 134834429,
                          "00be38092ade2ab5163b65f7f6523d46c7bca147007f559adbb02c0afc236b7d"),),
        members=(Members(archive, r"valid/", r"[^/]+\.png", count=41),),
        default_split="valid",
        eval_split="valid",
        citation=CLIC_CITATION,
        homepage="https://www.compression.cc/",
        licence=CLIC_LICENCE,
    )


def tecnick() -> DatasetSource:
    archive = "testimages.zip"
    return DatasetSource(
        name="tecnick",
        files=load_checksums("tecnick"),
        archives=(Archive(archive, (
            "https://downloads.sourceforge.net/project/testimages/OLD/OLD_SAMPLING/testimages.zip",
            "https://sourceforge.net/projects/testimages/files/OLD/OLD_SAMPLING/testimages.zip/download",
        )),),
        members=(Members(archive, r"(?:[^/]+/)*RGB/RGB_OR_1200x1200/", r"RGB_OR_1200x1200_\d{3}\.png",
                         count=100),),
        default_split="test",
        eval_split="test",
        citation=("Asuni, Giachetti, 'TESTIMAGES: a Large-scale Archive for Testing Visual "
                  "Devices and Basic Image Processing Algorithms', STAG 2014"),
        homepage="https://testimages.org/",
        licence="CC BY-NC-SA 4.0 (testimages.org; not restated in the old archive)",
    )


def coco2017() -> DatasetSource:
    base = "http://images.cocodataset.org/"
    train, val, panoptic = "train2017.zip", "val2017.zip", "panoptic_annotations_trainval2017.zip"
    pan = {s: (f"annotations/panoptic_{s}.json", f"annotations/panoptic_{s}/")
           for s in ("train2017", "val2017")}
    return DatasetSource(
        name="coco2017",
        files=load_checksums("coco2017"),
        archives=(
            Archive(train, (f"{base}zips/{train}",), 19336861798,
                    "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929"),
            Archive(val, (f"{base}zips/{val}",), 815585330,
                    "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
            Archive(panoptic, (f"{base}annotations/{panoptic}",), 860725834,
                    "c05f76d2129b6b561eb70efe16e7006df62f73fb92889132d373b9d90e31a370"),
        ),
        members=(
            Members(train, r"train2017/", r"\d{12}\.jpg", "train2017/", count=118287),
            Members(val, r"val2017/", r"\d{12}\.jpg", "val2017/", count=5000),
            Members(panoptic, r"annotations/", r"panoptic_(?:train|val)2017\.json", "annotations/",
                    count=2, images=False),
            *(Members(panoptic, f"panoptic_{s}/", r"\d{12}\.png", f"annotations/panoptic_{s}/",
                      inner=f"annotations/panoptic_{s}.zip", images=False)
              for s in ("train2017", "val2017")),
        ),
        splits=("train2017", "val2017"),
        default_split="train2017",
        eval_split="val2017",
        panoptic=pan,
        citation=("Lin et al., 'Microsoft COCO: Common Objects in Context', ECCV 2014; "
                  "Kirillov et al., 'Panoptic Segmentation', CVPR 2019"),
        homepage="https://cocodataset.org/",
        licence="annotations CC BY 4.0; images under their Flickr licences (listed per image)",
    )


SOURCES = {"kodak": kodak, "bsds500": bsds500, "div2k": div2k, "flickr2k": flickr2k,
           "clic2020-pro-train": clic2020_pro_train, "clic2020-pro-valid": clic2020_pro_valid,
           "tecnick": tecnick, "coco2017": coco2017}


def get_source(name: str) -> DatasetSource:
    try:
        return SOURCES[name]()
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(
            f"unknown dataset '{name}'; known: {', '.join(sorted(SOURCES))}"
        ) from None
