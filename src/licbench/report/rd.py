"""The ``report`` stage: RD curves, BD-rate table and plots for one evaluation set.

Curves come from three places:

- the trained models: one curve per architecture, a point per lambda, from the
  ``evaluate`` stage's per-model summaries (bpp from file bytes);
- the classical anchors run here (``anchors`` stage);
- published curves (:mod:`licbench.report.published`), labelled "[published]".

Every trained curve is compared with every anchor, local and published, by
Bjøntegaard delta (:mod:`licbench.report.bdrate`): BD-rate at equal PSNR and at
equal MS-SSIM (in dB, -10 log10(1 - MS-SSIM)), BD-PSNR and BD-MS-SSIM(dB), with
the cubic and the PCHIP fit. Outputs, all in ``out_dir``:

- ``bd_rate.md`` and ``bd_table.json``: the table; ``bd_rate.json`` (DVC
  metrics): its headline, BD-rate at equal PSNR with ``report.method``'s fit;
- ``rd_psnr.png``, ``rd_ms_ssim.png``: the RD plots;
- ``rd_points.json``: every point of every curve, for ``dvc plots``;
- ``compressai/<arch>.json``: each trained curve in CompressAI's results
  layout, readable by ``python -m compressai.utils.plot``.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ReportConfig
from ..errors import LicbenchError
from ..fileio import atomic_path, write_bytes_atomic, write_json_atomic
from . import published
from .bdrate import METHODS, BDWarning, bd_quality, bd_rate

# Bjøntegaard's fit needs 2 points at the very least; VCEG-M33's cubic passes
# exactly through 4, and the common test conditions code 4 rate points (QP 22,
# 27, 32, 37): 4 lambdas per curve are the norm.
TOO_FEW_POINTS = ("BD-rate needs at least 2 points per curve, and 4 are the norm (VCEG-M33's "
                  "cubic fit passes through 4 rate points, as the common test conditions code)")

log = logging.getLogger(__name__)


@dataclass
class Curve:
    id: str           # metric-safe name: "mbt2018-mean", "jpeg", "published_vtm"
    label: str        # legend text
    kind: str         # "trained", "anchor" or "published"
    bpp: list[float]
    psnr: list[float]
    ms_ssim: list[float | None]
    extra: dict = field(default_factory=dict)  # more per-point lists (lambda, times, ...)
    info: dict = field(default_factory=dict)   # about the whole curve (source, description)

    def sorted(self) -> "Curve":
        order = np.argsort(self.bpp)
        pick = lambda v: [v[i] for i in order]  # noqa: E731
        return Curve(self.id, self.label, self.kind, pick(self.bpp), pick(self.psnr),
                     pick(self.ms_ssim), {k: pick(v) for k, v in self.extra.items()}, self.info)

    @property
    def ms_ssim_db(self) -> list[float | None]:
        return [None if v is None else -10 * math.log10(max(1 - v, 1e-12)) for v in self.ms_ssim]


# --- loading ----------------------------------------------------------------

def trained_curves(metrics_dir: Path, archs: list[str], lambdas: list[float]) -> list[Curve]:
    """One curve per architecture from ``<metrics_dir>/<arch>-<lambda>.json``."""
    summaries = {}
    for path in sorted(metrics_dir.glob("*.json")):
        try:
            s = json.loads(path.read_text())
            summaries[(s["arch"], float(s["lambda"]))] = s
        except (ValueError, KeyError, TypeError) as exc:
            raise LicbenchError(f"{path}: not an evaluate summary ({exc})") from None
    curves = []
    for arch in archs:
        missing = [lm for lm in lambdas if (arch, float(lm)) not in summaries]
        if missing:
            raise LicbenchError(f"{metrics_dir}: no evaluation of {arch} at lambda {missing}; "
                                f"run the evaluate stage first")
        rows = [summaries[(arch, float(lm))] for lm in lambdas]
        curves.append(Curve(
            arch, f"{arch} [trained here]", "trained",
            [r["bpp"] for r in rows], [r["psnr"] for r in rows], [r.get("ms_ssim") for r in rows],
            {"lambda": [float(r["lambda"]) for r in rows],
             "bpp_estimated": [r.get("bpp_estimated") for r in rows],
             "encoding_time": [r.get("encode_seconds") for r in rows],
             "decoding_time": [r.get("decode_seconds") for r in rows],
             "weights_sha256": [r.get("weights_sha256") for r in rows]},
        ).sorted())
    return curves


def anchor_curves(curves_json: Path) -> list[Curve]:
    if not curves_json.is_file():
        raise LicbenchError(f"{curves_json}: missing; run the anchors stage first")
    out = []
    for codec, entry in json.loads(curves_json.read_text()).items():
        res = entry["results"]
        out.append(Curve(codec, f"{entry['name']} [this run]", "anchor", res["bpp"],
                         res["psnr-rgb"], res.get("ms-ssim-rgb") or [None] * len(res["bpp"]),
                         info={"description": entry.get("description")}).sorted())
    return out


def published_curves(dataset: str, ids: list[str]) -> list[Curve]:
    """The curves of ``ids`` published for ``dataset`` (report.published lists
    those of every evaluation set: each set draws its own)."""
    available = published.available(dataset)
    absent = [c for c in ids if c not in available]
    if absent:
        log.info("report %s: no published %s for this set%s", dataset, ", ".join(absent),
                 "" if available else "; comparing with local anchors only")
    out = []
    for curve_id in (c for c in ids if c in available):
        entry = published.load(dataset, curve_id)
        res = entry["results"]
        out.append(Curve(f"published_{curve_id.replace('-', '_')}", f"{entry['name']} [published]",
                         "published", res["bpp"], res["psnr-rgb"],
                         res.get("ms-ssim-rgb") or [None] * len(res["bpp"]),
                         info={"source": entry["source"], "licence": entry["licence"]}).sorted())
    return out


# --- BD table -----------------------------------------------------------------

def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _bd_pair(anchor: Curve, test: Curve, quality: str) -> dict:
    """BD-rate and BD-quality of ``test`` against ``anchor`` for one quality measure."""
    qa = anchor.psnr if quality == "psnr" else anchor.ms_ssim_db
    qt = test.psnr if quality == "psnr" else test.ms_ssim_db
    if any(v is None for v in qa) or any(v is None for v in qt):
        return {"note": f"no {quality} values"}
    few = [f"the {name} curve has {len(q)} point" for name, q in (("anchor", qa), ("test", qt))
           if len(q) < 2]
    if few:
        return {**{f"bd_{k}_{m}": None for k in ("rate", quality) for m in METHODS},
                "note": f"{', '.join(few)}: {TOO_FEW_POINTS}"}
    out: dict = {}
    notes: set[str] = set()
    label = "PSNR" if quality == "psnr" else "MS-SSIM"
    # BD-rate integrates log-rate as a function of quality: where quality does
    # not increase with rate (an undertrained model that saturates, say) that
    # function does not exist and any number would be an artefact of the fit.
    # BD-quality, a function of rate, stays defined.
    flat = [name for name, q in (("anchor", qa), ("test", qt)) if np.any(np.diff(q) <= 0)]
    for method in METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BDWarning)
            out[f"bd_rate_{method}"] = (None if flat else
                                        _finite(bd_rate(anchor.bpp, qa, test.bpp, qt, method)))
            out[f"bd_{quality}_{method}"] = _finite(bd_quality(anchor.bpp, qa, test.bpp, qt, method))
        notes.update(f"{label}: {w.message}" for w in caught if issubclass(w.category, BDWarning))
    for name in flat:
        notes.add(f"{label}: no BD-rate: the {name} curve's {label} does not increase with rate")
    if notes:
        out["warnings"] = sorted(notes)
    return out


def bd_table(trained: list[Curve], anchors: list[Curve]) -> dict:
    """``{model: {anchor: {"psnr": {...}, "ms_ssim": {...}}}}`` (percent, dB)."""
    return {t.id: {a.id: {"psnr": _bd_pair(a, t, "psnr"), "ms_ssim": _bd_pair(a, t, "ms_ssim")}
                   for a in anchors}
            for t in trained}


def too_few_line(curve: Curve) -> str:
    return f"{curve.label}: {len(curve.bpp)} point; {TOO_FEW_POINTS}"


def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:+.2f}{unit}"


def table_markdown(table: dict, anchors: list[Curve], dataset: str, method: str,
                   too_few: list[Curve] = ()) -> str:
    labels = {a.id: a.label for a in anchors}
    lines = [f"# BD-rate on {dataset}",
             "",
             f"Bjøntegaard delta of each trained model against each anchor, {method} fit in "
             "log rate over the overlapping quality range. BD-rate: rate change at equal "
             "quality (negative: the model needs fewer bits). BD-PSNR: PSNR change at equal "
             "rate. n/a: the curves do not overlap, or (BD-rate) a curve's quality does not "
             "increase with rate. Marked *: see the warnings below.",
             ""]
    notes: list[str] = []
    lines += [f"{too_few_line(c)}; its BD values are n/a, its points are in the plots." for c in too_few]
    lines += [""] if too_few else []
    for model, row in table.items():
        lines += [f"## {model}", "",
                  "| anchor | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM) | BD-MS-SSIM (dB) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for anchor_id, cell in row.items():
            p, m = cell["psnr"], cell["ms_ssim"]
            mark = ""
            for part in (p, m):
                for w in part.get("warnings", []):
                    notes.append(f"{model} vs {labels[anchor_id]}: {w}")
                    mark = " *"
            lines.append(
                f"| {labels[anchor_id]}{mark} | {_fmt(p.get(f'bd_rate_{method}'), ' %')} "
                f"| {_fmt(p.get(f'bd_psnr_{method}'), ' dB')} "
                f"| {_fmt(m.get(f'bd_rate_{method}'), ' %')} "
                f"| {_fmt(m.get(f'bd_ms_ssim_{method}'), ' dB')} |")
        lines.append("")
    if notes:
        lines += ["## Warnings", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------

STYLE = {"trained": dict(linestyle="-", linewidth=2.2, marker="o", markersize=6),
         "anchor": dict(linestyle="--", linewidth=1.3, marker="s", markersize=4),
         "published": dict(linestyle=":", linewidth=1.3, marker="^", markersize=4,
                           markerfacecolor="none")}


def plot_rd(curves: list[Curve], quality: str, dataset: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [c for c in curves if c.kind == "trained"]
    x_max = max(1.0, 1.6 * max(max(c.bpp) for c in trained))
    fig, ax = plt.subplots(figsize=(9.5, 6), dpi=110)
    # Strong, distinct colours first (tab10), then more (Dark2, Set1).
    colours = (plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
               + plt.get_cmap("Set1").colors)
    ys: list[float] = []
    for i, c in enumerate(curves):
        y = c.psnr if quality == "psnr" else c.ms_ssim_db
        pts = [(b, v) for b, v in zip(c.bpp, y) if v is not None and b <= x_max]
        if not pts:
            continue
        bx, by = zip(*pts)
        ys += by
        ax.plot(bx, by, label=c.label, color=colours[i % len(colours)], **STYLE[c.kind])
    ax.set_xlim(0, x_max)
    if ys:
        ax.set_ylim(min(ys) - 0.5, max(ys) + 0.5)
    ax.set_xlabel("rate (bits per pixel, from file bytes)")
    ax.set_ylabel("PSNR (dB, RGB)" if quality == "psnr" else "MS-SSIM (dB) = -10 log10(1 - MS-SSIM)")
    ax.set_title(f"{dataset}: {'PSNR' if quality == 'psnr' else 'MS-SSIM'} against rate")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --- outputs ----------------------------------------------------------------------

def compressai_json(curve: Curve, dataset: str) -> dict:
    """A trained curve in CompressAI's results layout (``compressai.utils.plot`` reads it)."""
    return {"name": curve.id,
            "description": f"licbench: {curve.id} trained here, evaluated on {dataset} with real "
                           "bitstream files (bpp from file bytes)",
            "results": {"lmbda": curve.extra["lambda"], "bpp": curve.bpp, "psnr-rgb": curve.psnr,
                        "ms-ssim-rgb": curve.ms_ssim,
                        "encoding_time": curve.extra["encoding_time"],
                        "decoding_time": curve.extra["decoding_time"]}}


