"""The ``report`` stage: RD curves, BD-rate table and plots for one evaluation set.

Curves come from three places:

- the trained models: one curve per architecture, a point per lambda, from the
  ``evaluate`` stage's per-model summaries (bpp from file bytes);
- the classical anchors run here (``anchors`` stage);
- published curves (:mod:`licbench.report.published`), labelled "[published]".

Every trained curve is compared with every anchor, local and published, by
Bjøntegaard delta (:mod:`licbench.report.bdrate`) for each metric column both
curves have (licbench.metrics; MS-SSIM and IW-SSIM in dB, -10 log10(1 - x),
NLPD, LPIPS and DISTS negated so that quality increases with rate): BD-rate and
BD-quality, with the cubic and the PCHIP fit, and JPEG AI's average of the
BD-rates over its seven metrics, those of them computed. The rate axis of each
comparison is stated: ``stream`` (the entropy-coded strings alone, as
CompressAI's published learned curves count) against a published learned
curve, ``file`` (every byte of the file) against classical codecs. Outputs, all
in ``out_dir``:

- ``bd_rate.md`` and ``bd_table.json``: the tables (BD values, complexity of
  each model, the RD points nearest JPEG AI's target rates);
- ``metrics.json``, the set's DVC metrics (:func:`dvc_metrics`): numbers only,
  under short names, so that ``dvc exp show`` stays narrow (docs/dvc.md);
- ``rd_psnr.png``, ``rd_ms_ssim.png``, ``rd_metrics.png`` (one panel per
  metric column): the RD plots;
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

from scipy.interpolate import PchipInterpolator

from ..config import ReportConfig
from ..errors import LicbenchError
from ..fileio import atomic_path, write_bytes_atomic, write_json_atomic
from ..metrics import COLUMNS, JPEG_AI, bd_value
from ..tracking import Target
from . import published
from .bdrate import METHODS, BDWarning, bd_quality, bd_rate

# Bjøntegaard's fit needs 2 points at the very least; VCEG-M33's cubic passes
# exactly through 4, and the common test conditions code 4 rate points (QP 22,
# 27, 32, 37): 4 lambdas per curve are the norm.
TOO_FEW_POINTS = ("BD-rate needs at least 2 points per curve, and 4 are the norm (VCEG-M33's "
                  "cubic fit passes through 4 rate points, as the common test conditions code)")

# JPEG AI's common test conditions: the target rates (bpp) of its RD points.
JPEG_AI_TARGET_BPP = (0.03, 0.06, 0.12, 0.25, 0.50, 0.75)
# How CompressAI's results layout names two of our columns.
RESULT_KEYS = {"psnr-rgb": "psnr", "ms-ssim-rgb": "ms_ssim"}
RATE_NOTE = ("file: every byte of the file, headers included (classical codecs, and our files); "
             "stream: the entropy-coded strings alone (what CompressAI's published learned curves count)")

log = logging.getLogger(__name__)


@dataclass
class Curve:
    id: str           # metric-safe name: "mbt2018-mean", "jpeg", "published_vtm"
    label: str        # legend text
    kind: str         # "trained", "anchor" or "published"
    bpp: list[float]  # from file bytes
    quality: dict[str, list[float | None]]  # metric column -> one value per point
    extra: dict = field(default_factory=dict)  # more per-point lists (lambda, times, ...)
    info: dict = field(default_factory=dict)   # about the whole curve (source, description)
    # The entropy-coded strings alone (trained curves); None: the rate is the file's.
    bpp_stream: list[float] | None = None

    def sorted(self) -> "Curve":
        order = np.argsort(self.bpp)
        pick = lambda v: [v[i] for i in order]  # noqa: E731
        return Curve(self.id, self.label, self.kind, pick(self.bpp),
                     {k: pick(v) for k, v in self.quality.items()},
                     {k: pick(v) for k, v in self.extra.items()}, self.info,
                     None if self.bpp_stream is None else pick(self.bpp_stream))

    @property
    def psnr(self) -> list[float]:
        return self.quality["psnr"]

    @property
    def ms_ssim(self) -> list[float | None]:
        return self.quality.get("ms_ssim") or [None] * len(self.bpp)

    @property
    def ms_ssim_db(self) -> list[float | None]:
        return [bd_value("ms_ssim", v) for v in self.ms_ssim]

    @property
    def learned(self) -> bool:
        """A learned codec's curve: trained here, or published as one (its rate
        then counts the strings alone, as CompressAI's curves do)."""
        return self.kind == "trained" or self.info.get("kind") == "learned"

    def rate(self, axis: str) -> list[float]:
        if axis == "stream" and self.bpp_stream is not None:
            return self.bpp_stream
        return self.bpp


