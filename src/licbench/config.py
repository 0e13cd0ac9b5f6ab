"""The schema of params.yaml: every setting's type, range and allowed values, once.

Each stage loads params.yaml through :func:`load_params` at its start and
receives its own section typed (``params.train`` is a :class:`TrainConfig`);
no stage reads a raw dict, and nothing else holds a default.

**params.yaml gives every key.** dvc.yaml lists each stage's params key by key
(``train.lr``, not ``train``, so that editing a logging setting reruns nothing),
and DVC needs every key it lists to be in params.yaml; a default here would be a
value DVC cannot see. So the schema holds no default for any of them: a missing
key is refused (``params.yaml: train.lr: missing; a number > 0``), and
configs/paper-*.yaml are complete params files as well. The only defaults here
belong to optional entries inside mappings that dvc.yaml tracks whole
(``architectures.<arch>.by_lambda``, ``anchors.binaries.<codec>``'s keys), and
this is their one copy.

Types are strict, with the lenience YAML users expect: PyYAML (YAML 1.1) reads
``1e-4`` as a string, so where a number is wanted a string that reads as one
is that number; a float is never an integer (``16.9``, ``16.0``), a boolean is
never a number, and a string is never a boolean (``"false"`` is refused, not
truthy).

Every refusal is one line, ``<file>: <dotted.key>: <what is wrong>; <what is
allowed>`` (:class:`~licbench.errors.ParamsError`; stage commands exit with
status 2 on it, before any work). Structural errors are all reported at once;
the rules across sections are checked once the structure is valid.

Names that code defines are checked against their registries when the caller
passes them (keyword arguments of :func:`load_params`): ``sources`` (dataset
names and their splits, ``licbench.data.sources.SOURCES``), ``architectures``
(each one's config keys, ``licbench.models.ARCHITECTURES``), ``codecs``
(``licbench.anchors.CODECS``), ``metrics`` (``licbench.metrics.METRICS``) and
``published`` (the published curves of a set,
``licbench.report.published.available``). Each stage passes those its code
imports anyway, so that its DVC dependencies do not grow; ``licbench params
check`` passes all of them.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Callable, Collection, Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr,
                      StringConstraints, ValidationError, ValidationInfo, model_validator)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from .errors import ConfigError, ParamsError

MIRROR_ENV = "LICBENCH_MIRROR"


# --- value types ---------------------------------------------------------------

def _yaml_number(value: Any) -> Any:
    """PyYAML reads ``1e-4`` (no dot: YAML 1.1) as a string: a string that is a
    number is read as that number. Anything else goes on to the strict check."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _no_repeats(values: list) -> list:
    seen = set()
    for value in values:
        if value in seen:
            raise PydanticCustomError("params", "{wrong}", {"wrong": f"{_show(value)} is listed twice"})
        seen.add(value)
    return values


def _increasing(values: list) -> list:
    for before, after in zip(values, values[1:]):
        if after <= before:
            raise PydanticCustomError("params", "{wrong}",
                                      {"wrong": f"{_show(after)} comes after {_show(before)}"})
    return values


NO_REPEATS = AfterValidator(_no_repeats)
INCREASING = AfterValidator(_increasing)
NON_EMPTY = at.MinLen(1)

Number = Annotated[float, BeforeValidator(_yaml_number)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
Fraction = Annotated[Number, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, at.MinLen(1)]
Names = Annotated[list[Name], NON_EMPTY, NO_REPEATS]
# Names of licbench.metrics.METRICS (checked when the caller passes ``metrics``);
# psnr is always computed: the report's headline and every published curve use it.
Metrics = Annotated[list[Name], NON_EMPTY, NO_REPEATS,
                    Field(description="a list of metric names without repeats, psnr among them")]
Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$"),
                   Field(description="auto (CUDA when present), cpu, cuda or cuda:<index>")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$"),
                   Field(description="64 lowercase hexadecimal digits")]