def rd_points(curves: list[Curve]) -> list[dict]:
    return [{"curve": c.label, "kind": c.kind, "bpp": b, "psnr": p, "ms_ssim_db": m}
            for c in curves for b, p, m in zip(c.bpp, c.psnr, c.ms_ssim_db)]


@dataclass
class Report:
    dataset: str
    curves: list[Curve]
    table: dict
    markdown: str
    files: dict[str, Path]


def build_report(cfg: ReportConfig, dataset: str, out_dir: str | Path, data_root: str | Path = "data",
                 *, archs: list[str], lambdas: list[float]) -> Report:
    """The report of ``archs`` at ``lambdas`` (params.yaml's matrix) on ``dataset``."""
    method = cfg.method
    data_root, out_dir = Path(data_root), Path(out_dir)
    trained = trained_curves(data_root / "metrics" / dataset, archs, lambdas)
    anchors = anchor_curves(data_root / "anchors" / dataset / "curves.json")
    anchors += published_curves(dataset, cfg.published)
    curves = trained + anchors
    too_few = [c for c in curves if len(c.bpp) < 2]
    for curve in too_few:
        log.warning("report %s: %s", dataset, too_few_line(curve))
    table = bd_table(trained, anchors)
    markdown = table_markdown(table, anchors, dataset, method, too_few)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "bd_rate.json", "table_json": out_dir / "bd_table.json",
             "table_md": out_dir / "bd_rate.md",
             "plot_psnr": out_dir / "rd_psnr.png", "plot_ms_ssim": out_dir / "rd_ms_ssim.png",
             "points": out_dir / "rd_points.json"}
    write_json_atomic(files["table_json"], {"method": method, "bd": table})
    # DVC metrics: the headline number only (BD-rate at equal PSNR, report.method),
    # one column per (model, anchor) in `dvc metrics show`.
    write_json_atomic(files["metrics"], {
        model: {anchor: cells["psnr"].get(f"bd_rate_{method}") for anchor, cells in row.items()}
        for model, row in table.items()})
    write_bytes_atomic(files["table_md"], markdown.encode())
    plot_rd(curves, "psnr", dataset, files["plot_psnr"])
    plot_rd(curves, "ms_ssim", dataset, files["plot_ms_ssim"])
    write_json_atomic(files["points"], rd_points(curves))
    for c in trained:
        files[f"compressai_{c.id}"] = out_dir / "compressai" / f"{c.id}.json"
        files[f"compressai_{c.id}"].parent.mkdir(exist_ok=True)
        write_json_atomic(files[f"compressai_{c.id}"], compressai_json(c, dataset))
    return Report(dataset, curves, table, markdown, files)