def rate_axis(anchor: Curve) -> str:
    """The rate a trained curve is compared on against ``anchor``."""
    return "stream" if anchor.kind == "published" and anchor.learned else "file"


def _results_quality(results: dict) -> dict[str, list]:
    """The metric columns of a CompressAI-layout ``results`` mapping."""
    out = {}
    for key, values in results.items():
        column = RESULT_KEYS.get(key, key)
        if column in COLUMNS:
            out[column] = list(values)
    return out


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
        # The columns every evaluation of the curve measured.
        measured = [c for c in COLUMNS if all(c in r for r in rows)]
        stream = [r.get("bpp_stream") for r in rows]
        curves.append(Curve(
            arch, f"{arch} [trained here]", "trained",
            [r["bpp"] for r in rows], {c: [r[c] for r in rows] for c in measured},
            {"lambda": [float(r["lambda"]) for r in rows],
             "bpp_estimated": [r.get("bpp_estimated") for r in rows],
             "encoding_time": [r.get("encode_seconds") for r in rows],
             "decoding_time": [r.get("decode_seconds") for r in rows],
             "weights_sha256": [r.get("weights_sha256") for r in rows],
             "complexity": [r.get("complexity") for r in rows],
             "device": [r.get("device") for r in rows]},
            bpp_stream=None if None in stream else stream,
        ).sorted())
    return curves


def anchor_curves(curves_json: Path) -> list[Curve]:
    if not curves_json.is_file():
        raise LicbenchError(f"{curves_json}: missing; run the anchors stage first")
    out = []
    for codec, entry in json.loads(curves_json.read_text()).items():
        res = entry["results"]
        setting = next((k for k in res if k not in ("bpp", "encoding_time", "decoding_time")
                        and RESULT_KEYS.get(k, k) not in COLUMNS), None)
        out.append(Curve(codec, f"{entry['name']} [this run]", "anchor", res["bpp"],
                         _results_quality(res),
                         {"setting": res[setting]} if setting else {},
                         info={"description": entry.get("description"), "setting": setting}).sorted())
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
                         "published", res["bpp"], _results_quality(res),
                         info={"source": entry["source"], "licence": entry["licence"],
                               "kind": entry.get("kind")}).sorted())
    return out


# --- BD table -----------------------------------------------------------------

def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _label(column: str) -> str:
    metric = COLUMNS.get(column)
    if metric is None or len(metric.columns) == 1:
        return metric.label if metric else column
    return {"psnr_hvs": "PSNR-HVS", "psnr_hvs_m": "PSNR-HVS-M"}.get(column, column.upper()
            .replace("PSNR_", "PSNR-").replace("_BT", " BT."))


def _bd_pair(anchor: Curve, test: Curve, column: str) -> dict:
    """BD-rate and BD-quality of ``test`` against ``anchor`` for one metric column,
    on the rate axis :func:`rate_axis` gives."""
    axis = rate_axis(anchor)
    qa = [bd_value(column, v) for v in anchor.quality.get(column, [None])]
    qt = [bd_value(column, v) for v in test.quality.get(column, [None])]
    if any(v is None for v in qa) or any(v is None for v in qt):
        return {"note": f"no {column} values", "rate": axis}
    ra, rt = anchor.rate(axis), test.rate(axis)
    few = [f"the {name} curve has {len(q)} point" for name, q in (("anchor", qa), ("test", qt))
           if len(q) < 2]
    if few:
        return {**{f"bd_{k}_{m}": None for k in ("rate", column) for m in METHODS},
                "note": f"{', '.join(few)}: {TOO_FEW_POINTS}", "rate": axis}
    out: dict = {"rate": axis}
    notes: set[str] = set()
    label = _label(column)
    # BD-rate integrates log-rate as a function of quality: where quality does
    # not increase with rate (an undertrained model that saturates, say) that
    # function does not exist and any number would be an artefact of the fit.
    # BD-quality, a function of rate, stays defined.
    flat = [name for name, q in (("anchor", qa), ("test", qt)) if np.any(np.diff(q) <= 0)]
    for method in METHODS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BDWarning)
            out[f"bd_rate_{method}"] = (None if flat else _finite(bd_rate(ra, qa, rt, qt, method)))
            out[f"bd_{column}_{method}"] = _finite(bd_quality(ra, qa, rt, qt, method))
        notes.update(f"{label}: {w.message}" for w in caught if issubclass(w.category, BDWarning))
    for name in flat:
        notes.add(f"{label}: no BD-rate: the {name} curve's {label} does not increase with rate")
    if notes:
        out["warnings"] = sorted(notes)
    return out


