"""The report stage on constructed evaluation summaries and anchor curves."""

import json
import logging
import math
import typing

import mlflow
import numpy as np
import pytest
from PIL import Image

from licbench.config import load_params, load_section
from licbench.errors import LicbenchError, ParamsError
from licbench.report import published
from licbench.report.bdrate import METHODS, bd_quality, bd_rate
from licbench.report.rd import build_report, log_report
from licbench.tracking import TAG_STAGE, TAG_WEIGHTS, Target, use_experiment

from conftest import REPO

LAMBDAS = [0.0018, 0.0035, 0.0067, 0.013]
# A made-up codec: PSNR = 10 log10(bpp) + 33, MS-SSIM following it.
BPP = [0.12, 0.2, 0.35, 0.6]


def quality(bpp, shift=0.0):
    psnr = [10 * math.log10(b) + 33 + shift for b in bpp]
    msssim = [1 - 10 ** (-(p - 16) / 10) for p in psnr]
    return psnr, msssim


def write_summaries(root, arch, bpp, rate_scale=1.0, shift=0.0, lambdas=LAMBDAS):
    """Evaluations of a model reaching the made-up codec's quality at ``bpp``
    (plus ``shift`` dB) with ``rate_scale`` times its rate."""
    folder = root / "metrics" / "kodak"
    folder.mkdir(parents=True, exist_ok=True)
    psnr, msssim = quality(bpp, shift)
    for i, lm in enumerate(lambdas):
        summary = {"arch": arch, "lambda": lm, "bpp": rate_scale * bpp[i], "psnr": psnr[i],
                   "ms_ssim": msssim[i], "bpp_estimated": bpp[i] * 0.98,
                   "bpp_stream": rate_scale * bpp[i] * 0.99, "encode_seconds": 0.1,
                   "decode_seconds": 0.2, "weights_sha256": f"{arch}-{i}".ljust(64, "0"),
                   "model": f"{arch}-{lm}", "dataset": "kodak", "images": 24,
                   "manifest_sha256": "m" * 64, "device": "cpu: test, 1 threads",
                   "complexity": {"params_total": 1000, "kmac_per_pixel": 10.0 * (i + 1)},
                   "metrics": {"psnr": "licbench", "ms_ssim": "pytorch-msssim"}}
        (folder / f"{arch}-{lm}.json").write_text(json.dumps(summary))


def write_anchors(root, codecs):
    folder = root / "anchors" / "kodak"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, bpp in codecs.items():
        psnr, msssim = quality(bpp)
        out[name] = {"name": name, "description": f"{name} 1.0",
                     "results": {"quality": list(range(len(bpp))), "bpp": bpp, "psnr-rgb": psnr,
                                 "ms-ssim-rgb": msssim}}
    (folder / "curves.json").write_text(json.dumps(out))


REPORT = load_section(REPO / "params.yaml", "report", {"method": "pchip", "published": ["vtm"]})


def report_of(root, out, cfg=REPORT, lambdas=LAMBDAS, **overrides):
    """The report of the model 'toy' at ``lambdas``, ``cfg`` with ``overrides``."""
    if overrides:
        cfg = load_section(REPO / "params.yaml", "report", {**cfg.model_dump(), **overrides})
    return build_report(cfg, "kodak", out, root, archs=["toy"], lambdas=lambdas)


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    # The model needs 20% fewer bits than the anchor at every quality.
    write_summaries(root, "toy", BPP, rate_scale=0.8)
    write_anchors(root, {"jpeg": BPP, "far": [5.0, 6.0, 7.0, 8.0]})
    return root