class Section(BaseModel):
    """A section of params.yaml: strict types, no unknown key, read-only."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)
    KEY: ClassVar[str] = ""  # its dotted key in params.yaml
    _source: str = PrivateAttr("params.yaml")  # the file it was read from

    def error(self, field: str, wrong: str, allowed: str) -> ParamsError:
        """The one-line refusal of ``<KEY>.<field>``, for checks that need data
        or the machine (a crop larger than the images, CUDA asked for and absent)."""
        key = f"{self.KEY}.{field}" if self.KEY else field
        return ParamsError([refusal(self._source, key, wrong, allowed)])


# --- the sections -------------------------------------------------------------------

class DatasetsConfig(Section):
    KEY: ClassVar[str] = "datasets"
    sets: Names
    # A folder laid out like <mirror>/<set>/...; LICBENCH_MIRROR wins over it.
    mirror: str | None


class ArchitectureConfig(Section):
    """``architectures.<arch>``: the integer settings its registry entry names
    (``config_keys``), and ``by_lambda``: some of them again for some lambdas."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Count]
    by_lambda: dict[Positive, dict[str, Count]] = {}


class TrainConfig(Section):
    KEY: ClassVar[str] = "train"
    # The training set is the union of these sets' ``split`` images; crops are
    # drawn across it in proportion to pixels (licbench.data.trainset).
    datasets: Names
    split: Name
    steps: PositiveInt
    batch_size: PositiveInt  # the whole batch of a step, shared out among DDP processes
    crop: PositiveInt
    lr: Positive
    aux_lr: Positive
    clip_max_norm: NonNegative  # 0: no clipping
    seed: Count
    device: Device
    log_every: PositiveInt
    checkpoint_every: Count  # steps between resumable states; 0: only at the end
    lr_schedule: Literal["plateau", "step", "none"]
    lr_factor: Annotated[Number, Field(gt=0, lt=1)]  # plateau and step: lr *= lr_factor
    lr_patience: Count  # plateau: validations without improvement before a decay
    lr_milestones: Annotated[list[PositiveInt], INCREASING]  # step: the steps at which lr decays
    val_split: Name | None  # null: no validation
    val_images: PositiveInt  # the first images of val_split (by path), center-cropped
    val_crop: PositiveInt
    val_every: Count  # steps between validations; 0: only at the end
    early_stopping: Count  # validations without improvement before stopping; 0: never
    amp: Literal["none", "bf16", "fp16"]  # autocast of the forward pass
    compile: bool  # torch.compile the model

    @model_validator(mode="after")
    def _validation_is_there(self) -> "TrainConfig":
        if self.val_split is None:
            needs = ["lr_schedule plateau" if self.lr_schedule == "plateau" else "",
                     f"early_stopping {self.early_stopping}" if self.early_stopping else ""]
            needs = [n for n in needs if n]
            if needs:
                raise _refused([(("val_split",), f"null, but {' and '.join(needs)} needs validations",
                                 "a split of a set of train.datasets")])
        return self


def _with_psnr(section: "Section") -> None:
    if "psnr" not in section.metrics:
        raise _refused([(("metrics",), "psnr is not listed",
                         "a list of metric names with psnr among them (the report's headline)")])


class EvaluateConfig(Section):
    KEY: ClassVar[str] = "evaluate"
    datasets: Names
    device: Device
    max_images: PositiveInt | None  # null: every image of the set's evaluation split
    metrics: Metrics  # per image, licbench.metrics.METRICS

    @model_validator(mode="after")
    def _psnr(self) -> "EvaluateConfig":
        _with_psnr(self)
        return self


class BinariesConfig(Section):
    """``anchors.binaries.<codec>``: the programs of an external codec (see
    licbench.anchors; a codec without them is skipped with one log line)."""

    encoder: str | None = None
    decoder: str | None = None
    config: str | None = None  # VTM, HM: the encoder's configuration file
    colour: Literal["ycbcr", "rgb"] = "ycbcr"  # VTM, HM: what the codec is fed
    extra_args: list[str] = []  # more arguments for the encoder


class AnchorsConfig(Section):
    KEY: ClassVar[str] = "anchors"
    codecs: dict[Name, Annotated[list[Number], NON_EMPTY, NO_REPEATS]]  # codec -> settings to sweep
    binaries: dict[Name, BinariesConfig]
    workers: PositiveInt | None  # null: one per CPU core
    max_images: PositiveInt | None  # null: every image of the set's evaluation split
    metrics: Metrics  # per image, licbench.metrics.METRICS

    @model_validator(mode="after")
    def _psnr(self) -> "AnchorsConfig":
        _with_psnr(self)
        return self