def jpeg_ai_average(cells: dict, method: str) -> dict:
    """JPEG AI's summary: the mean of the BD-rates over its seven metrics, of
    those that have one here (``metrics`` says which)."""
    values = {c: cells[c].get(f"bd_rate_{method}") for c in JPEG_AI if c in cells}
    have = {c: v for c, v in values.items() if v is not None}
    return {f"bd_rate_{method}": float(np.mean(list(have.values()))) if have else None,
            "metrics": sorted(have), "of": len(JPEG_AI)}


def bd_table(trained: list[Curve], anchors: list[Curve], method: str = "pchip") -> dict:
    """``{model: {anchor: {column: {...}, "jpeg_ai_average": {...}}}}`` (percent,
    the metric's unit): every metric column the model's curve has."""
    table = {}
    for t in trained:
        table[t.id] = {}
        for a in anchors:
            cells = {c: _bd_pair(a, t, c) for c in t.quality}
            table[t.id][a.id] = {**cells, "jpeg_ai_average": {
                m: jpeg_ai_average(cells, m) for m in METHODS}}
    return table


def too_few_line(curve: Curve) -> str:
    return f"{curve.label}: {len(curve.bpp)} point; {TOO_FEW_POINTS}"


def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:+.2f}{unit}"


def _unit(column: str) -> str:
    metric = COLUMNS.get(column)
    if metric is None:
        return ""
    if metric.bd_axis == "db" or column.startswith("psnr"):
        return " dB"
    return ""