def test_jpeg_ai_average_of_the_metrics_measured(tmp_path):
    """FSIM at 0.8 times the anchor's rate (BD-rate -20 %), VMAF at 0.9 times
    (-10 %): JPEG AI's average is -15 % "of 2 of 7", in the table and in the
    set's DVC metrics; BD-rate per metric there too."""
    root = tmp_path / "data"
    write_summaries(root, "toy", BPP, rate_scale=0.8)
    fsim = lambda b: 0.05 * math.log10(b) + 0.9  # noqa: E731 -- each linear in log-rate: exact BD
    vmaf = lambda b: 20 * math.log10(b) + 80  # noqa: E731
    for i, lm in enumerate(LAMBDAS):
        path = root / "metrics" / "kodak" / f"toy-{lm}.json"
        summary = json.loads(path.read_text())
        rate = summary["bpp"]  # 0.8 BPP[i]
        summary.update(fsim=fsim(rate / 0.8), vmaf=vmaf(rate / 0.9))
        path.write_text(json.dumps(summary))
    write_anchors(root, {"jpeg": BPP})
    curves = json.loads((root / "anchors/kodak/curves.json").read_text())
    curves["jpeg"]["results"].update(fsim=[fsim(b) for b in BPP], vmaf=[vmaf(b) for b in BPP])
    (root / "anchors/kodak/curves.json").write_text(json.dumps(curves))

    report = report_of(root, tmp_path / "out")
    cells = report.table["toy"]["jpeg"]
    assert cells["fsim"]["bd_rate_pchip"] == pytest.approx(-20.0, abs=1e-6)
    assert cells["vmaf"]["bd_rate_pchip"] == pytest.approx(-10.0, abs=1e-6)
    average = cells["jpeg_ai_average"]["pchip"]
    assert average["bd_rate_pchip"] == pytest.approx(-15.0, abs=1e-6)
    assert average["metrics"] == ["fsim", "vmaf"] and average["of"] == 7
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["bd_rate_jpeg_ai"]["toy"]["jpeg"] == pytest.approx(-15.0, abs=1e-6)
    assert metrics["bd_rate_fsim"]["toy"]["jpeg"] == pytest.approx(-20.0, abs=1e-6)
    assert metrics["bd_rate_vmaf"]["toy"]["jpeg"] == pytest.approx(-10.0, abs=1e-6)
    assert "2 of 7" in report.markdown


def test_known_answer_and_table(data_root, tmp_path):
    report = report_of(data_root, tmp_path / "out")
    cell = report.table["toy"]["jpeg"]
    for method in ("pchip", "cubic"):
        # Rate scaled by 0.8 at equal quality: BD-rate is exactly -20 %.
        assert cell["psnr"][f"bd_rate_{method}"] == pytest.approx(-20.0, abs=1e-6)
        assert cell["ms_ssim"][f"bd_rate_{method}"] == pytest.approx(-20.0, abs=1e-6)
        # PSNR = 10 log10(bpp) + c: the same curve 0.97 dB higher at equal rate.
        assert cell["psnr"][f"bd_psnr_{method}"] == pytest.approx(-10 * math.log10(0.8), abs=1e-6)
    assert "warnings" not in cell["psnr"]
    # No overlap at all: no value, and the table says so.
    assert report.table["toy"]["far"]["psnr"]["bd_rate_pchip"] is None
    assert any("do not overlap" in w for w in report.table["toy"]["far"]["psnr"]["warnings"])
    md = (tmp_path / "out" / "bd_rate.md").read_text()
    assert "| jpeg [this run] | file | -20.00 % | -20.00 % | n/a |" in md  # BD-rate
    assert "| jpeg [this run] | +0.97 dB | +0.97 dB |" in md  # BD-quality
    assert "| far [this run] * | file | n/a |" in md
    saved = json.loads((tmp_path / "out" / "bd_table.json").read_text())
    assert saved["bd"]["toy"]["jpeg"]["psnr"]["bd_rate_cubic"] == pytest.approx(-20.0, abs=1e-6)
    # DVC metrics: numbers only, short names; no overlap, no entry.
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["bd_rate"]["toy"]["jpeg"] == pytest.approx(-20.0, abs=1e-6)
    assert metrics["bd_psnr"]["toy"]["jpeg"] == pytest.approx(-10 * math.log10(0.8), abs=1e-6)
    assert "far" not in metrics["bd_rate"]["toy"] and "far" not in metrics["bd_psnr"]["toy"]
    assert metrics["bd_rate"]["toy"]["pub_vtm"] == cell_vtm(report)
    # MS-SSIM's BD-rate too (the toy summaries measure PSNR and MS-SSIM; no JPEG AI metric).
    assert sorted(metrics) == sorted([f"toy-{lm}" for lm in LAMBDAS] + ["bd_rate", "bd_psnr", "bd_rate_ms_ssim"])
    assert metrics["bd_rate_ms_ssim"]["toy"]["jpeg"] == pytest.approx(-20.0, abs=1e-6)
    assert metrics[f"toy-{LAMBDAS[1]}"] == pytest.approx({
        "bpp": 0.8 * BPP[1], "bpp_est": 0.98 * BPP[1], "psnr": quality(BPP)[0][1],
        "ms_ssim": quality(BPP)[1][1], "enc_s": 0.1, "dec_s": 0.2})
    assert_numbers_only(metrics)