class ReportConfig(Section):
    KEY: ClassVar[str] = "report"
    method: Literal["pchip", "cubic"]  # the Bjøntegaard fit (licbench.report.bdrate)
    published: Annotated[list[Name], NO_REPEATS]  # curves of licbench/report/published/<set>/


class SamConfig(Section):
    KEY: ClassVar[str] = "masks.sam"
    model_type: Literal["vit_b", "vit_l", "vit_h"]
    checkpoint: str | None  # null: the official URL of model_type; or another URL or a path
    sha256: Sha256 | None  # null: the official one; required for another URL
    points_per_side: PositiveInt
    points_per_batch: PositiveInt
    pred_iou_thresh: Fraction
    stability_score_thresh: Fraction
    box_nms_thresh: Fraction
    min_region_area: Count


class FallbackConfig(Section):
    KEY: ClassVar[str] = "masks.fallback"
    method: Literal["felzenszwalb", "slic"]
    scale: Positive
    sigma: NonNegative
    min_size: Count
    n_segments: PositiveInt
    compactness: Positive
    downscale: PositiveInt


class MasksConfig(Section):
    KEY: ClassVar[str] = "masks"
    sets: dict[Name, Names]  # set -> splits to segment
    # coco-panoptic: COCO's panoptic annotations, one region per segment
    # (licbench.masks.panoptic); sets without panoptic annotations are refused.
    generator: Literal["sam", "fallback", "coco-panoptic"]
    fallback_when_unavailable: bool
    device: Device
    workers: PositiveInt | None  # null: one per CPU core
    max_images: PositiveInt | None  # per split; null: every image
    overlays: Count
    sam: SamConfig
    fallback: FallbackConfig


class MlflowConfig(Section):
    KEY: ClassVar[str] = "mlflow"
    experiment: Name


class PrefectConfig(Section):
    KEY: ClassVar[str] = "prefect"
    dask_address: str | None  # LICBENCH_DASK_ADDRESS wins over it
    workers: PositiveInt | None  # null: one per GPU, or min(4, CPU cores)