def table_markdown(table: dict, anchors: list[Curve], dataset: str, method: str,
                   too_few: list[Curve] = ()) -> str:
    labels = {a.id: a.label for a in anchors}
    lines = [f"# BD-rate on {dataset}",
             "",
             f"Bjøntegaard delta of each trained model against each anchor, {method} fit in "
             "log rate over the overlapping quality range. BD-rate: rate change at equal "
             "quality (negative: the model needs fewer bits). BD-quality: quality change at "
             "equal rate, in the metric's unit (MS-SSIM and IW-SSIM in dB, -10 log10(1 - x); "
             "NLPD, LPIPS and DISTS negated, so that positive is better). n/a: the curves do not "
             "overlap, or (BD-rate) a curve's quality does not increase with rate, or the anchor "
             "has no values of that metric. Marked *: see the warnings below. JPEG AI average: "
             f"the mean BD-rate over JPEG AI's seven metrics ({', '.join(JPEG_AI)}), of those "
             f"computed (n of 7). Rate: {RATE_NOTE}.",
             ""]
    notes: list[str] = []
    lines += [f"{too_few_line(c)}; its BD values are n/a, its points are in the plots." for c in too_few]
    lines += [""] if too_few else []
    for model, row in table.items():
        shown = [c for c in COLUMNS if any(c in cells for cells in row.values())]
        lines += [f"## {model}", "", "BD-rate:", "",
                  "| anchor | rate | " + " | ".join(_label(c) for c in shown) + " | JPEG AI average |",
                  "| --- | --- |" + " ---: |" * (len(shown) + 1)]
        quality_lines = ["BD-quality:", "",
                         "| anchor | " + " | ".join(_label(c) for c in shown) + " |",
                         "| --- |" + " ---: |" * len(shown)]
        for anchor_id, cells in row.items():
            mark = ""
            for c in shown:
                for w in cells.get(c, {}).get("warnings", []):
                    notes.append(f"{model} vs {labels[anchor_id]}: {w}")
                    mark = " *"
            average = cells["jpeg_ai_average"][method]
            n = len(average["metrics"])
            axis = next((cells[c]["rate"] for c in shown if c in cells), "file")
            lines.append(f"| {labels[anchor_id]}{mark} | {axis} | "
                         + " | ".join(_fmt(cells.get(c, {}).get(f"bd_rate_{method}"), " %") for c in shown)
                         + f" | {_fmt(average[f'bd_rate_{method}'], ' %')}"
                         + (f" ({n} of {average['of']})" if n else "") + " |")
            quality_lines.append(f"| {labels[anchor_id]}{mark} | "
                                 + " | ".join(_fmt(cells.get(c, {}).get(f"bd_{c}_{method}"), _unit(c))
                                              for c in shown) + " |")
        lines += [""] + quality_lines + [""]
    if notes:
        lines += ["## Warnings", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(lines)


# --- complexity and JPEG AI's target rates -------------------------------------

def complexity_rows(trained: list[Curve]) -> list[dict]:
    """One row per trained model: parameters, kMAC/pixel, seconds per image, device."""
    rows = []
    for c in trained:
        for i, lm in enumerate(c.extra["lambda"]):
            cx = c.extra["complexity"][i] or {}
            rows.append({"model": c.id, "lambda": lm, **cx,
                         "encode_seconds": c.extra["encoding_time"][i],
                         "decode_seconds": c.extra["decoding_time"][i],
                         "device": c.extra["device"][i]})
    return rows


def complexity_markdown(rows: list[dict]) -> str:
    def k(v):
        return "n/a" if v is None else f"{v / 1e3:.1f}"

    def f(v, digits=2):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = ["# Complexity", "",
             "Parameters in thousands: analysis transform (encoder), synthesis transform "
             "(decoder), entropy model (hyper transforms, context and entropy-parameter networks: "
             "both sides run it). kMAC/pixel: multiply-accumulates of one real encode and decode "
             "(torch.utils.flop_counter; convolutions, matrix products, attention), per pixel of "
             "the image they were measured on. Seconds: mean wall time per image of the "
             "evaluation, on the device named.", "",
             "| model | lambda | encoder kparams | decoder kparams | entropy model kparams | "
             "encoder kMAC/px | decoder kMAC/px | measured on | encode s | decode s | device |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['lambda']:g} | {k(r.get('params_encoder'))} | "
                     f"{k(r.get('params_decoder'))} | {k(r.get('params_entropy_model'))} | "
                     f"{f(r.get('kmac_per_pixel_encoder'), 1)} | {f(r.get('kmac_per_pixel_decoder'), 1)} | "
                     f"{r.get('measured_on', 'n/a')} | {f(r['encode_seconds'], 3)} | "
                     f"{f(r['decode_seconds'], 3)} | {r['device'] or 'n/a'} |")
    return "\n".join(lines) + "\n"


def at_target_rates(curve: Curve, targets=JPEG_AI_TARGET_BPP) -> list[dict]:
    """For each target rate (file bpp): the point of ``curve`` nearest it (its
    lambda or codec setting, and its rate) and each metric column interpolated
    at the target (PCHIP in log rate, within the curve's range only)."""
    settings = curve.extra.get("lambda") or curve.extra.get("setting") or [None] * len(curve.bpp)
    rates = np.asarray(curve.bpp, dtype=np.float64)
    out = []
    for target in targets:
        i = int(np.argmin(np.abs(np.log(rates) - math.log(target))))
        row = {"target_bpp": target, "nearest_setting": settings[i], "nearest_bpp": float(rates[i]),
               "interpolated": {}}
        for column, values in curve.quality.items():
            row["interpolated"][column] = _interpolate(rates, values, target)
        out.append(row)
    return out


def _interpolate(rates: np.ndarray, values: list, target: float) -> float | None:
    if any(v is None for v in values) or len(rates) < 2:
        return None
    if not rates.min() <= target <= rates.max():
        return None
    order = np.argsort(rates)
    x, y = np.log(rates[order]), np.asarray(values, dtype=np.float64)[order]
    if np.any(np.diff(x) <= 0):
        return None
    return float(PchipInterpolator(x, y)(math.log(target)))


def targets_markdown(curves: list[Curve]) -> str:
    lines = ["# RD points at JPEG AI's target rates", "",
             "For each curve and each target rate of JPEG AI's common test conditions "
             f"({', '.join(f'{t:g}' for t in JPEG_AI_TARGET_BPP)} bpp, file bytes): the lambda or "
             "codec setting whose rate is nearest, with that rate, and each metric interpolated "
             "at the target rate (PCHIP in log rate; n/a outside the curve's range).", ""]
    for c in curves:
        columns = list(c.quality)
        setting = "lambda" if c.kind == "trained" else c.info.get("setting") or "setting"
        lines += [f"## {c.label}", "",
                  f"| target bpp | nearest {setting} | its bpp | " + " | ".join(_label(k) for k in columns) + " |",
                  "| ---: | ---: | ---: |" + " ---: |" * len(columns)]
        for r in at_target_rates(c):
            s = r["nearest_setting"]
            lines.append(f"| {r['target_bpp']:g} | {'n/a' if s is None else f'{s:g}'} | {r['nearest_bpp']:.4f} | "
                         + " | ".join("n/a" if r["interpolated"][k] is None else f"{r['interpolated'][k]:.4f}"
                                      for k in columns) + " |")
        lines.append("")
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


def plot_metrics(curves: list[Curve], dataset: str, path: Path) -> None:
    """One panel per metric column of the trained curves, each curve at its file bpp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [c for c in curves if c.kind == "trained"]
    columns = [c for c in COLUMNS if any(c in t.quality for t in trained)]
    x_max = max(1.0, 1.6 * max(max(c.bpp) for c in trained))
    ncols = min(4, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), dpi=90, squeeze=False)
    colours = (plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
               + plt.get_cmap("Set1").colors)
    for ax, column in zip(axes.flat, columns):
        for i, c in enumerate(curves):
            pts = [(b, bd_value(column, v)) for b, v in zip(c.bpp, c.quality.get(column, []))
                   if v is not None and b <= x_max]
            if pts:
                ax.plot(*zip(*pts), label=c.label, color=colours[i % len(colours)], **STYLE[c.kind])
        axis = COLUMNS[column].bd_axis
        ax.set_title(_label(column) + {"db": " (dB of 1 - x)", "negated": " (negated)"}.get(axis, ""),
                     fontsize=9)
        ax.set_xlim(0, x_max)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.suptitle(f"{dataset}: each metric against rate (bpp from file bytes)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * (len(labels) // 4), 1, 0.97))
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
                        "ms-ssim-rgb": curve.ms_ssim, "bpp_stream": curve.bpp_stream,
                        "encoding_time": curve.extra["encoding_time"],
                        "decoding_time": curve.extra["decoding_time"]}}


def rd_points(curves: list[Curve]) -> list[dict]:
    return [{"curve": c.label, "kind": c.kind, "bpp": b, "psnr": p, "ms_ssim_db": m}
            for c in curves for b, p, m in zip(c.bpp, c.psnr, c.ms_ssim_db)]


def dvc_metrics(trained: list[Curve], table: dict, method: str) -> dict:
    """The set's DVC metrics (``metrics.json``), numbers only, under short names
    (`dvc exp show` makes each column as wide as its name): per model, by its
    key ``<arch>-<lambda>``, the rate (bpp from file bytes; bpp_est, the entropy
    model's estimate), PSNR, MS-SSIM and the mean seconds per image to encode
    and decode; per architecture and anchor (:func:`short_anchor`), the BD-rate
    at equal PSNR (``bd_rate``, %), the BD-PSNR at equal rate (``bd_psnr``, dB),
    the BD-rate at equal quality of every other metric measured
    (``bd_rate_<metric>``) and JPEG AI's average of them (``bd_rate_jpeg_ai``),
    ``method``'s fit. A value that does not exist (no overlap, too few points, a
    metric not measured) is left out, and so is a group left empty: DVC shows
    "-". Both fits, BD-quality and the warnings are in bd_table.json."""
    def numbers(d: dict) -> dict:
        return {k: float(v) for k, v in d.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}

    out: dict = {}
    for c in trained:
        for i, lm in enumerate(c.extra["lambda"]):
            out[f"{c.id}-{lm}"] = numbers({
                "bpp": c.bpp[i], "bpp_est": c.extra["bpp_estimated"][i], "psnr": c.psnr[i],
                "ms_ssim": c.ms_ssim[i], "enc_s": c.extra["encoding_time"][i],
                "dec_s": c.extra["decoding_time"][i]})
    # psnr's BD-rate is "bd_rate", every other metric's "bd_rate_<metric>" (JPEG
    # AI's average: "bd_rate_jpeg_ai"), the BD-PSNR "bd_psnr".
    groups: dict[str, dict] = {"bd_rate": {}, "bd_psnr": {}}
    for model, row in table.items():
        for anchor, metric, kind, value in bd_values(row, method):
            name = kind if metric == "psnr" else f"bd_rate_{'jpeg_ai' if metric == 'jpeg_ai_average' else metric}"
            groups.setdefault(name, {}).setdefault(model, {})[short_anchor(anchor)] = value
    for name, by_model in groups.items():
        values = {model: numbers(v) for model, v in by_model.items()}
        # DVC shows no empty group either: the file is what `dvc metrics show` lists.
        if any(values.values()):
            out[name] = {model: v for model, v in values.items() if v}
    return out


def bd_values(row: dict, method: str):
    """``(anchor, metric, kind, value)`` of one model's row of :func:`bd_table`
    with ``method``'s fit: kind ``bd_rate`` for every metric (JPEG AI's average
    as the metric ``jpeg_ai_average``), ``bd_psnr`` for PSNR; value None where
    there is none. What the DVC metrics and the MLflow report runs hold."""
    for anchor, cells in row.items():
        for metric, cell in cells.items():
            part = cell[method] if metric == "jpeg_ai_average" else cell
            yield anchor, metric, "bd_rate", part.get(f"bd_rate_{method}")
        yield anchor, "psnr", "bd_psnr", cells["psnr"].get(f"bd_psnr_{method}")


def short_anchor(anchor_id: str) -> str:
    """An anchor's name in metrics.json: its curve id, ``pub_`` for ``published_``
    (``pub_vtm``: VTM's published curve; ``vtm``: VTM run here)."""
    return "pub_" + anchor_id.removeprefix("published_") if anchor_id.startswith("published_") else anchor_id


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
    complexity = complexity_rows(trained)
    targets = {c.id: at_target_rates(c) for c in curves if c.kind != "published"}
    markdown = "\n".join([table_markdown(table, anchors, dataset, method, too_few),
                          complexity_markdown(complexity),
                          targets_markdown([c for c in curves if c.kind != "published"])])

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out_dir / "metrics.json", "table_json": out_dir / "bd_table.json",
             "table_md": out_dir / "bd_rate.md",
             "plot_psnr": out_dir / "rd_psnr.png", "plot_ms_ssim": out_dir / "rd_ms_ssim.png",
             "plot_metrics": out_dir / "rd_metrics.png", "points": out_dir / "rd_points.json"}
    write_json_atomic(files["table_json"], {"method": method, "rate": RATE_NOTE, "bd": table,
                                            "complexity": complexity, "target_rates": targets})
    write_json_atomic(files["metrics"], dvc_metrics(trained, table, method))
    write_bytes_atomic(files["table_md"], markdown.encode())
    plot_rd(curves, "psnr", dataset, files["plot_psnr"])
    plot_rd(curves, "ms_ssim", dataset, files["plot_ms_ssim"])
    plot_metrics(curves, dataset, files["plot_metrics"])
    write_json_atomic(files["points"], rd_points(curves))
    for c in trained:
        files[f"compressai_{c.id}"] = out_dir / "compressai" / f"{c.id}.json"
        files[f"compressai_{c.id}"].parent.mkdir(exist_ok=True)
        write_json_atomic(files[f"compressai_{c.id}"], compressai_json(c, dataset))
    return Report(dataset, curves, table, markdown, files)


