"""The MLflow UI shows our runs: `mlflow server` on 127.0.0.1, headless Chromium.

The tracking store is written by the project's own logging (evaluate and
report); the test opens the experiment's run list and the run comparison page
and checks that the runs, their bpp/PSNR and the BD-rates appear. Screenshots
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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import test_report as toy
from licbench.evaluate import log_evaluation
from licbench.report.rd import log_report

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
    """Four evaluated models and a report, logged as the stages log them."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    toy.write_summaries(root, "toy", toy.BPP, rate_scale=0.8)
    toy.write_anchors(root, {"jpeg": toy.BPP})
    per_image = tmp_path / "per_image.parquet"
    pq.write_table(pa.table({"image": ["kodak/kodim01.png"]}), per_image)
    runs = {}
    for path in sorted((root / "metrics" / "kodak").glob("*.json")):
        summary = json.loads(path.read_text())
        runs[summary["model"]] = log_evaluation("licbench", summary, {"N": 8, "M": 8}, per_image)
    report = toy.report_of(root, tmp_path / "report")
    runs["report-kodak"] = log_report(report, toy.REPORT, "licbench")
    child = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{runs['report-kodak']}'",
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


def test_runs_and_bd_rates_in_the_mlflow_ui(chromium, tracking_store, mlflow_server, tmp_path):
    from playwright.sync_api import sync_playwright

    _, experiment_id, runs, report = tracking_store
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 1100})

        # The experiment's run list names every model run and the report.
        page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs", wait_until="load")
        for name in ("report-kodak", "toy-0.0018", "toy-0.013"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
        save(page, tmp_path, "mlflow-runs.png")

        # The comparison page: bpp and PSNR of the models, BD-rates of the report.
        ids = [runs["toy-0.0018"], runs["toy-0.0035"], runs["toy-0.013"], runs["report-kodak-toy"]]
        page.goto(f"{mlflow_server}/#/compare-runs?runs={json.dumps(ids)}"
                  f"&experiments={json.dumps([experiment_id])}", wait_until="load")
        page.get_by_text("bd_rate_vs_jpeg", exact=True).first.wait_for(timeout=90_000)
        for metric in ("kodak/bpp", "kodak/psnr", "bd_rate_vs_published_vtm"):
            page.get_by_text(metric, exact=True).first.wait_for(timeout=30_000)
        for name in ("toy-0.0018", "toy-0.013", "report-kodak-toy"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        # The report's BD-rates are shown (the metric grid is virtualised, so
        # look for the values on the page): -20 % against JPEG by construction,
        # and the one against the published VTM curve.
        cell = report.table["toy"]
        shown = []
        for token in page.inner_text("body").split():
            try:
                shown.append(float(token))
            except ValueError:
                pass
        for anchor in ("jpeg", "published_vtm"):
            expected = cell[anchor]["psnr"]["bd_rate_pchip"]
            assert any(abs(v - expected) < 0.05 for v in shown), (anchor, expected)
        page.get_by_text("bd_rate_vs_jpeg", exact=True).first.scroll_into_view_if_needed()
        save(page, tmp_path, "mlflow-compare.png")
        browser.close()