class Params(Section):
    """A whole params file."""

    datasets: DatasetsConfig
    archs: Names
    lambdas: Annotated[list[Positive], NON_EMPTY, NO_REPEATS]
    architectures: dict[Name, ArchitectureConfig]
    train: TrainConfig
    evaluate: EvaluateConfig
    anchors: AnchorsConfig
    report: ReportConfig
    masks: MasksConfig
    mlflow: MlflowConfig
    prefect: PrefectConfig
    # A folder with the network weights of the learned metrics (LPIPS, DISTS),
    # laid out as licbench.metrics.WEIGHT_FILES says; null: none (nothing is downloaded).
    metric_weights: str | None

    def architecture(self, arch: str, lmbda: float) -> dict[str, int]:
        """``architectures.<arch>`` with its ``by_lambda`` override for this lambda
        applied (CompressAI, for one, uses larger N and M at high rates)."""
        if arch not in self.architectures:
            raise self.error(f"architectures.{arch}", "missing",
                             f"the settings of {arch} (one of: {', '.join(self.architectures)})")
        settings = self.architectures[arch]
        config = dict(settings.model_extra)
        for key, values in settings.by_lambda.items():
            if key == float(lmbda):
                config.update(values)
        return config

    def as_yaml(self) -> str:
        """The values as YAML, every key resolved (``licbench params show``)."""
        data = self.model_dump()
        data["architectures"] = {  # an architecture's own keys first; by_lambda when it has any
            arch: {**settings.model_extra, **({"by_lambda": settings.by_lambda} if settings.by_lambda else {})}
            for arch, settings in self.architectures.items()}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True,
                              width=100)

    @model_validator(mode="after")
    def _across_sections(self, info: ValidationInfo) -> "Params":
        known = info.context or {}
        problems: list[tuple[tuple, str, str]] = []
        sets = self.datasets.sets

        def in_sets(loc: tuple, name: str) -> None:
            if name not in sets:
                problems.append((loc, f"{name!r} is not in datasets.sets", _one_of(sets)))

        for i, arch in enumerate(self.archs):
            if arch not in self.architectures:
                problems.append((("archs", i), f"{arch!r} has no entry in architectures",
                                 _one_of(self.architectures)))
        for i, name in enumerate(self.train.datasets):
            in_sets(("train", "datasets", i), name)
        for i, name in enumerate(self.evaluate.datasets):
            in_sets(("evaluate", "datasets", i), name)
        for name in self.masks.sets:
            in_sets(("masks", "sets", name), name)
        if known.get("sources") is not None:
            problems += self._source_problems(known["sources"])
        if known.get("architectures") is not None:
            problems += self._architecture_problems(known["architectures"])
        if known.get("codecs") is not None:
            for field in ("codecs", "binaries"):
                for name in getattr(self.anchors, field):
                    if name not in known["codecs"]:
                        problems.append((("anchors", field, name), "unknown codec",
                                         _one_of(sorted(known["codecs"]))))
        if known.get("metrics") is not None:
            registry = known["metrics"]
            for section in ("evaluate", "anchors"):
                for i, name in enumerate(getattr(self, section).metrics):
                    if name not in registry:
                        problems.append(((section, "metrics", i), f"{name!r} is not a known metric",
                                         _one_of(registry)))
                    elif registry[name].needs_weights and self.metric_weights is None:
                        problems.append(((section, "metrics", i), f"{name} needs network weights, "
                                         "and metric_weights is null",
                                         "a folder with its weight files in metric_weights "
                                         "(nothing is downloaded), or leave it out"))
        if known.get("published") is not None:
            # Each set's report draws the listed curves published for it: a curve
            # must be published for at least one evaluation set.
            available = {d: known["published"](d) for d in self.evaluate.datasets}
            anywhere = sorted({c for curves in available.values() for c in curves})
            for i, curve in enumerate(self.report.published):
                if not any(curve in curves for curves in available.values()):
                    problems.append((("report", "published", i),
                                     f"no published curve {curve!r} for "
                                     f"{' or '.join(self.evaluate.datasets)}", _one_of(anywhere)))
        if problems:
            raise _refused(problems)
        return self

    def _source_problems(self, sources: Mapping[str, Callable]) -> list:
        problems = []
        splits = {}
        for i, name in enumerate(self.datasets.sets):
            if name in sources:
                splits[name] = sources[name]().split_names()
            else:
                problems.append((("datasets", "sets", i), f"{name!r} is not a known dataset",
                                 _one_of(sorted(sources))))
        union = [n for n in self.train.datasets if n in splits]
        for name in union:  # every set of the union gives its train.split images
            if self.train.split not in splits[name]:
                problems.append((("train", "split"), f"{self.train.split!r} is not a split of {name}",
                                 _one_of(splits[name])))
        val = self.train.val_split
        if union and val is not None and not any(val in splits[n] for n in union):
            problems.append((("train", "val_split"), f"{val!r} is a split of no set of train.datasets",
                             _one_of(sorted({s for n in union for s in splits[n]}))))
        for name, chosen in self.masks.sets.items():
            for i, split in enumerate(chosen):
                if name in splits and split not in splits[name]:
                    problems.append((("masks", "sets", name, i), f"{split!r} is not a split of {name}",
                                     _one_of(splits[name])))
        if self.masks.generator == "coco-panoptic":
            for name, chosen in self.masks.sets.items():
                if name not in sources:
                    continue
                annotated = sources[name]().panoptic
                lacking = [s for s in chosen if s not in annotated]
                if lacking:
                    with_panoptic = sorted(n for n in self.datasets.sets if n in sources
                                           and sources[n]().panoptic)
                    problems.append((("masks", "sets", name),
                                     f"masks.generator is coco-panoptic, but {name} has no panoptic "
                                     f"annotations of {', '.join(lacking)}",
                                     f"sets with them: {', '.join(with_panoptic) or 'none listed'}; "
                                     "or generator sam or fallback"))
        return problems

    def _architecture_problems(self, registry: Mapping) -> list:
        problems = []
        for arch, settings in self.architectures.items():
            if arch not in registry:
                problems.append((("architectures", arch), f"{arch!r} is not a known architecture",
                                 _one_of(sorted(registry))))
                continue
            keys = tuple(registry[arch].config_keys)
            flag = registry[arch].partition_key  # a 0/1 switch; the other keys are sizes
            minimum = registry[arch].minimum

            def check(loc: tuple, given: Mapping[str, int], complete: bool) -> None:
                for key in keys:
                    if complete and key not in given:
                        problems.append(((*loc, key), "missing",
                                         "0 or 1" if key == flag else "an integer >= 1"))
                for key, value in given.items():
                    if key not in keys:
                        problems.append(((*loc, key), "unknown key",
                                         f"{arch} takes {', '.join(keys)} (and by_lambda)"))
                    elif key == flag and value not in (0, 1):
                        problems.append(((*loc, key), f"{value} is out of range", "0 or 1"))
                    elif key != flag and value < minimum.get(key, 1):
                        problems.append(((*loc, key), f"{value} is out of range",
                                         f"an integer >= {minimum.get(key, 1)}"))

            check(("architectures", arch), settings.model_extra, complete=True)
            for lmbda, override in settings.by_lambda.items():
                check(("architectures", arch, "by_lambda", lmbda), override, complete=False)
        # An architecture trained with region partitions reads the mask table
        # of every set of the union.
        partitioned = [a for a in self.archs if a in registry and a in self.architectures
                       and registry[a].partition_key
                       and any(self.architecture(a, lmbda).get(registry[a].partition_key) == 1
                               for lmbda in self.lambdas)]
        if partitioned:
            for name in self.train.datasets:
                if self.train.split not in self.masks.sets.get(name, []):
                    problems.append((("masks", "sets"), f"no {self.train.split!r} masks of {name}",
                                     f"{partitioned[0]} trains with the masks of every set of "
                                     f"train.datasets: add {name}: [{self.train.split}]"))
        return problems