def log_report(report: Report, cfg: ReportConfig, to: Target) -> str:
    """One MLflow run per report (``to``: a :class:`licbench.tracking.Target`),
    keyed by its inputs (the curves and the report settings), with the files;
    and a run per trained architecture with ``bd_rate_vs_<anchor>`` and
    ``bd_psnr_vs_<anchor>`` metrics, linked to the report run and to the
    training runs (linked, not nested: the run list shows them side by side).
    Returns the report run's id."""
    import mlflow

    from .. import tracking

    method = cfg.method
    experiment_id = tracking.use_experiment(to.experiment)
    anchors = [c for c in report.curves if c.kind != "trained"]
    key = tracking.run_key(dataset=report.dataset, settings=cfg.model_dump(mode="json"), curves=[
        {"id": c.id, "kind": c.kind, "bpp": c.bpp, "bpp_stream": c.bpp_stream, "quality": c.quality,
         "weights": c.extra.get("weights_sha256")} for c in report.curves])
    item = f"report-{report.dataset}"
    with tracking.stage_run(to, stage="report", item=item, key=key,
                            tags={"licbench.dataset": report.dataset}) as (parent, _):
        mlflow.log_params({"dataset": report.dataset, "bd_method": method,
                           "anchors": ",".join(a.id for a in anchors)})
        for path in report.files.values():
            mlflow.log_artifact(str(path), artifact_path="compressai" if path.parent.name == "compressai" else None)
    report_run = parent.info.run_id
    for curve in (c for c in report.curves if c.kind == "trained"):
        found = [(lm, tracking.find_model_run(experiment_id, h) if h else None)
                 for lm, h in zip(curve.extra["lambda"], curve.extra["weights_sha256"])]
        model_runs = [r for _, r in found if r]
        links = "\n".join(f"- lambda {lm}: [run {r}](#/experiments/{experiment_id}/runs/{r})"
                          for lm, r in found if r)
        note = (f"BD-rate of {curve.id} on {report.dataset} ([report run]"
                f"(#/experiments/{experiment_id}/runs/{report_run}): its files); model runs:\n{links}")
        with tracking.stage_run(to, stage="report", item=f"{item}-{curve.id}",
                                key=tracking.run_key(report=key, arch=curve.id),
                                tags={"licbench.dataset": report.dataset, "licbench.arch": curve.id,
                                      tracking.TAG_REPORT_RUN: report_run,
                                      "licbench.model_runs": ",".join(model_runs),
                                      "mlflow.note.content": note}):
            mlflow.log_params({"arch": curve.id, "dataset": report.dataset, "bd_method": method})
            mlflow.log_metrics(report_metrics(report, curve, method))
    return report_run


