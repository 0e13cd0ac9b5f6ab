"""The GPU suite: training per lambda on one GPU, measured inside one short device lease.

    python bench/gpu_suite.py --prepare      # here: wheels and images into .gpu/ (git ignores it)
    python bench/gpu_suite.py OUTDIR         # on the device machine; docs/gpu.md has the exact call
    python bench/gpu_suite.py --smoke OUTDIR # every part on the CPU at tiny sizes (tests/test_gpu_suite.py)

Five parts, each with a time budget (the rest of a part is skipped, with the
reason recorded, once its budget is spent) and each written to
``OUTDIR/gpu_suite.json`` as soon as it has something (the log goes to
``OUTDIR/gpu_suite.log``), so a lease that ends early still returns what was
measured:

1. ``throughput``: training images/s at paper size (batch 16, 256x256 crops) of
   mbt2018-mean, mbt2018, wacnn and segpic, for fp32, bf16 autocast,
   channels_last and torch.compile, each through ``train_model`` and through
   CompressAI's plain step on the same model (bench/train_loops.py), their
   ratio, the model's FLOP/s against the measured bf16 matrix rate, and the
   validation RD loss after the same steps for each setting (``rd_check``);
2. ``decode``: every architecture, briefly trained by ``train_model``; the
   Kodak images encoded on the GPU (the analysis there), decoded on the CPU in
   worker processes: decodes whose latent and pixels equal the encoding
   machine's, and CompressAI's own compress on the GPU and decompress on the
   CPU as the baseline for its architectures;
3. ``sam``: SAM vit_b with random weights on the GPU at 32x32 prompts, seconds
   per image through the masks stage's segmenter, and the stage's images/s;
4. ``train``: mbt2018-mean N=128/M=192 at lambda 0.0067 on BSDS500's training
   split for about 3 minutes, then its Kodak point (bpp from file bytes, PSNR)
   beside the quick default's CPU point and CompressAI's published quality 3;
5. ``ddp``: the train stage (``run_train_stage``) under ``torchrun
   --nproc_per_node=1`` in a process group of NCCL (gloo on the CPU): the
   collectives and the first process's writes (checkpoint, train.json, state,
   MLflow run).

The last line printed is the JSON object: ``device`` and one key per part.
``--smoke`` runs all five on the CPU with tiny models and a few steps (the GPU
only changes where things run: encode and decode are then both on the CPU).
"""

from __future__ import annotations

import os

# Progress bars of train_model and the masks stage: a line every 30 s, not ten a second, in the log.
os.environ.setdefault("TQDM_MININTERVAL", "30")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

from licbench.coding.codec import decode, encode, pad_to_multiple, to_tensor, to_uint8  # noqa: E402
from licbench.coding.container import decode_container, encode_container  # noqa: E402
from licbench.data.crops import PartitionedCrops, load_partitions, load_split  # noqa: E402
from licbench.data.datasets import evaluation_images, prepare_dataset, read_manifest  # noqa: E402
from licbench.data.images import load_rgb8  # noqa: E402
from licbench.data.sources import get_source  # noqa: E402
from licbench.entry import run_main  # noqa: E402
from licbench.errors import ConfigError  # noqa: E402
from licbench.fileio import write_json_atomic  # noqa: E402
from licbench.metrics import psnr  # noqa: E402
from licbench.models import (  # noqa: E402
    ARCHITECTURES, compressai_architectures, get_architecture, load_checkpoint, trains_with_partition,
)
from licbench.config import load_params, load_section  # noqa: E402
from licbench.train import train_model  # noqa: E402
from train_loops import PlainLoop, interleave, paired_ratio, pipeline_steps, rate, train_config  # noqa: E402

log = logging.getLogger("gpu_suite")

# --- what travels to the device machine --------------------------------------

CARRY = REPO / ".gpu"  # ignored by git; named in the run's carry list
WHEELS = CARRY / "whl"
CARRIED_MIRROR = CARRY / "mirror"
CARRIED_QUICK_POINT = CARRY / "quick-default-kodak.json"
# What the device image lacks (KINDS.md's package list), at requirements.lock's
# versions: licbench's coding and metrics, SAM, and MLflow (skinny: no SQL
# store; the DDP part logs to a file store) with the needs of it that the image
# lacks. The image's torch, numpy, pyarrow, scipy, scikit-image, requests ... are used as they are.
CARRIED_PACKAGES = (
    "compressai", "pytorch-msssim", "segment-anything",
    "mlflow-skinny", "databricks-sdk", "cachetools", "GitPython", "gitdb", "smmap", "importlib_metadata",
    "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto", "opentelemetry-semantic-conventions",
    "sqlparse", "fastapi", "starlette", "sniffio", "python-dotenv",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
)
DEVICE_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                   "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
# Images the GPU run reads: split -> how many (by path; None: all).
CARRIED_IMAGES = {"bsds500": {"train": None, "val": 8}, "kodak": {"test": None}}
CARRY_LIMIT = 64 << 20  # the working tree and the carried paths, together
# What `dvc repro` writes for the quick default's lambda 0.0067 model on Kodak.
QUICK_POINT = REPO / "data" / "metrics" / "kodak" / "mbt2018-mean-0.0067.json"

# --- what the suite measures -------------------------------------------------

LAMBDA = 0.0067  # CompressAI's zoo quality 3 (docs/training.md "Paper-scale settings")
ZOO_QUALITY = 3
THROUGHPUT_ARCHS = ("mbt2018-mean", "mbt2018", "wacnn", "segpic")
DEFAULT_ARCH = "mbt2018-mean"
# name -> (amp, channels_last, compile)
VARIANTS = {"fp32": ("none", False, False), "bf16": ("bf16", False, False),
            "channels_last": ("none", True, False), "compile": ("none", False, True)}