# --- reading and checking a file ---------------------------------------------------------

def refusal(source: str, key: str, wrong: str, allowed: str) -> str:
    return f"{source}: {key}: {wrong}; {allowed}"


def load_params(path: str | os.PathLike = "params.yaml", overrides: Mapping | None = None,
                **registries) -> Params:
    """Read, check and type a params file (with ``overrides`` merged in by
    :func:`with_overrides`: tests, benchmarks). Raises ParamsError with every
    problem found, one line each. ``registries``: see the module's docstring."""
    data = read_params_file(path)
    if overrides:
        data = with_overrides(data, overrides)
    return validate_params(data, str(path), **registries)


def train_config(path: str | os.PathLike = "params.yaml", **overrides) -> TrainConfig:
    """The train section of ``path`` with ``overrides`` (tests, benchmarks),
    checked as the whole file is."""
    return load_params(path, {"train": overrides}).train


def load_section(path: str | os.PathLike, name: str, overrides: Mapping | None = None) -> Section:
    """Section ``name`` of a params file with ``overrides``, checked alone (no
    rule across sections): tests that run a stage function on data of their own
    (a set of their own, a model that is not in the file)."""
    model = Params.model_fields[name].annotation
    data = read_params_file(path).get(name)
    if overrides and isinstance(data, Mapping):
        data = with_overrides(data, overrides, model)
    try:
        section = model.model_validate(data)
    except ValidationError as exc:
        raise ParamsError([_line(str(path), {**e, "loc": (name, *e["loc"])})
                           for e in exc.errors(include_url=False)]) from None
    _set_source(section, str(path))
    return section


def validate_params(data: Any, source: str = "params.yaml", **registries) -> Params:
    unknown = set(registries) - {"sources", "architectures", "codecs", "published", "metrics"}
    if unknown:
        raise TypeError(f"unknown registries {sorted(unknown)}")
    try:
        params = Params.model_validate(data, context=registries)
    except ValidationError as exc:
        raise ParamsError([_line(source, e) for e in exc.errors(include_url=False)]) from None
    _set_source(params, source)
    return params


