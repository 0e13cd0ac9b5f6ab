"""The ``licbench`` command: compress, decompress and inspect files, evaluate
models, check params files, pin a dataset's checksums, print links into the MLflow UI.

Exit codes: 0 success; 1 bad input (an image or bitstream that cannot be used),
or an output that cannot be written (a full disk); 2 bad usage (a params file
refused); 3 model problem (checkpoint unreadable, or not the weights a
bitstream was made with); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import CheckpointError, ConfigError, LicbenchError, ModelMismatchError, ParamsError

EXIT_OK, EXIT_INPUT, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DEFAULT_MODELS_DIR = "models"


class ModelNotFound(CheckpointError):
    """No checkpoint given, and none found with the bitstream's weights."""


def _find_checkpoint(model_id: bytes, models_dir: Path):
    """The checkpoint under ``models_dir`` whose weights made ``model_id``."""
    from .coding.codec import model_id as id_of
    from .models import load_checkpoint

    candidates = sorted(models_dir.rglob("*.pt")) if models_dir.is_dir() else []
    for path in candidates:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError:
            continue
        if id_of(ckpt) == model_id:
            return ckpt
    raise ModelNotFound(
        f"no checkpoint under {models_dir}/ has weights {model_id.hex()}; pass --model CKPT"
    )


def _save_png(path: Path, array) -> None:
    from PIL import Image

    from .fileio import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def cmd_compress(args) -> int:
    from .coding.codec import compress_image
    from .coding.container import write_bitstream
    from .data.images import load_rgb8
    from .metrics import bpp_from_bytes
    from .models import load_checkpoint

    ckpt = load_checkpoint(args.model, device=args.device)
    loaded = load_rgb8(args.image)
    t0 = time.perf_counter()
    nbytes = write_bitstream(args.output, compress_image(ckpt, loaded.array))
    seconds = time.perf_counter() - t0
    h, w = loaded.array.shape[:2]
    note = f" (input converted: {loaded.conversion})" if loaded.conversion else ""
    print(f"{args.output}: {nbytes} bytes, {bpp_from_bytes(nbytes, h, w):.4f} bpp, "
          f"{w}x{h}, {seconds:.2f} s{note}")
    return EXIT_OK


def cmd_decompress(args) -> int:
    from .coding.codec import DEFAULT_DECODE_MAX_PIXELS, decompress_image
    from .coding.container import read_bitstream
    from .models import load_checkpoint

    args.max_pixels = args.max_pixels or DEFAULT_DECODE_MAX_PIXELS
    bs = read_bitstream(args.input)
    if args.model:
        ckpt = load_checkpoint(args.model, device=args.device)
    else:
        ckpt = _find_checkpoint(bs.model_id, Path(args.models_dir))
    t0 = time.perf_counter()
    image = decompress_image(ckpt, bs, str(args.input), max_pixels=args.max_pixels)
    _save_png(Path(args.output), image)
    print(f"{args.output}: {bs.width}x{bs.height}, {time.perf_counter() - t0:.2f} s")
    return EXIT_OK