# The order they run in: decoding last, as it takes the weights of the short
# training for mbt2018-mean and any time the parts before it left unused.
PARTS = ("throughput", "sam", "train", "ddp", "decode")
@dataclasses.dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    budgets: dict  # part -> seconds
    batch_size: int = 16  # throughput and train
    crop: int = 256
    warmup: int = 3  # untimed steps at the start of each throughput run
    steps: int = 15  # timed steps of each run
    repeats: int = 2  # runs of each loop, interleaved
    # Settings measured for every throughput architecture; the default one gets all of VARIANTS.
    variants: tuple = ("fp32", "bf16", "channels_last")
    compile: bool = True
    compile_reserve: float = 60.0  # seconds a compile variant needs left to be tried (the first compiles)
    rd_seconds: float = 30.0  # the RD check's share of the throughput part
    rd_steps: int = 400  # at most
    val_images: int = 8
    val_crop: int = 256
    train_images: int | None = None  # BSDS500 training images loaded (None: all)
    partition_images: int = 32  # of them, segmented for SegPIC's training
    decode_images: int | None = None  # Kodak images coded per architecture (None: all 24)
    decode_crop: int | None = None  # crop them (smoke)
    weights_steps: int = 60  # the short training that gives part 2 its weights
    weights_batch: int = 8
    weights_crop: int = 128
    workers: int = max(1, (os.cpu_count() or 2) - 2)
    sam_points: int = 32
    sam_images: int = 3
    sam_stage_images: int = 4
    # The stage's thresholds, or these (the smoke run's toy SAM keeps no mask at the stage's).
    sam_thresholds: dict = dataclasses.field(default_factory=dict)
    train_seconds: float | None = None  # of the short training; None: the part's budget less eval_reserve
    eval_reserve: float = 25.0  # seconds of the train part kept for the Kodak evaluation
    eval_images: int | None = None
    ddp_steps: int = 20
    ddp_batch: int = 16
    ddp_crop: int = 256

    def size(self, arch: str) -> dict:
        # Smoke: the smallest size the architecture's declaration gives (models/registry.py).
        return dict(ARCHITECTURES[arch].tiny) if self.smoke else paper_size(arch)


GPU_BUDGETS = {"throughput": 170.0, "decode": 60.0, "sam": 15.0, "train": 185.0, "ddp": 25.0}
SMOKE_BUDGETS = {part: 120.0 for part in PARTS}