def read_params_file(path: str | os.PathLike) -> dict:
    """The mapping a YAML params file holds (a duplicated key is refused)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ParamsError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ParamsError([f"{path}: cannot be read ({exc.strerror})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError([f"{path}: {where}{problem}; valid YAML, each key once"]) from None
    if not isinstance(data, dict):
        raise ParamsError([refusal(str(path), "(top level)", "empty" if data is None else
                                   f"{_kind(data)}", describe(Params))])
    return data


def with_overrides(data: Mapping, overrides: Mapping, model: type[BaseModel] = Params) -> dict:
    """``data`` with ``overrides`` merged in: a section's keys one by one (as
    deep as sections go), any other value (a list, a mapping of names such as
    ``masks.sets``) replaced whole."""
    out = dict(data)
    for key, value in overrides.items():
        field = model.model_fields.get(key)
        sub = field.annotation if field is not None else None
        if isinstance(sub, type) and issubclass(sub, Section) and isinstance(value, Mapping) \
                and isinstance(out.get(key), Mapping):
            out[key] = with_overrides(out[key], value, sub)
        else:
            out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last silently)."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _set_source(model: BaseModel, source: str) -> None:
    if isinstance(model, Section):
        model._source = source
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, BaseModel):
                _set_source(item, source)


# --- machine-dependent settings -----------------------------------------------------------

def resolve_device(cfg: Section, field: str = "device"):
    """The torch device ``<section>.device`` names: ``auto`` is CUDA when present,
    else the CPU; under torchrun, ``cuda`` is this process's GPU."""
    import torch
    import torch.distributed as dist

    given = name = getattr(cfg, field)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise cfg.error(field, f"{given!r} asks for CUDA, which this machine does not have",
                        "auto or cpu")
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"  # one GPU per torchrun process
    return torch.device(name)


def resolve_mirror(cfg: DatasetsConfig) -> Path | None:
    """The local mirror to read datasets from, or None for the real URLs.

    The environment variable LICBENCH_MIRROR wins over ``datasets.mirror``, so
    CI can point any checkout at its mirror; an empty value means "not set".
    """
    value = os.environ.get(MIRROR_ENV)
    if value:
        if not Path(value).expanduser().is_dir():
            raise ConfigError(f"{MIRROR_ENV}={value}: no such folder; a folder laid out like "
                              "<mirror>/<set>/..., or unset it")
        return Path(value).expanduser()
    if cfg.mirror:
        if not Path(cfg.mirror).expanduser().is_dir():
            raise cfg.error("mirror", f"{cfg.mirror!r} is not a folder",
                            "a folder laid out like <mirror>/<set>/..., or null")
        return Path(cfg.mirror).expanduser()
    return None


# --- one line per problem -------------------------------------------------------------------

def _refused(problems: list[tuple[tuple, str, str]]) -> ValidationError:
    """A ValidationError of (loc, what is wrong, what is allowed) problems, found
    by a validator (pydantic prefixes the locs of nested models)."""
    return ValidationError.from_exception_data("params", [
        InitErrorDetails(type=PydanticCustomError("params", "{wrong}", {"wrong": wrong, "allowed": allowed}),
                         loc=loc, input=None)
        for loc, wrong, allowed in problems])