def cmd_info(args) -> int:
    from .coding.container import VERSION, read_bitstream
    from .metrics import bpp_from_bytes

    bs = read_bitstream(args.input)
    size = Path(args.input).stat().st_size
    info = {
        "file": str(args.input),
        "format_version": VERSION,
        "arch": bs.arch,
        "model_id": bs.model_id.hex(),
        "width": bs.width,
        "height": bs.height,
        "pad_multiple": bs.pad_multiple,
        "latent_shape": list(bs.shape),
        "streams": [len(s) for s in bs.streams],
        "bytes": size,
        "bpp": round(bpp_from_bytes(size, bs.height, bs.width), 6),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return EXIT_OK


def cmd_eval(args) -> int:
    from .config import load_params
    from .evaluate import evaluate_checkpoint
    from .metrics import METRICS
    from .models import load_checkpoint

    # The metrics and weights the evaluate stage uses, from the params file.
    params = load_params(args.params, metrics=METRICS)
    ckpt = load_checkpoint(args.model, device=args.device)
    images = [(Path(p).as_posix(), Path(p)) for p in args.images]
    _, summary = evaluate_checkpoint(ckpt, images, args.out, metrics=params.evaluate.metrics,
                                     weights=params.metric_weights)
    print(json.dumps({"model": ckpt.key, **summary}))
    return EXIT_OK


def cmd_import_compressai(args) -> int:
    from .models import import_compressai

    config = {k: v for k, v in (("N", args.N), ("M", args.M)) if v is not None}
    digest = import_compressai(args.state_dict, args.arch, args.lmbda, args.output, config)
    print(f"{args.output}: {args.arch}, lambda {args.lmbda}, weights {digest[:16]}")
    return EXIT_OK


def cmd_params(args) -> int:
    """Check a params file against the schema and every registry (what the
    stages check, all at once); ``show``: print it with every value resolved."""
    import warnings

    from .config import load_params

    with warnings.catch_warnings():  # torch's deprecation notes, as the models import: not ours
        warnings.simplefilter("ignore", FutureWarning)
        from .anchors import CODECS
        from .data.sources import SOURCES
        from .metrics import METRICS
        from .models import ARCHITECTURES
        from .report import published

    try:
        params = load_params(args.file, sources=SOURCES, architectures=ARCHITECTURES, codecs=CODECS,
                             metrics=METRICS, published=published.available)
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    if args.action == "show":
        print(params.as_yaml(), end="")
    else:
        print(f"{args.file}: valid")
    return EXIT_OK


def cmd_datasets(args) -> int:
    """``pin``: download a set that is not pinned once (or read its mirror copy)
    and write the sha256 of every file it keeps to its checksums table."""
    from .config import MIRROR_ENV
    from .data.datasets import pin_dataset
    from .data.sources import get_source

    mirror = args.mirror or (Path(os.environ[MIRROR_ENV]) if os.environ.get(MIRROR_ENV) else None)
    try:
        if mirror is not None and not mirror.is_dir():
            raise ConfigError(f"mirror {mirror}: no such folder")
        path, count = pin_dataset(get_source(args.dataset), mirror=mirror, cache_dir=args.cache)
    except ConfigError as exc:  # an unknown or already pinned set: bad usage, not a model problem
        print(f"licbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    where = f"mirror {mirror / args.dataset}" if mirror is not None else "its archives"
    print(f"{path}: {count} files of {args.dataset} pinned from {where}; commit it")
    return EXIT_OK


def cmd_mlflow_links(args) -> int:
    """Print the links into ``mlflow ui``: the saved run lists and the compare
    view of each architecture's lambdas on each set."""
    from .config import load_section
    from .tracking import ui_links

    try:
        experiment = load_section(args.params, "mlflow").experiment
    except ParamsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    for label, url in ui_links(experiment, args.ui.rstrip("/")):
        print(f"{label}:\n  {url}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="licbench",
        description="Learned image compression: code images to .lic bitstream files and back.",
        epilog="Exit codes: 0 success, 1 bad input file, 2 bad usage, 3 model problem, "
               "130 interrupted. The file format: docs/bitstream.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compress", help="compress an image into a .lic file",
                       description="Compress IMAGE (PNG, JPEG, ...; converted to 8-bit RGB) "
                                   "with the model in CKPT into the bitstream file OUT.")
    p.add_argument("image", type=Path, metavar="IMAGE")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("--model", "-m", required=True, type=Path, metavar="CKPT",
                   help="a checkpoint written by the train stage")
    p.add_argument("--device", default="cpu", help="torch device for the transforms (default: cpu)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a .lic file into a PNG",
                       description="Decode the bitstream IN into the 8-bit RGB PNG OUT. Without "
                                   "--model, the checkpoint whose weights made IN is looked up "
                                   "under --models-dir.")
    p.add_argument("input", type=Path, metavar="IN")
    p.add_argument("output", type=Path, metavar="OUT.png")
    p.add_argument("--model", "-m", type=Path, metavar="CKPT")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse files whose image is larger; lower it for untrusted files, whose "
                        "decoding work it bounds (default: 2^24 = 16.7 Mpixel)")
    p.add_argument("--models-dir", default=DEFAULT_MODELS_DIR,
                   help=f"where to look for the checkpoint (default: {DEFAULT_MODELS_DIR}/)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="show a .lic file's header",
                       description="Check FILE (header and stream checksums) and print its header.")
    p.add_argument("input", type=Path, metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="code images with a model and measure bpp, PSNR, MS-SSIM",
                       description="Compress each image to OUT/bitstreams/, decode it from the "
                                   "file, write OUT/per_image.parquet and print a JSON summary.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", "-m", required=True, type=Path, metavar="CKPT")
    p.add_argument("--out", required=True, type=Path, metavar="OUT")
    p.add_argument("--device", default="cpu")
    p.add_argument("--params", default="params.yaml", type=Path,
                   help="the params file whose evaluate.metrics are measured (default: %(default)s)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("import-compressai", help="make a checkpoint from CompressAI weights",
                       description="Write the licbench checkpoint OUT from STATE_DICT, a file saved "
                                   "from a CompressAI model (torch.save(model.state_dict()), a "
                                   "training checkpoint with a 'state_dict' entry, or a zoo "
                                   "download). N (and M) are read from the weights; CDF tables are "
                                   "built if the file has none.")
    p.add_argument("state_dict", type=Path, metavar="STATE_DICT")
    p.add_argument("output", type=Path, metavar="OUT")
    p.add_argument("--arch", required=True,
                   help="the CompressAI architecture, by licbench's name (mbt2018, mbt2018-mean, "
                        "cheng2020-anchor, ...)")
    p.add_argument("--lmbda", required=True, type=float,
                   help="the lambda the weights were trained for (zoo quality 1-8: 0.0018, 0.0035, "
                        "0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)")
    p.add_argument("--N", type=int, help="check the weights have this N")
    p.add_argument("--M", type=int, help="check the weights have this M")
    p.set_defaults(func=cmd_import_compressai)

    p = sub.add_parser("params", help="check a params file, or show its resolved values",
                       description="check: validate FILE (types, ranges, unknown or missing keys, "
                                   "the rules across sections, the names of datasets, "
                                   "architectures, codecs and published curves); every problem "
                                   "on one line, exit status 2. show: print FILE's values, "
                                   "normalised, as YAML.")
    p.add_argument("action", choices=("check", "show"))
    p.add_argument("file", nargs="?", default="params.yaml", metavar="FILE",
                   help="default: params.yaml")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("datasets", help="pin a dataset's checksums",
                       description="pin: download SET once (its archives, into the cache; or read "
                                   "its copy under --mirror / LICBENCH_MIRROR), and write the sha256 "
                                   "and size of every file the datasets stage keeps to "
                                   "src/licbench/data/checksums/SET.tsv, to be committed: every "
                                   "later fetch of SET is checked against it.")
    p.add_argument("action", choices=("pin",))
    p.add_argument("dataset", metavar="SET")
    p.add_argument("--mirror", type=Path, help="a folder laid out like <mirror>/<set>/... "
                   "(default: LICBENCH_MIRROR, else the real URLs)")
    p.add_argument("--cache", type=Path, help="where archives are downloaded "
                   "(default: LICBENCH_CACHE, else ~/.cache/licbench)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("mlflow-links", help="print links into the MLflow UI",
                       description="print the links into `mlflow ui` for the experiment of "
                                   "params.yaml's mlflow.experiment in the store of "
                                   "MLFLOW_TRACKING_URI (default sqlite:///mlruns.db): the run "
                                   "lists of evaluations (lambda, bpp, PSNR, MS-SSIM as columns), "
                                   "trainings and reports, and the compare view of each "
                                   "architecture's lambdas on each evaluation set.")
    p.add_argument("--params", default="params.yaml", help="default: params.yaml")
    p.add_argument("--ui", default="http://127.0.0.1:5000", help="where `mlflow ui` serves "
                   "(default: http://127.0.0.1:5000)")
    p.set_defaults(func=cmd_mlflow_links)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, ModelMismatchError) as exc:
        print(f"licbench: error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except LicbenchError as exc:
        print(f"licbench: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        from .entry import os_error_line

        print(f"licbench: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("licbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