def cell_vtm(report):
    return report.table["toy"]["published_vtm"]["psnr"]["bd_rate_pchip"]


def assert_numbers_only(tree, path="metrics.json"):
    """Every leaf of a DVC metrics file is a finite number (no string, bool, null)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            assert_numbers_only(value, f"{path}:{key}")
    else:
        assert type(tree) in (int, float) and math.isfinite(tree), f"{path}: {tree!r}"


def test_published_anchor_matches_a_direct_computation(data_root, tmp_path):
    report = report_of(data_root, tmp_path / "out")
    vtm = published.load("kodak", "vtm")["results"]
    model = next(c for c in report.curves if c.id == "toy")
    cell = report.table["toy"]["published_vtm"]["psnr"]
    with pytest.warns(Warning):  # the toy curve covers part of VTM's range only
        expected = bd_rate(vtm["bpp"], vtm["psnr-rgb"], model.bpp, model.psnr, "pchip")
    assert cell["bd_rate_pchip"] == pytest.approx(expected)
    with pytest.warns(Warning):
        expected = bd_quality(vtm["bpp"], vtm["psnr-rgb"], model.bpp, model.psnr, "cubic")
    assert cell["bd_psnr_cubic"] == pytest.approx(expected)
    assert "VTM [published]" in report.markdown


def test_plots_and_compressai_json(data_root, tmp_path):
    from compressai.utils.plot.__main__ import parse_json_file

    report_of(data_root, tmp_path / "out")
    for name in ("rd_psnr.png", "rd_ms_ssim.png"):
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.size[0] > 600
            # Not a blank canvas: lines in several colours.
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    parsed = parse_json_file(tmp_path / "out" / "compressai" / "toy.json", "psnr")
    assert parsed["name"] == "toy"
    assert parsed["xs"] == pytest.approx([0.8 * b for b in BPP])
    parsed = parse_json_file(tmp_path / "out" / "compressai" / "toy.json", "ms-ssim")
    assert parsed["ys"][0] == pytest.approx(quality(BPP)[0][0] - 16)
    points = json.loads((tmp_path / "out" / "rd_points.json").read_text())
    assert {p["kind"] for p in points} == {"trained", "anchor", "published"}


def test_three_lambdas_warn_in_the_table(tmp_path):
    root = tmp_path / "data"
    write_summaries(root, "toy", BPP[:3], shift=-1, lambdas=LAMBDAS[:3])
    write_anchors(root, {"jpeg": BPP})
    report = report_of(root, tmp_path / "out", lambdas=LAMBDAS[:3], published=[])
    cell = report.table["toy"]["jpeg"]["psnr"]
    assert cell["bd_rate_pchip"] > 0
    assert any(w.startswith("PSNR (RGB): ") and "3 points" in w for w in cell["warnings"])
    assert "## Warnings" in report.markdown


def test_one_lambda_draws_its_point_and_says_in_one_line_why_no_bd_rate(tmp_path, caplog):
    root = tmp_path / "data"
    write_summaries(root, "toy", BPP[:1], lambdas=LAMBDAS[:1])
    write_anchors(root, {"jpeg": BPP})
    with caplog.at_level(logging.WARNING, logger="licbench.report.rd"):
        report = report_of(root, tmp_path / "out", lambdas=LAMBDAS[:1], published=[])
    for quality in ("psnr", "ms_ssim"):
        cell = report.table["toy"]["jpeg"][quality]
        assert cell["bd_rate_pchip"] is None and cell["bd_rate_cubic"] is None
        assert cell["note"].startswith("the test curve has 1 point: BD-rate needs at least 2 points")
    said = [line for line in report.markdown.splitlines() if "needs at least 2 points" in line]
    assert said == ["toy [trained here]: 1 point; BD-rate needs at least 2 points per curve, and 4 are "
                    "the norm (VCEG-M33's cubic fit passes through 4 rate points, as the common test "
                    "conditions code); its BD values are n/a, its points are in the plots."]
    assert "| jpeg [this run] | file | n/a | n/a | n/a |" in report.markdown
    logged = [r.getMessage() for r in caplog.records if "needs at least 2 points" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("report kodak: toy [trained here]: 1 point")
    points = json.loads((tmp_path / "out" / "rd_points.json").read_text())
    assert [p["bpp"] for p in points if p["kind"] == "trained"] == [BPP[0]]
    assert (tmp_path / "out" / "rd_psnr.png").is_file()


def test_the_schema_offers_the_fits_bdrate_has():
    from licbench.config import ReportConfig

    assert set(typing.get_args(ReportConfig.model_fields["method"].annotation)) == set(METHODS)


def test_missing_evaluation_is_named(data_root, tmp_path):
    with pytest.raises(LicbenchError, match=r"metrics/kodak: no evaluation of toy at lambda \[0.05\]"):
        report_of(data_root, tmp_path / "out", lambdas=LAMBDAS + [0.05])
    (data_root / "metrics" / "kodak" / "broken.json").write_text("{")
    with pytest.raises(LicbenchError, match=r"broken.json: not an evaluate summary"):
        report_of(data_root, tmp_path / "out")


def test_unknown_published_curve_lists_the_known(data_root, tmp_path):
    with pytest.raises(ParamsError, match=r"params.yaml: report.published\[0\]: no published curve "
                                          r"'vvc-17' for kodak; one of av1, bpg, .*vtm"):
        load_params(REPO / "params.yaml", {"report": {"published": ["vvc-17"]}},
                    published=published.available)
    with pytest.raises(ParamsError, match="params.yaml: report.method: 'linear' is not allowed; one of pchip, cubic"):
        load_section(REPO / "params.yaml", "report", {"method": "linear"})


def test_published_curves_carry_source_and_licence():
    assert {"vtm", "bpg", "hm", "segpic", "wacnn", "charm", "compressai-mbt2018-mean"} <= \
        set(published.available("kodak"))
    # HPCM's CLIC and Tecnick points (lyq133/LIC-HPCM R-D_Data.md).
    assert published.available("clic2020-pro-valid") == published.available("tecnick") == ["hpcm-base", "hpcm-large"]
    ids = [(d.name, i) for d in sorted(published.ROOT.iterdir()) if d.is_dir() for i in published.available(d.name)]
    for dataset, curve_id in ids:
        entry = published.load(dataset, curve_id)
        assert entry["dataset"] == dataset and entry["id"] == curve_id
        assert entry["published"] is True and entry["licence"]
        assert {"repository", "path", "commit"} <= set(entry["source"])
        res = entry["results"]
        assert len(res["bpp"]) == len(res["psnr-rgb"]) >= 4
        assert res["bpp"] == sorted(res["bpp"])


def test_the_published_readme_lists_every_curve_as_its_file_says():
    """Each section of published/README.md whose heading names a set's folder
    holds one row per curve of that set, from the file's fields, in the order of
    the file names (``compressai-mbt2018-mean.json`` before ``compressai-mbt2018.json``)."""
    def row(entry):
        source, res = entry["source"], entry["results"]
        return (f"| `{entry['id']}` | {entry['name']} | {entry['kind']} | {len(res['bpp'])} | "
                f"{'yes' if 'ms-ssim-rgb' in res else 'no'} | "
                f"{source['repository']} `{source['path']}` @ {source['commit']} | {entry['licence']} |")

    sections = (published.ROOT / "README.md").read_text().split("\n## ")[1:]
    sets = [d.name for d in sorted(published.ROOT.iterdir()) if d.is_dir()]
    covered = set()
    for section in sections:
        named = [s for s in sets if f"(`{s}/`" in section.splitlines()[0]]
        expected = list(dict.fromkeys(row(published.load(s, i)) for s in named
                                      for i in sorted(published.available(s), key=lambda i: f"{i}.json")))
        listed = [line for line in section.splitlines() if line.startswith("| `")]
        assert listed == expected, section.splitlines()[0]
        covered.update(named)
    assert covered == set(sets)


def test_mlflow_report_run_links_model_runs(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment_id = use_experiment("test")
    # Only the third lambda's model has a run: the link must name that lambda.
    with mlflow.start_run(run_name="toy-0.0067") as model_run:
        mlflow.set_tags({TAG_WEIGHTS: "toy-2".ljust(64, "0"), TAG_STAGE: "train"})
    report = report_of(data_root, tmp_path / "out")
    parent_id = log_report(report, REPORT, Target("test", "tests"))
    client = mlflow.MlflowClient()
    children = client.search_runs([experiment_id], f"tags.`licbench.report_run_id` = '{parent_id}'")
    assert len(children) == 1
    child = children[0]
    assert child.data.metrics["bd_rate_vs_jpeg"] == pytest.approx(-20.0, abs=1e-6)
    assert "bd_rate_vs_far" not in child.data.metrics  # no overlap, no number
    assert child.data.tags["licbench.model_runs"] == model_run.info.run_id
    assert f"lambda {LAMBDAS[2]}: [run {model_run.info.run_id}]" in child.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"bd_rate.md", "metrics.json", "bd_table.json", "rd_psnr.png", "rd_ms_ssim.png", "compressai"} <= artifacts
    # Keyed by its inputs: the same report again updates its runs; other inputs add a report.
    assert log_report(report, REPORT, Target("test", "tests")) == parent_id
    assert len(client.search_runs([experiment_id], "tags.`licbench.stage` = 'report'")) == 2
    write_summaries(data_root, "toy", BPP, rate_scale=0.7)
    other = log_report(report_of(data_root, tmp_path / "out2"), REPORT, Target("test", "tests"))
    assert other != parent_id
    assert len(client.search_runs([experiment_id], "tags.`licbench.stage` = 'report'")) == 4


def test_the_stage_prints_a_short_summary_with_the_path_of_the_table(data_root, tmp_path, monkeypatch,
                                                                     capsys, caplog):
    import logging

    from licbench.report.rd import run_report_stage

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="licbench.report.rd")
    report = run_report_stage(REPORT, "kodak", tmp_path / "out", data_root, archs=["toy"],
                              lambdas=LAMBDAS, mlflow_to=Target("test", "tests"))
    assert capsys.readouterr().out == ""  # not the whole table
    lines = [r.getMessage() for r in caplog.records if r.name == "licbench.report.rd"]
    summary = lines[:3]
    assert summary[0] == "report kodak: BD-rate at equal PSNR (pchip; negative: fewer bits than the anchor)"
    assert summary[1].startswith("  toy: jpeg -20.00%, far n/a, published_")
    notes = sum(1 for line in report.markdown.splitlines() if line.startswith("- toy vs "))
    assert summary[2] == (f"{notes} warning(s) (n/a, few points, little overlap) and the full table: "
                          f"{tmp_path / 'out' / 'bd_rate.md'}")


def test_saturating_model_gets_no_bd_rate_but_a_bd_psnr(tmp_path):
    # The top lambda gains rate but loses quality: rate as a function of
    # quality does not exist, so no BD-rate; quality as a function of rate does.
    root = tmp_path / "data"
    write_summaries(root, "toy", BPP, rate_scale=0.8)
    folder = root / "metrics" / "kodak"
    top = json.loads((folder / f"toy-{LAMBDAS[-1]}.json").read_text())
    below = json.loads((folder / f"toy-{LAMBDAS[-2]}.json").read_text())
    top["psnr"] = below["psnr"] - 0.05
    (folder / f"toy-{LAMBDAS[-1]}.json").write_text(json.dumps(top))
    write_anchors(root, {"jpeg": BPP})
    report = report_of(root, tmp_path / "out", published=[])
    cell = report.table["toy"]["jpeg"]["psnr"]
    assert cell["bd_rate_pchip"] is None and cell["bd_rate_cubic"] is None
    assert cell["bd_psnr_pchip"] > 0
    assert any("no BD-rate: the test curve's PSNR (RGB) does not increase" in w for w in cell["warnings"])
    # MS-SSIM still increases: its BD-rate stays.
    assert report.table["toy"]["jpeg"]["ms_ssim"]["bd_rate_pchip"] == pytest.approx(-20.0, abs=1e-6)
