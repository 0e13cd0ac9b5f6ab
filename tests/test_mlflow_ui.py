"""The MLflow UI shows our runs: `mlflow server` on 127.0.0.1, headless Chromium.

The tracking store is written by the project's own logging (train, evaluate
and report); the test opens the links `licbench mlflow-links` prints (README):
the evaluations' run list, the compare view of one architecture's lambdas and
the reports' run list, and checks that the runs, the columns and their values
(lambda, bpp, PSNR, MS-SSIM, BD-rates) are on the page. Screenshots
go to the test's temporary folder, and to $LICBENCH_SCREENSHOTS when set.

Needs Debian's chromium (`make browser` installs it; CI does). Without it the
test is skipped, unless LICBENCH_REQUIRE_BROWSER=1 (set by .ci/run) makes that
a failure.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

import test_report as toy
import test_tracking as records
from licbench.report.rd import log_report
from licbench.tracking import ui_links

CHROMIUM = os.environ.get("LICBENCH_CHROMIUM", "/usr/bin/chromium")
# The flags a sandboxed, offline machine needs (no background connections).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("LICBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} missing: run `make browser` (Debian's chromium)")
        pytest.skip(f"{CHROMIUM} missing: `make browser` installs Debian's chromium")
    pytest.importorskip("playwright")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """Four trained and evaluated models and a report, logged by the stages' own functions."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    toy.write_summaries(root, "toy", toy.BPP, rate_scale=0.8)
    toy.write_anchors(root, {"jpeg": toy.BPP})
    runs = {}
    for path in sorted((root / "metrics" / "kodak").glob("*.json")):
        summary = json.loads(path.read_text())
        records.log_training(summary)
        runs[f"{summary['model']}@kodak"] = records.log_evaluated(summary, tmp_path)
    report = toy.report_of(root, tmp_path / "report")
    runs["report-kodak"] = log_report(report, toy.REPORT, records.TO)
    child = mlflow.search_runs(filter_string=f"tags.`licbench.report_run_id` = '{runs['report-kodak']}'",
                               search_all_experiments=True, output_format="list")[0]
    runs["report-kodak-toy"] = child.info.run_id
    experiment_id = mlflow.get_experiment_by_name("licbench").experiment_id
    return os.environ["MLFLOW_TRACKING_URI"], experiment_id, runs, report


@pytest.fixture
def mlflow_server(tracking_store, tmp_path):
    uri, *_ = tracking_store
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def save(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("LICBENCH_SCREENSHOTS"):
        Path(os.environ["LICBENCH_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["LICBENCH_SCREENSHOTS"]) / name)
    assert path.stat().st_size > 10_000
    return path


def numbers_on(page) -> list[float]:
    """Every number in the page's text (the run table is virtualised: its cells
    are found by their values)."""
    shown = []
    for token in page.inner_text("body").split():
        try:
            shown.append(float(token))
        except ValueError:
            pass
    return shown


def shows(numbers, value, rel=1e-3) -> bool:
    return any(abs(v - value) <= rel * abs(value) for v in numbers)


def test_runs_and_bd_rates_in_the_mlflow_ui(chromium, tracking_store, mlflow_server, tmp_path):
    from playwright.sync_api import sync_playwright

    uri, experiment_id, runs, report = tracking_store
    links = dict(ui_links("licbench", mlflow_server))
    summaries = {s["model"]: s for s in (json.loads(p.read_text())
                                         for p in sorted((tmp_path / "data/metrics/kodak").glob("*.json")))}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1100})

        # The evaluations' run list README links to: a model-training experiment
        # (its Runs tab, not GenAI's traces), the evaluation runs alone, with
        # lambda, bpp, PSNR and MS-SSIM as columns.
        url = links["evaluations (run list)"]
        assert url == (f"{mlflow_server}/#/experiments/{experiment_id}/runs"
                       "?viewStateShareKey=evaluations&workflowType=machine_learning")
        page.goto(url, wait_until="load")
        for model in summaries:
            page.get_by_text(f"{model}@kodak", exact=True).first.wait_for(timeout=90_000)
        for column in ("lambda", "bpp", "psnr", "ms_ssim"):
            page.get_by_text(column, exact=True).first.wait_for(timeout=30_000)
        assert page.get_by_text("toy-0.0018", exact=True).count() == 0  # the training runs: filtered out
        assert page.get_by_text("report-kodak", exact=True).count() == 0
        shown = numbers_on(page)
        for model, s in summaries.items():
            for key in ("lambda", "bpp", "psnr", "ms_ssim"):
                assert shows(shown, s[key]), (model, key, s[key])
        save(page, tmp_path, "mlflow-evaluations.png")

        # The compare view of toy's lambdas: its evaluation runs, bpp and PSNR.
        page.goto(links["compare toy on kodak (4 lambdas)"], wait_until="load")
        page.get_by_text("psnr", exact=True).first.wait_for(timeout=90_000)
        for model in summaries:
            page.get_by_text(f"{model}@kodak", exact=True).first.wait_for(timeout=30_000)
        shown = numbers_on(page)
        for model, s in summaries.items():
            assert shows(shown, s["bpp"]) and shows(shown, s["psnr"]), model
        save(page, tmp_path, "mlflow-compare.png")

        # The reports' run list: BD-rates against JPEG (-20 % by construction)
        # and against the published VTM curve.
        page.goto(links["reports (run list)"], wait_until="load")
        try:
            page.get_by_text("report-kodak-toy", exact=True).first.wait_for(timeout=90_000)
        except Exception:
            save(page, tmp_path, "mlflow-reports-failed.png")
            raise
        for column in ("bd_rate_vs_jpeg", "bd_rate_vs_published_vtm"):
            page.get_by_text(column, exact=True).first.wait_for(timeout=30_000)
        shown = numbers_on(page)
        cell = report.table["toy"]
        for anchor in ("jpeg", "published_vtm"):
            expected = cell[anchor]["psnr"]["bd_rate_pchip"]
            assert any(abs(v - expected) < 0.05 for v in shown), (anchor, expected)
        save(page, tmp_path, "mlflow-reports.png")
        browser.close()