def _one_of(names: Collection) -> str:
    return "one of " + ", ".join(str(n) for n in names) if names else "none is defined"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return repr(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    except yaml.YAMLError:
        text = repr(value)
    text = text.removesuffix("\n...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       (list, "a list"), (dict, "a mapping")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line(source: str, error: dict) -> str:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "params":
        wrong = ctx["wrong"]
    elif kind == "missing":
        wrong = "missing"
    elif kind == "extra_forbidden":
        wrong = "unknown key"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        wrong = f"{_show(value)} is out of range"
    elif kind in ("too_short", "string_too_short"):
        wrong = f"{_show(value)} is empty"
    elif kind in ("literal_error", "string_pattern_mismatch"):
        wrong = f"{_show(value)} is not allowed"
    elif kind == "finite_number":
        wrong = f"{_show(value)} is not a finite number"
    elif kind.endswith(("_type", "_parsing")):
        wrong = "null" if value is None else f"{_show(value)} is {_kind(value)}"
    else:
        wrong = f"{_show(value)}: {error['msg']}"
    if "allowed" in ctx:
        allowed = ctx["allowed"]
    elif kind == "extra_forbidden":
        parent = _type_at(loc[:-1])
        parent = _strip(parent[0]) if parent else None
        fields = parent.model_fields if isinstance(parent, type) and issubclass(parent, BaseModel) else {}
        allowed = "known keys: " + ", ".join(fields)
    else:
        found = _type_at(loc)
        allowed = describe(*found) if found else error["msg"]
    if loc and loc[-1] == "[key]":
        wrong = f"the key {wrong}"
    return refusal(source, _dotted(loc), wrong, allowed)


def _strip(tp: Any, meta: tuple = ()) -> Any:
    """``tp`` without Annotated and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp, *more = get_args(tp)
            meta = (*meta, *more)
        elif get_origin(tp) in (typing.Union, types.UnionType):
            arms = [a for a in get_args(tp) if a is not type(None)]
            if len(arms) != 1:
                return tp
            tp = arms[0]
        else:
            return tp


def _type_at(loc: tuple) -> tuple[Any, tuple] | None:
    """The declared type (and its metadata) at ``loc`` of a params file."""
    tp, meta = Params, ()
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        tp = _strip(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            if field is not None:
                tp, meta = field.annotation, (field,)
            elif tp.model_config.get("extra") == "allow":
                tp, meta = typing.get_type_hints(tp, include_extras=True)["__pydantic_extra__"], ()
                tp = get_args(tp)[1]
            else:
                return None
        elif get_origin(tp) is list and isinstance(part, int):
            tp, meta = get_args(tp)[0], ()
        elif get_origin(tp) is dict:
            key_type, value_type = get_args(tp)
            tp, meta = (key_type if i + 1 < len(loc) and loc[i + 1] == "[key]" else value_type), ()
        else:
            return None
    return tp, meta


def describe(tp: Any, meta: tuple = ()) -> str:
    """What a value of the declared type ``tp`` may be, in words."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *more = get_args(tp)
        return describe(base, (*meta, *more))
    flat: list = []
    for m in meta:
        if isinstance(m, FieldInfo):
            if m.description:
                return m.description
            flat += m.metadata
        elif isinstance(m, at.GroupedMetadata):
            flat += list(m)
        else:
            flat.append(m)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(describe(a, tuple(meta) if len(arms) == 1 else ()) for a in arms)
        return text + " or null" if len(arms) < len(get_args(tp)) else text
    if tp is bool:
        return "true or false"
    if tp in (int, float):
        return ("an integer" if tp is int else "a number") + _range(flat)
    if tp is str:
        pattern = next((m.pattern for m in flat if getattr(m, "pattern", None)), None)
        text = "a non-empty string" if any(isinstance(m, at.MinLen) and m.min_length for m in flat) \
            else "a string"
        return f"{text} matching {pattern}" if pattern else text
    if origin is Literal:
        return "one of " + ", ".join(_show(a).strip("'") for a in get_args(tp))
    if origin is list:
        text = "a non-empty list" if any(isinstance(m, at.MinLen) and m.min_length for m in flat) \
            else "a list"
        if any(m is NO_REPEATS for m in flat):
            text += " without repeats"
        if any(m is INCREASING for m in flat):
            text += " in increasing order"
        return f"{text}, each {describe(get_args(tp)[0])}"
    if origin is dict:
        key_type, value_type = get_args(tp)
        keys = "names" if _strip(key_type) is str else "numbers"
        return f"a mapping of {keys} to {describe(value_type)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping with the keys " + ", ".join(tp.model_fields)
    return str(tp)


def _range(meta: list) -> str:
    def bound(*kinds):
        for m in meta:
            for kind, symbol, attr in kinds:
                if isinstance(m, kind):
                    return symbol, getattr(m, attr)
        return None

    low = bound((at.Gt, ">", "gt"), (at.Ge, ">=", "ge"))
    high = bound((at.Lt, "<", "lt"), (at.Le, "<=", "le"))
    if low and high:
        return f" in {'(' if low[0] == '>' else '['}{low[1]}, {high[1]}{')' if high[0] == '<' else ']'}"
    if low or high:
        return f" {(low or high)[0]} {(low or high)[1]}"
    return ""