def report_metrics(report: Report, curve: Curve, method: str) -> dict[str, float]:
    """A trained curve's report metrics: BD-rate per metric and anchor, BD-PSNR
    per anchor, each lambda's bpp and PSNR."""
    # PSNR's and MS-SSIM's BD-rates keep their first names.
    prefixes = {("bd_rate", "psnr"): "bd_rate_vs_", ("bd_rate", "ms_ssim"): "bd_rate_msssim_vs_",
                ("bd_psnr", "psnr"): "bd_psnr_vs_"}
    metrics = {}
    for anchor_id, metric, kind, value in bd_values(report.table[curve.id], method):
        if value is not None:
            metrics[prefixes.get((kind, metric), f"bd_rate_{metric}_vs_") + anchor_id] = value
    for lm, b, p in zip(curve.extra["lambda"], curve.bpp, curve.psnr):
        metrics[f"bpp_lambda_{lm}"] = b
        metrics[f"psnr_lambda_{lm}"] = p
    return metrics


def console_summary(report: Report, method: str) -> list[str]:
    """A few lines for the console: each model's BD-rate at equal PSNR against
    each anchor, how many warnings, and where the full table is."""
    lines = [f"report {report.dataset}: BD-rate at equal PSNR ({method}; negative: fewer bits "
             "than the anchor)"]
    notes = set()
    for model, row in report.table.items():
        cells = [f"{anchor} {_fmt(cell['psnr'].get(f'bd_rate_{method}'), '%')}" for anchor, cell in row.items()]
        lines.append(f"  {model}: " + ", ".join(cells))
        notes |= {(model, anchor, w) for anchor, cells in row.items()
                  for column, part in cells.items() if column != "jpeg_ai_average"
                  for w in part.get("warnings", [])}
    warned = f"{len(notes)} warning(s) (n/a, few points, little overlap) and " if notes else ""
    lines.append(f"{warned}the full table: {report.files['table_md']}")
    return lines


def run_report_stage(cfg: ReportConfig, dataset: str, out_dir: str | Path,
                     data_root: str | Path = "data", *, archs: list[str], lambdas: list[float],
                     mlflow_to: Target) -> Report:
    """What ``stages/report.py`` runs; the MLflow run goes to ``mlflow_to`` (a
    :class:`licbench.tracking.Target`)."""
    report = build_report(cfg, dataset, out_dir, data_root, archs=archs, lambdas=lambdas)
    for line in console_summary(report, cfg.method):
        log.info("%s", line)
    run_id = log_report(report, cfg, mlflow_to)
    log.info("MLflow report run %s", run_id)
    return report