def log_report(report: Report, cfg: ReportConfig, experiment: str) -> str:
    """One MLflow run per report: artifacts on the parent, a child run per trained
    architecture with ``bd_rate_vs_<anchor>`` metrics, linked to the model runs."""
    import mlflow

    from ..tracking import find_model_run, git_commit, start_run, use_experiment

    method = cfg.method
    experiment_id = use_experiment(experiment)
    anchors = [c for c in report.curves if c.kind != "trained"]
    with start_run(run_name=f"report-{report.dataset}") as parent:
        mlflow.set_tags({"licbench.stage": "report", "licbench.dataset": report.dataset,
                         "licbench.git_commit": git_commit()})
        mlflow.log_params({"bd_method": method, "anchors": ",".join(a.id for a in anchors)})
        for path in report.files.values():
            mlflow.log_artifact(str(path), artifact_path="compressai" if path.parent.name == "compressai" else None)
        for curve in (c for c in report.curves if c.kind == "trained"):
            found = [(lm, find_model_run(experiment_id, h) if h else None)
                     for lm, h in zip(curve.extra["lambda"], curve.extra["weights_sha256"])]
            model_runs = [r for _, r in found if r]
            links = "\n".join(f"- lambda {lm}: [run {r}](#/experiments/{experiment_id}/runs/{r})"
                              for lm, r in found if r)
            with start_run(run_name=f"report-{report.dataset}-{curve.id}", nested=True):
                mlflow.set_tags({"licbench.stage": "report", "licbench.dataset": report.dataset,
                                 "licbench.arch": curve.id,
                                 "licbench.model_runs": ",".join(model_runs),
                                 "mlflow.note.content": f"BD-rate of {curve.id} on {report.dataset}; "
                                                        f"model runs:\n{links}"})
                metrics = {}
                for anchor_id, cell in report.table[curve.id].items():
                    for quality, prefix in (("psnr", "bd_rate_vs_"), ("ms_ssim", "bd_rate_msssim_vs_")):
                        v = cell[quality].get(f"bd_rate_{method}")
                        if v is not None:
                            metrics[prefix + anchor_id] = v
                    v = cell["psnr"].get(f"bd_psnr_{method}")
                    if v is not None:
                        metrics["bd_psnr_vs_" + anchor_id] = v
                for lm, b, p in zip(curve.extra["lambda"], curve.bpp, curve.psnr):
                    metrics[f"bpp_lambda_{lm}"] = b
                    metrics[f"psnr_lambda_{lm}"] = p
                mlflow.log_metrics(metrics)
        return parent.info.run_id