def settings_for(smoke: bool, parts: list[str], total: float | None) -> Settings:
    """``total``: seconds for the chosen ``parts``, shared in the default proportions."""
    budgets = SMOKE_BUDGETS if smoke else GPU_BUDGETS
    if total is not None:
        scale = total / sum(budgets[p] for p in parts)
        budgets = {k: v * scale for k, v in budgets.items()}
    if not smoke:
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device: the suite measures a GPU; --smoke runs it on the CPU")
        return Settings(smoke=False, device="cuda", budgets=budgets)
    return Settings(smoke=True, device="cpu", budgets=budgets, batch_size=1, crop=64, warmup=0, steps=1,
                    variants=("fp32",), compile=False, rd_seconds=10.0, rd_steps=3, train_seconds=2.0,
                    val_images=2, val_crop=64, train_images=8,
                    partition_images=4, decode_images=2, decode_crop=128, weights_steps=1, weights_batch=2,
                    weights_crop=64, workers=1, sam_points=4, sam_images=2, sam_stage_images=2,
                    sam_thresholds={"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
                    eval_reserve=0.0, eval_images=2, ddp_steps=2, ddp_batch=2, ddp_crop=64)


# --- what the suite reads from the project's params files: these few functions
# (and train_loops.train_config) are all that follows the params schema.

def paper_size(arch: str) -> dict:
    """The architecture's settings in configs/paper-<arch>.yaml at LAMBDA, else
    CompressAI's zoo N, M at ZOO_QUALITY, else its declaration's paper size."""
    path = REPO / "configs" / f"paper-{arch}.yaml"
    if path.is_file():
        return load_params(path).architecture(arch, LAMBDA)
    from compressai.zoo.image import cfgs

    if arch not in cfgs:
        return dict(ARCHITECTURES[arch].paper)
    config = dict(zip(("N", "M"), cfgs[arch][ZOO_QUALITY]))
    return {k: v for k, v in config.items() if k in ARCHITECTURES[arch].config_keys}


def paper_train_settings(arch: str = DEFAULT_ARCH) -> dict:
    """The optimiser settings of configs/paper-<arch>.yaml's ``train`` section."""
    section = load_params(REPO / "configs" / f"paper-{arch}.yaml").train
    return {k: getattr(section, k) for k in ("lr", "aux_lr", "clip_max_norm")}


def masks_settings(generator: str, device: str = "auto", **sam):
    """params.yaml's ``masks`` section with ``generator``, ``device`` and ``sam``
    overriding SAM's settings (random weights: no checkpoint)."""
    return load_section(REPO / "params.yaml", "masks", {
        "generator": generator, "device": device, "sam": {"checkpoint": None, "sha256": None, **sam}})


# --- plumbing ----------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class PartOverrun(BaseException):
    """A part ran well past its budget (a compile or a decode that took too long);
    a BaseException, so that the handlers that record a variant's error let it through."""


class Results:
    """The suite's JSON: rewritten (atomically) whenever a part reports."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.save()

    def update(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


class Part:
    """One part's record, budget and partial results."""

    def __init__(self, name: str, seconds: float, results: Results):
        self.name, self.results = name, results
        self.start, self.seconds = time.monotonic(), seconds
        self.record: dict = {"status": "running", "budget_s": round(seconds, 1)}
        self.save()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def skip(self, what: str, reason: str) -> None:
        self.record.setdefault("skipped", {})[what] = reason
        log.info("%s: skipped %s: %s", self.name, what, reason)
        self.save()

    def save(self) -> None:
        self.record["seconds"] = round(time.monotonic() - self.start, 2)
        self.results.update(self.name, self.record)


def run_part(name: str, fn, ctx: "Context", results: Results, seconds: float, grace: float = 20.0) -> None:
    """``fn(ctx, part)`` within ``seconds``: it checks ``part.left()`` between
    steps; past 1.25 x ``seconds`` + ``grace`` it is stopped where it is."""
    part = Part(name, seconds, results)
    log.info("=== %s (budget %.0f s)", name, part.seconds)

    def overrun(signum, frame):
        raise PartOverrun(f"stopped {time.monotonic() - part.start:.0f} s into a {part.seconds:.0f} s budget")

    # A single compile or decode can outlast the checks between steps.
    previous = signal.signal(signal.SIGALRM, overrun)
    signal.setitimer(signal.ITIMER_REAL, part.seconds * 1.25 + grace)
    try:
        fn(ctx, part)
        part.record["status"] = "partial" if part.record.get("skipped") or part.record.get("errors") else "ok"
    except PartOverrun as exc:
        part.record.update(status="stopped", reason=str(exc))
        log.warning("%s: %s", name, exc)
    except Exception as exc:  # a part's failure is a finding: record it, run the next part
        part.record.update(status="error", error=first_line(exc))
        log.error("%s failed:\n%s", name, traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    part.save()
    log.info("=== %s: %s in %.1f s", name, part.record["status"], part.record["seconds"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(statistics.median(values)), 6) if values else None


# --- data ----------------------------------------------------------------------

def find_mirror(given: str | None, carried: bool = True) -> Path:
    """The folder laid out like the dataset mirror to read images from: ``--mirror``,
    else the carried .gpu/mirror, else LICBENCH_MIRROR, else ../shared/data/mirror."""
    candidates = [Path(given)] if given else []
    if carried:
        candidates.append(CARRIED_MIRROR)
    if os.environ.get("LICBENCH_MIRROR"):
        candidates.append(Path(os.environ["LICBENCH_MIRROR"]))
    candidates.append(REPO.parent / "shared" / "data" / "mirror")
    for c in candidates:
        if (c / "kodak").is_dir() and (c / "bsds500").is_dir():
            return c
    hint = "run `python bench/gpu_suite.py --prepare` or set LICBENCH_MIRROR" if carried else \
        "set LICBENCH_MIRROR or --mirror"
    raise ConfigError(f"no image mirror with kodak/ and bsds500/ among {[str(c) for c in candidates]}: {hint}")


def image_subset(name: str, counts: dict):
    """The dataset's source reduced to ``counts`` (split -> first n by path, None: all)."""
    source = get_source(name)
    files = []
    for split, n in counts.items():
        chosen = sorted((f for f in source.files if source.split_of(f.relpath) == split), key=lambda f: f.relpath)
        files += chosen[:n] if n is not None else chosen
    return dataclasses.replace(source, files=tuple(files))


class Context:
    """What every part reads: the settings, a data root prepared from the
    mirror (files sha256-checked), the images in memory, a scratch folder."""

    def __init__(self, settings: Settings, mirror: Path, scratch: Path, outdir: Path, results: "Results"):
        self.settings, self.scratch, self.outdir, self.results = settings, scratch, outdir, results
        self.bf16_tflops = results.data["device"]["bf16_matmul_tflops"]
        self.device = torch.device(settings.device)
        self.data_root = scratch / "data"
        s = settings
        bsds = {"train": s.train_images, "val": s.val_images}
        kodak = {"test": s.decode_images}
        t0 = time.perf_counter()
        for name, counts in (("bsds500", bsds), ("kodak", kodak)):
            prepare_dataset(image_subset(name, counts), self.data_root,
                            self.data_root / "manifests" / f"{name}.parquet", mirror=mirror)
        self.manifest = read_manifest(self.data_root / "manifests" / "bsds500.parquet")
        self.train_images, _ = load_split(self.manifest, self.data_root, "train")
        self.val_images, _ = load_split(self.manifest, self.data_root, "val")
        self.kodak = evaluation_images("kodak", self.data_root)
        self.partitions = self._partitions(s.partition_images)
        self.trained: dict | None = None  # the train part's checkpoint, for the decode part
        log.info("data: %d training, %d validation, %d Kodak images, %d partitions (%.1f s)",
                 len(self.train_images), len(self.val_images), len(self.kodak), len(self.partitions),
                 time.perf_counter() - t0)

    def _partitions(self, count: int) -> list[np.ndarray]:
        """Region partitions of the first ``count`` training images from the masks
        stage's own generation (the classical fallback: no SAM weights here)."""
        from licbench.masks.generate import make_segmenter
        from licbench.masks.stage import generate_masks, select_images

        cfg = masks_settings("fallback")
        images = select_images(self.manifest, ["train"], self.data_root, count)
        table = generate_masks(images, make_segmenter(cfg), self.scratch / "masks", {"dataset": "bsds500"},
                               workers=min(self.settings.workers, 8))
        return load_partitions(table, self.manifest, "train", self.train_images, limit=count)

    def training_data(self, arch: str, config: dict) -> tuple[list, list | None]:
        """(images, partitions) for ``train_model``: the partitioned subset for
        an architecture that trains with partitions."""
        if trains_with_partition(arch, config):
            return self.train_images[: len(self.partitions)], self.partitions
        return self.train_images, None

    def workdir(self, *names: str) -> Path:
        path = self.scratch.joinpath(*names)
        path.mkdir(parents=True, exist_ok=True)
        return path


def device_info(settings: Settings, device: torch.device) -> dict:
    info = {
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "smoke": settings.smoke,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "compressai": __import__("compressai").__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        # licbench sets none of these: fp32 convolutions run in TF32 on CUDA, fp32 matmuls do not.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    info["bf16_matmul_tflops"] = round(matmul_tflops(device, 256 if settings.smoke else 8192), 4)
    return info


def matmul_tflops(device: torch.device, n: int) -> float:
    """bf16 n x n x n products on random data (zeros run faster): the ceiling
    the models' FLOP/s are set against."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    reps = 10 if device.type == "cuda" else 3
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


# --- part 1: training throughput ------------------------------------------------

def training_gflop(loop: PlainLoop) -> float:
    """GFLOP of one training step per image (forward and backward, as PyTorch's
    FLOP counter counts them: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loop.step(0)
    return counter.get_total_flops() / loop.batch_size / 1e9


def measure_variant(ctx: Context, arch: str, config: dict, variant: str, entry: dict) -> dict:
    """Pipeline and plain loop of one setting, interleaved; their ratio and FLOP/s
    (the FLOPs per image counted once per architecture, into ``entry``)."""
    s, device = ctx.settings, ctx.device
    amp, channels_last, compile_ = VARIANTS[variant]
    images, partitions = ctx.training_data(arch, config)
    part_batches = None
    if partitions is not None:
        crops = PartitionedCrops(images, partitions, s.crop, seed=1)
        part_batches = [crops.batch(s.batch_size)[1] for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The plain loop is CompressAI's examples/train.py: NCHW batches and weights,
    # and both channels-last for the channels_last setting.
    plain = PlainLoop(arch, config, LAMBDA, device, s.batch_size, s.crop, amp=amp, compile=compile_,
                      channels_last_input=channels_last, channels_last_model=channels_last,
                      partitions=part_batches)
    if "gflop_per_image" not in entry:
        entry["gflop_per_image"] = round(training_gflop(plain), 3)
    gflop = entry["gflop_per_image"]
    first: dict = {}

    def plain_run() -> list[float]:
        steps = plain.run(s.warmup + s.steps)
        first.setdefault("plain", steps[0])
        return steps[s.warmup:]

    summaries = []

    def pipeline_run() -> list[float]:
        t0 = time.perf_counter()
        steps, summary = pipeline_steps(arch, config, LAMBDA, images, ctx.workdir("throughput"),
                                        steps=s.warmup + s.steps + 1, batch_size=s.batch_size, crop=s.crop,
                                        channels_last=channels_last, partitions=partitions, device=s.device,
                                        amp=amp, compile=compile_)
        first.setdefault("pipeline_call", time.perf_counter() - t0)
        summaries.append(summary)
        return steps[s.warmup:]

    runs = interleave({"plain": plain_run, "pipeline": pipeline_run}, s.repeats)
    del plain
    result = {"pipeline": rate(runs["pipeline"], s.batch_size), "plain": rate(runs["plain"], s.batch_size)}
    paired = paired_ratio(runs["pipeline"], runs["plain"])
    result.update(ratio=paired["ratio"], ratio_runs=paired["runs"], ratio_spread=paired["spread"])
    result["pipeline"]["data_seconds_per_batch"] = median(x["data_seconds_per_batch"] for x in summaries)
    result["first_plain_step_seconds"] = round(first["plain"], 3)  # includes the compile, if any
    result["first_pipeline_run_seconds"] = round(first["pipeline_call"], 3)
    if gflop and ctx.bf16_tflops:
        for loop in ("pipeline", "plain"):
            tflops = gflop * result[loop]["images_per_second"] / 1e3
            result[loop]["model_tflops"] = round(tflops, 6)
            result[loop]["fraction_of_bf16_matmul"] = round(tflops / ctx.bf16_tflops, 6)
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def rd_check(ctx: Context, part: Part, compiled: bool) -> dict:
    """Validation RD loss of mbt2018-mean after the same steps for each setting:
    fp32 at two seeds (their difference is the noise), the others at seed 0."""
    s = ctx.settings
    arch, config = DEFAULT_ARCH, s.size(DEFAULT_ARCH)
    runs = {"fp32": ("fp32", 0), "fp32_seed1": ("fp32", 1), "bf16": ("bf16", 0),
            "channels_last": ("channels_last", 0)}
    if compiled:
        runs["compile"] = ("compile", 0)
    fp32 = part.record["archs"].get(arch, {}).get("variants", {}).get("fp32", {})
    speed = fp32.get("pipeline", {}).get("images_per_second")
    budget = min(s.rd_seconds, part.left() - 5)
    steps = s.rd_steps
    if speed:  # fit the runs in the check's share; a compile costs more than its steps
        steps = min(steps, int(budget / len(runs) * speed / s.batch_size / 1.3))
    if steps < 1 or budget <= 0:
        raise TimeoutError(f"{budget:.0f} s left in the part")
    out = {"arch": arch, **config, "steps": steps, "batch_size": s.batch_size, "crop": s.crop,
           "val_images": len(ctx.val_images), "val_crop": s.val_crop, "lambda": LAMBDA, "val": {}}
    for name, (variant, seed) in runs.items():
        if part.left() < 5:
            out.setdefault("skipped", {})[name] = "throughput budget spent"
            continue
        amp, channels_last, compile_ = VARIANTS[variant]
        _, summary = pipeline_steps(arch, config, LAMBDA, ctx.train_images, ctx.workdir("rd"), steps=steps,
                                    batch_size=s.batch_size, crop=s.crop, channels_last=channels_last,
                                    device=s.device, amp=amp, compile=compile_, seed=seed,
                                    **paper_train_settings(), val_split="val", val_crop=s.val_crop,
                                    val_images=ctx.val_images)
        out["val"][name] = summary["val"]
    val = out["val"]
    if "fp32" in val and "fp32_seed1" in val:
        noise = abs(val["fp32"]["loss"] - val["fp32_seed1"]["loss"])
        out["noise"] = round(noise, 6)
        out["within_noise"] = {k: abs(v["loss"] - val["fp32"]["loss"]) <= noise
                               for k, v in val.items() if k not in ("fp32", "fp32_seed1")}
    return out


def part_throughput(ctx: Context, part: Part) -> None:
    s = ctx.settings
    part.record.update(settings={"batch_size": s.batch_size, "crop": s.crop, "warmup_steps": s.warmup,
                                 "timed_steps": s.steps, "repeats": s.repeats, "lambda": LAMBDA},
                       bf16_matmul_tflops=ctx.bf16_tflops, archs={})
    archs = part.record["archs"]
    errors = part.record.setdefault("errors", {})
    # What decides the defaults first: every setting of the default architecture
    # and its RD check; then the other architectures; their compiles last.
    others = [a for a in THROUGHPUT_ARCHS if a != DEFAULT_ARCH]
    order = [(DEFAULT_ARCH, v) for v in VARIANTS] + [("rd_check", None)]
    order += [(a, v) for a in others for v in s.variants] + [(a, "compile") for a in others]
    compiled = False
    for arch, variant in order:
        if arch == "rd_check":
            try:
                part.record["rd_check"] = rd_check(ctx, part, compiled)
            except TimeoutError as exc:
                part.skip("rd_check", f"budget: {exc}")
            except Exception as exc:
                errors["rd_check"] = first_line(exc)
                log.error("rd_check failed:\n%s", traceback.format_exc())
            torch._dynamo.reset()  # the default architecture's compiled graphs are done with
            part.save()
            continue
        key = f"{arch}/{variant}"
        if variant == "compile" and not s.compile:
            part.skip(key, "--smoke: torch.compile is measured on the GPU only")
            continue
        need = s.compile_reserve if variant == "compile" else 3.0
        if part.left() < need:
            part.skip(key, f"budget: {part.left():.0f} s left, {need:.0f} s needed")
            continue
        config = s.size(arch)
        entry = archs.setdefault(arch, {**config, "variants": {}})
        log.info("throughput %s %s", arch, variant)
        try:
            entry["variants"][variant] = measure_variant(ctx, arch, config, variant, entry)
            compiled |= variant == "compile" and arch == DEFAULT_ARCH
        except Exception as exc:  # e.g. a model torch.compile cannot compile: a finding, go on
            entry["variants"][variant] = {"error": first_line(exc)}
            errors[key] = first_line(exc)
            log.error("%s failed:\n%s", key, traceback.format_exc())
        finally:
            gc.collect()
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        if variant == "compile" and arch != DEFAULT_ARCH:
            torch._dynamo.reset()  # each architecture's graphs stay out of the next one's cache limit
        part.save()
    if not errors:
        part.record.pop("errors")


# --- part 2: cross-device decoding -------------------------------------------------
# Worker processes (spawned: the parent holds CUDA), one torch thread each, code
# one image per job: the encoding machine's model on the GPU encodes and decodes
# it, a second copy of the model on the CPU decodes the same bytes. They keep
# the last models they loaded.

_MODELS: dict = {}


def _worker_init() -> None:
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")


def _checkpoint(path: str, device: str, role: str):
    key = (path, device, role)
    if key not in _MODELS:
        while len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = load_checkpoint(path, device)
    return _MODELS[key]


class SynthesisInput:
    """What g_s receives: CompressAI's ``decompress`` returns only the image."""

    def __init__(self, model):
        self.latent = None
        self.handle = model.g_s.register_forward_pre_hook(self)

    def __call__(self, module, inputs):
        self.latent = inputs[0].detach().to("cpu", torch.float32).numpy()


@torch.no_grad()
def compressai_decompress(model, strings, shape, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    hook = SynthesisInput(model)
    try:
        out = model.decompress(strings, shape)
    finally:
        hook.handle.remove()
    return hook.latent, to_uint8(out["x_hat"][..., :height, :width])


def padded(strings: list, height: int, width: int, channels: int) -> list:
    """CompressAI's rANS decoder reads 32-bit words with no end check, and a
    desynchronised decode (the failure the baseline counts) would read past its
    buffer: zero bytes after each string keep it inside (as licbench's coding/rans.py guard does)."""
    pad = bytes(4 * (2 * -(-height // 16) * -(-width // 16) * channels + 1024))
    return [[bytes(s) + pad for s in group] for group in strings]


def compare(image: np.ndarray, sent: tuple, got: tuple) -> dict:
    """The receiver's (latent, pixels) against the sender's: equal or not, and by how much."""
    (sent_latent, sent_pixels), (got_latent, got_pixels) = sent, got
    diff = np.abs(sent_pixels.astype(int) - got_pixels.astype(int))
    return {
        "latent_identical": bool(sent_latent.shape == got_latent.shape and np.array_equal(sent_latent, got_latent)),
        "pixels_identical": bool(np.array_equal(sent_pixels, got_pixels)),
        "max_pixel_diff": int(diff.max()),
        "psnr_diff_db": abs(psnr(image, sent_pixels) - psnr(image, got_pixels)),
    }


def code_job(path: str, device: str, arch: str, image: np.ndarray, baseline: bool) -> dict:
    """One image: licbench's encode on ``device`` (what it decodes there is the
    reference) and decode on the CPU; with ``baseline``, CompressAI's own
    compress and decompress on ``device`` against its decompress on the CPU."""
    sender, receiver = _checkpoint(path, device, "sender"), _checkpoint(path, "cpu", "receiver")
    height, width = image.shape[:2]
    t0 = time.perf_counter()
    bs, latent = encode(sender, image)
    encode_seconds = time.perf_counter() - t0
    data = encode_container(bs)
    sent = (latent.to("cpu").numpy(), decode(sender, decode_container(data))[0])
    t0 = time.perf_counter()
    pixels, got_latent = decode(receiver, decode_container(data))
    row = {**compare(image, sent, (got_latent.numpy(), pixels)), "bpp": 8 * len(data) / (height * width),
           "encode_seconds": encode_seconds, "decode_seconds": time.perf_counter() - t0}
    if baseline:
        x = pad_to_multiple(to_tensor(image, device), get_architecture(arch).pad_multiple)
        with torch.no_grad():
            coded = sender.model.compress(x)
        sent = compressai_decompress(sender.model, coded["strings"], coded["shape"], height, width)
        n = int(receiver.config["N"])
        channels = n + int(receiver.config.get("M", n))  # Cheng2020 has one width: M = N
        try:
            got = compressai_decompress(receiver.model, padded(coded["strings"], height, width, channels),
                                        coded["shape"], height, width)
            row["compressai"] = compare(image, sent, got)
        except Exception as exc:  # a desynchronised decode may also raise
            row["compressai"] = {"error": first_line(exc)}
    return row


def summarize_decodes(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    return {
        "images": len(rows),
        "latent_identical": sum(r["latent_identical"] for r in ok),
        "pixels_identical": sum(r["pixels_identical"] for r in ok),
        "max_pixel_diff": max((r["max_pixel_diff"] for r in ok), default=None),
        "max_psnr_diff_db": round(max(r["psnr_diff_db"] for r in ok), 6) if ok else None,
        "errors": [r["error"] for r in rows if "error" in r][:3],
    }


def stop_pool(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)


def part_decode(ctx: Context, part: Part) -> None:
    s = ctx.settings
    images = [load_rgb8(p).array for _, p in ctx.kodak[: s.decode_images]]
    if s.decode_crop:
        images = [np.ascontiguousarray(im[: s.decode_crop, : s.decode_crop]) for im in images]
    baseline = set(compressai_architectures())
    short = (f"train_model: {s.weights_steps} steps of batch {s.weights_batch}, {s.weights_crop}x"
             f"{s.weights_crop} crops of BSDS500 train, lr 1e-3, lambda {LAMBDA}")
    part.record.update(images=len(images), encode_device=s.device, decode_device="cpu", workers=s.workers,
                       archs={})
    rows: dict[str, dict] = {}
    pending: dict = {}

    def finish(arch: str) -> None:
        entry = rows[arch]
        ours = [r for r in entry["rows"] if "error" not in r]
        result = {**entry["config"], "weights": entry["weights"], **summarize_decodes(entry["rows"]),
                  "bpp": median(r["bpp"] for r in ours),
                  "encode_seconds": median(r["encode_seconds"] for r in ours),
                  "decode_seconds": median(r["decode_seconds"] for r in ours),
                  "training_seconds": entry["training_seconds"]}
        cai = [r["compressai"] for r in ours if "compressai" in r]
        if cai:
            result["compressai"] = summarize_decodes(cai)
        part.record["archs"][arch] = result
        part.save()

    def collect(timeout: float) -> int:
        done, _ = wait(list(pending), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            arch = pending.pop(future)
            try:
                rows[arch]["rows"].append(future.result())
            except Exception as exc:
                rows[arch]["rows"].append({"error": first_line(exc)})
            if len(rows[arch]["rows"]) == len(images):
                finish(arch)
        return len(done)

    pool = ProcessPoolExecutor(s.workers, mp_context=get_context("spawn"), initializer=_worker_init)
    # The workers take the cores; the trainings here drive the GPU and need few.
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        for arch in ARCHITECTURES:
            if part.left() < 5:
                part.skip(arch, f"budget: {part.left():.0f} s left")
                continue
            config = s.size(arch)
            t0 = time.perf_counter()
            trained = ctx.trained if arch == DEFAULT_ARCH and ctx.trained else None
            if trained is not None and trained["config"] == config:
                path, weights = trained["path"], f"the train part's ({trained['steps']} steps)"
            else:
                train_images, partitions = ctx.training_data(arch, config)
                path, weights = ctx.workdir("decode", arch) / "checkpoint.pt", short
                cfg = train_config(s.weights_steps, s.weights_batch, s.weights_crop, lr=1e-3, device=s.device,
                                   log_every=s.weights_steps)
                train_model(arch, config, LAMBDA, cfg, train_images, path, partitions=partitions)
            rows[arch] = {"config": config, "rows": [], "weights": weights,
                          "training_seconds": round(time.perf_counter() - t0, 2)}
            for image in images:
                pending[pool.submit(code_job, str(path), s.device, arch, image, arch in baseline)] = arch
            while pending and collect(0):  # take what is done; the next training runs while the workers code
                pass
        while pending and part.left() > 0:
            collect(part.left())
        for arch in sorted(set(pending.values())):
            if rows[arch]["rows"]:
                finish(arch)
            part.skip(f"{arch} images", f"budget: {len(rows[arch]['rows'])} of {len(images)} coded")
    finally:
        stop_pool(pool)
        torch.set_num_threads(threads)


# --- part 3: SAM -------------------------------------------------------------------

def tiny_sam():
    """A SAM of segment-anything's classes at toy size (the smoke run's)."""
    from functools import partial

    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

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
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32,
                                                               num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def part_sam(ctx: Context, part: Part) -> None:
    from segment_anything import sam_model_registry

    from licbench.masks.generate import make_segmenter
    from licbench.masks.stage import generate_masks, select_images

    s, device = ctx.settings, ctx.device
    torch.manual_seed(0)
    model = tiny_sam() if s.smoke else sam_model_registry["vit_b"](checkpoint=None)
    cfg = masks_settings("sam", device=s.device, model_type="vit_b", points_per_side=s.sam_points,
                         **s.sam_thresholds)
    segmenter = make_segmenter(cfg, model=model)
    size = int(model.image_encoder.img_size)
    part.record.update(model="vit_b with random weights (seed 0)" if not s.smoke else "toy SAM (smoke)",
                       settings={k: segmenter.settings[k] for k in ("points_per_side", "points_per_batch",
                                                                    "pred_iou_thresh", "stability_score_thresh",
                                                                    "image_size")})
    with torch.no_grad():
        x = torch.rand(1, 3, size, size, device=device)
        model.image_encoder(x)
        times = []
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            model.image_encoder(x)
            sync(device)
            times.append(time.perf_counter() - t0)
    part.record["image_encoder_seconds"] = median(times)
    images = ctx.train_images[: s.sam_images + 1]
    segmenter.segment(images[0])  # warm-up
    seconds, counts = [], []
    for im in images[1:]:
        if part.left() < 2:
            part.skip("segment", f"budget: {len(seconds)} of {s.sam_images} images")
            break
        t0 = time.perf_counter()
        counts.append(len(segmenter.segment(im)))
        sync(device)
        seconds.append(time.perf_counter() - t0)
    part.record.update(images=len(seconds), seconds_per_image=median(seconds),
                       masks_per_image=float(np.mean(counts)) if counts else None,
                       note="random weights: the thresholds keep few masks; the time is the model's")
    part.save()
    if part.left() < 2 * (median(seconds) or 1):
        part.skip("stage", f"budget: {part.left():.0f} s left")
        return
    rows = select_images(ctx.manifest, ["val"], ctx.data_root, s.sam_stage_images)
    t0 = time.perf_counter()
    table = generate_masks(rows, segmenter, ctx.workdir("sam-masks"), {"dataset": "bsds500"}, workers=1)
    elapsed = time.perf_counter() - t0
    part.record["stage"] = {"images": len(rows), "seconds": round(elapsed, 3),
                            "images_per_second": round(len(rows) / elapsed, 4),
                            "masks_per_image": float(np.mean([len(table.rles(r["image"])) for r in rows]))}


# --- part 4: a short real training --------------------------------------------------

def reference_points() -> dict:
    """CompressAI's published quality 3 and the quick default's measured CPU point."""
    from licbench.report import published

    curve = published.load("kodak", "compressai-mbt2018-mean")
    q = ZOO_QUALITY - 1
    points = {"compressai_quality3": {"bpp": round(curve["results"]["bpp"][q], 4),
                                      "psnr": round(curve["results"]["psnr-rgb"][q], 3),
                                      "source": curve["source"]["path"], "published": True}}
    for path in (CARRIED_QUICK_POINT, QUICK_POINT):
        if path.is_file():
            quick = json.loads(path.read_text())
            points["quick_default_cpu"] = {k: quick.get(k) for k in ("model", "bpp", "psnr", "ms_ssim")}
            points["quick_default_cpu"]["source"] = "dvc repro (params.yaml), data/metrics/kodak"
            break
    else:
        points["quick_default_cpu"] = {"missing": f"no {QUICK_POINT.relative_to(REPO)}: run `dvc repro` "
                                                  "before --prepare to carry it"}
    return points


def part_train(ctx: Context, part: Part) -> None:
    s, device = ctx.settings, ctx.device
    arch, config = DEFAULT_ARCH, s.size(DEFAULT_ARCH)
    settings = paper_train_settings()
    part.record.update(arch=arch, **config, **{"lambda": LAMBDA}, batch_size=s.batch_size, crop=s.crop,
                       **settings, train_images=len(ctx.train_images), reference=reference_points())
    measured = ctx.results.data.get("throughput", {}).get("archs", {}).get(arch, {}).get("variants", {})
    speed = measured.get("fp32", {}).get("pipeline", {}).get("images_per_second")
    if not speed:  # the throughput part did not run: time a few steps here
        steps, _ = pipeline_steps(arch, config, LAMBDA, ctx.train_images, ctx.workdir("train-calibrate"),
                                  steps=s.warmup + s.steps + 1, batch_size=s.batch_size, crop=s.crop,
                                  device=s.device)
        speed = s.batch_size / statistics.median(steps[s.warmup:])
    seconds = s.train_seconds or part.left() - s.eval_reserve - 5
    # 0.9: the run validates and checkpoints too, and must leave the evaluation its time
    steps = max(1, int(0.9 * seconds * speed / s.batch_size))
    part.record.update(planned_seconds=round(seconds, 1), planned_images_per_second=round(speed, 2),
                       steps=steps)
    part.save()
    path = ctx.workdir("train") / "checkpoint.pt"
    cfg = train_config(steps, s.batch_size, s.crop, device=s.device, val_split="val",
                       val_images=len(ctx.val_images), val_crop=s.val_crop, log_every=100, **settings)
    summary = train_model(arch, config, LAMBDA, cfg, ctx.train_images, path, val_images=ctx.val_images)
    part.record.update(train_seconds=summary["seconds"], images_per_second=summary["images_per_second"],
                       val=summary.get("val"), final=summary.get("final"))
    part.save()
    from licbench.evaluate import evaluate_checkpoint

    ckpt = load_checkpoint(path, device)
    _, kodak = evaluate_checkpoint(ckpt, ctx.kodak[: s.eval_images], ctx.workdir("train-eval"),
                                   metrics=["psnr", "ms_ssim"])
    part.record["kodak"] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in kodak.items()}
    part.record["kodak"]["device"] = s.device
    ctx.trained = {"path": path, "config": config, "steps": summary["steps"]}


# --- part 5: the DDP code path under torchrun -------------------------------------

def ddp_worker(workdir: Path) -> None:
    """Run by torchrun: join a process group as licbench would, run the train stage."""
    import torch.distributed as dist

    from licbench.tracking import Target
    from licbench.train import run_train_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = json.loads((workdir / "job.json").read_text())
    cuda = job["device"] == "cuda"
    info = {"backend": None}
    try:
        # licbench's process_group joins a group only when torchrun starts
        # several processes; with one, the suite joins it with the backend
        # licbench picks (NCCL on CUDA), so that the collectives go through it.
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
        info.update(backend=dist.get_backend(), world_size=dist.get_world_size(), rank=dist.get_rank())
        if cuda:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        summary = run_train_stage(train_config(**job["train"]), job["arch"], job["arch_config"], job["lmbda"],
                                  workdir / "checkpoint.pt", workdir / "train.json", job["data_root"],
                                  workdir / "state.pt", mlflow_to=Target("gpu-suite", "gpu-suite"))
        info["summary"] = summary
    except Exception as exc:
        info["error"] = first_line(exc)
        info["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        write_json_atomic(workdir / "result.json", info)


def ddp_run(ctx: Context, part: Part, validation: bool) -> dict:
    s = ctx.settings
    workdir = ctx.workdir("ddp-val" if validation else "ddp")
    config = s.size(DEFAULT_ARCH)
    train = {"datasets": ["bsds500"], "split": "train", "steps": s.ddp_steps, "batch_size": s.ddp_batch,
             "crop": s.ddp_crop, "lr": 1e-4, "device": s.device, "log_every": 1,
             "checkpoint_every": max(1, s.ddp_steps // 2)}
    if validation:
        train.update(val_split="val", val_images=len(ctx.val_images), val_crop=s.val_crop)
    job = {"train": train, "arch": DEFAULT_ARCH, "arch_config": config, "lmbda": LAMBDA,
           "device": s.device, "data_root": str(ctx.data_root)}
    write_json_atomic(workdir / "job.json", job)
    env = dict(os.environ, MLFLOW_TRACKING_URI=(workdir / "mlruns").as_uri(), MLFLOW_ALLOW_FILE_STORE="true",
               OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(Path(__file__).resolve()), "--ddp-worker", str(workdir)]
    log_path = ctx.outdir / "ddp.log"
    t0 = time.perf_counter()
    with open(log_path, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}   (validation: {validation})\n")
        out.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(10.0, part.left()))
        except BaseException:  # the budget, or the suite stopped: take torchrun's worker with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    run = {"validation": validation, "exit_code": rc, "seconds": round(time.perf_counter() - t0, 2)}
    result_path = workdir / "result.json"
    if not result_path.is_file():
        run["error"] = f"torchrun exited {rc} without a result (see ddp.log)"
        return run
    result = json.loads(result_path.read_text())
    run.update({k: result[k] for k in ("backend", "world_size", "nccl", "error") if k in result})
    summary = result.get("summary")
    if summary is not None:
        ckpt = load_checkpoint(workdir / "checkpoint.pt")
        train_json = workdir / "train.json"
        state = torch.load(workdir / "state.pt", map_location="cpu", weights_only=True)
        runs = list((workdir / "mlruns").glob("*/*/metrics/train"))
        run["wrote"] = {
            "checkpoint": ckpt.weights_sha256 == summary.get("weights_sha256"),
            "train_json": train_json.is_file() and json.loads(train_json.read_text()) == summary,
            "state": bool(state.get("finished")) and state.get("step") == s.ddp_steps,
            "mlflow_run": bool(runs),
        }
        run["summary"] = {k: summary.get(k) for k in ("steps", "processes", "device", "images_per_second", "val")}
    elif "traceback" in result:
        log.error("ddp worker:\n%s", result["traceback"])
    return run


def part_ddp(ctx: Context, part: Part) -> None:
    part.record["runs"] = []
    part.record["note"] = ("one process: licbench's train_model wraps the model in DistributedDataParallel only "
                           "for more than one; the collectives (loss means, validation sums) and the first "
                           "process's writes run")
    first = ddp_run(ctx, part, validation=True)  # the stage as params.yaml runs it
    part.record["runs"].append(first)
    part.save()
    if "error" in first:
        part.record.setdefault("errors", {})["validation"] = first["error"]
        if part.left() > 10:  # the rest of the path (training steps, writes) without validation
            part.record["runs"].append(ddp_run(ctx, part, validation=False))
        else:
            part.skip("no_validation", f"budget: {part.left():.0f} s left")
    last = part.record["runs"][-1]
    part.record.update(backend=last.get("backend"), world_size=last.get("world_size"))
    if len(part.record["runs"]) == 2 and "error" in last:
        part.record["errors"]["no_validation"] = last["error"]


# --- preparing the carried folder --------------------------------------------------

def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def locked_versions() -> dict[str, str]:
    versions = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            versions[normalized(m.group(1))] = m.group(2)
    return versions


def tree_bytes() -> int:
    """Bytes of what the device call sends besides the carried paths: tracked
    files and untracked files git does not ignore."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((REPO / f).stat().st_size for f in files if f and (REPO / f).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prepare(mirror_arg: str | None) -> dict:
    """Fill .gpu/: the wheels the device image lacks (cp312, manylinux) and the images."""
    mirror = find_mirror(mirror_arg, carried=False)
    versions = locked_versions()
    missing = [n for n in CARRIED_PACKAGES if normalized(n) not in versions]
    if missing:
        raise ConfigError(f"requirements.lock pins no version of {missing}")
    wanted = {normalized(n): versions[normalized(n)] for n in CARRIED_PACKAGES}
    WHEELS.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(WHEELS),
           *(f"{n}=={versions[normalized(n)]}" for n in CARRIED_PACKAGES)]
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        raise ConfigError("pip download of the carried wheels failed (its output is above)")
    for wheel in WHEELS.glob("*.whl"):  # one version of each: two would stop the install there
        name, version = wheel.name.split("-")[:2]
        if wanted.get(normalized(name)) != version:
            print(f"removing {wheel.name} (not in the carried set)")
            wheel.unlink()
    for name, counts in CARRIED_IMAGES.items():
        prepare_dataset(image_subset(name, counts), CARRIED_MIRROR,
                        CARRIED_MIRROR / "manifests" / f"{name}.parquet", mirror=mirror)
    if QUICK_POINT.is_file():
        shutil.copy2(QUICK_POINT, CARRIED_QUICK_POINT)
    else:  # a copy from an earlier run of the DAG would no longer say what this checkout gives
        CARRIED_QUICK_POINT.unlink(missing_ok=True)
    sizes = {"wheels": folder_bytes(WHEELS), "images": folder_bytes(CARRIED_MIRROR),
             "carry": folder_bytes(CARRY), "tree": tree_bytes()}
    sizes["total"] = sizes["carry"] + sizes["tree"]
    report = {"carry": str(CARRY.relative_to(REPO)), "wheels": sorted(p.name for p in WHEELS.glob("*.whl")),
              "mib": {k: round(v / 2**20, 2) for k, v in sizes.items()},
              "quick_point": CARRIED_QUICK_POINT.is_file()}
    if sizes["total"] > CARRY_LIMIT:
        raise ConfigError(f"{CARRY}: the working tree and the carried folder come to "
                          f"{sizes['total'] / 2**20:.1f} MiB, over the device call's 64 MiB")
    return report


# --- main --------------------------------------------------------------------------

def set_up_logging(outdir: Path) -> None:
    logging.captureWarnings(True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):  # run_main's, replaced by the same stream with times
        root.removeHandler(handler)
    for handler in (logging.FileHandler(outdir / "gpu_suite.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def suite(outdir: Path, smoke: bool, parts: list[str], total: float | None, mirror_arg: str | None) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    set_up_logging(outdir)
    started = time.monotonic()
    settings = settings_for(smoke, parts, total)
    device = torch.device(settings.device)
    if smoke:
        # Tiny models gain nothing from a second thread, and on a shared CPU
        # OpenMP threads that outnumber the free cores spin and stall each other.
        torch.set_num_threads(1)
    mirror = find_mirror(mirror_arg)
    results = Results(outdir / "gpu_suite.json", {
        "suite": {"command": " ".join(sys.argv), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "smoke": smoke, "parts": parts, "budgets_s": {k: round(v, 1) for k, v in settings.budgets.items()},
                  "mirror": str(mirror)},
        **{p: {"status": "not run" if p not in parts else "pending"} for p in PARTS},
    })
    results.update("device", device_info(settings, device))
    log.info("device: %s", json.dumps(results.data["device"]))
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        t0 = time.monotonic()
        try:
            ctx = Context(settings, mirror, Path(tmp), outdir, results)
        except Exception as exc:  # no part can run: say why in the JSON too
            results.data["suite"]["setup_error"] = first_line(exc)
            results.save()
            raise
        results.data["suite"]["setup_seconds"] = round(time.monotonic() - t0, 1)
        functions = {"throughput": part_throughput, "decode": part_decode, "sam": part_sam,
                     "train": part_train, "ddp": part_ddp}
        carry = 0.0  # seconds the parts so far left unused (or, negative, overran)
        for name in (p for p in PARTS if p in parts):
            budget = max(0.5 * settings.budgets[name], settings.budgets[name] + carry)
            t0 = time.monotonic()
            run_part(name, functions[name], ctx, results, budget)
            carry += settings.budgets[name] - (time.monotonic() - t0)
    results.data["suite"]["seconds"] = round(time.monotonic() - started, 1)
    results.save()
    return results.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", type=Path, help="where gpu_suite.json and the logs go")
    parser.add_argument("--prepare", action="store_true", help="fill .gpu/ (wheels, images) for the device call")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU, tiny sizes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    parser.add_argument("--budget", type=float, help="total seconds, shared among the parts as by default "
                        f"(GPU default: {sum(GPU_BUDGETS.values()):.0f})")
    parser.add_argument("--mirror", help="image folder laid out like the dataset mirror (default: .gpu/mirror, "
                        "LICBENCH_MIRROR, ../shared/data/mirror)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args.ddp_worker)
        return
    if args.prepare:
        print(json.dumps(prepare(args.mirror)))
        return
    if args.outdir is None:
        parser.error("OUTDIR is required (or --prepare)")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; parts are {','.join(PARTS)}")
    data = suite(args.outdir, args.smoke, parts, args.budget, args.mirror)
    print(json.dumps(data))


if __name__ == "__main__":
    run_main(main)