def console_summary(report: Report, method: str) -> list[str]:
    """A few lines for the console: each model's BD-rate at equal PSNR against
    each anchor, how many warnings, and where the full table is."""
    lines = [f"report {report.dataset}: BD-rate at equal PSNR ({method}; negative: fewer bits "
             "than the anchor)"]
    notes = set()
    for model, row in report.table.items():
        cells = [f"{anchor} {_fmt(cell['psnr'].get(f'bd_rate_{method}'), '%')}" for anchor, cell in row.items()]
        lines.append(f"  {model}: " + ", ".join(cells))
        notes |= {(model, anchor, w) for anchor, cell in row.items()
                  for part in (cell["psnr"], cell["ms_ssim"]) for w in part.get("warnings", [])}
    warned = f"{len(notes)} warning(s) (n/a, few points, little overlap) and " if notes else ""
    lines.append(f"{warned}the full table: {report.files['table_md']}")
    return lines


def run_report_stage(cfg: ReportConfig, dataset: str, out_dir: str | Path,
                     data_root: str | Path = "data", *, archs: list[str], lambdas: list[float],
                     experiment: str) -> Report:
    """What ``stages/report.py`` runs; the MLflow run goes to ``experiment``."""
    report = build_report(cfg, dataset, out_dir, data_root, archs=archs, lambdas=lambdas)
    for line in console_summary(report, cfg.method):
        log.info("%s", line)
    run_id = log_report(report, cfg, experiment)
    log.info("MLflow report run %s", run_id)
    return report
