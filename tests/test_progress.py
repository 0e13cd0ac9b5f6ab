"""Progress: a bar on a terminal; elsewhere (CI, `dvc repro > log`) periodic
log lines, never carriage-return updates."""

import logging

from licbench import progress as progress_module
from licbench.progress import progress


def test_off_a_terminal_progress_is_log_lines(caplog, capsys):
    caplog.set_level(logging.INFO, logger="licbench.progress")
    assert list(progress(range(4), desc="anchors kodak", unit="image", interval=0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "anchors kodak: 1/4 image", "anchors kodak: 2/4 image", "anchors kodak: 3/4 image",
        "anchors kodak: 4/4 image", "anchors kodak: 4/4 image"]  # the last one: when it closes
    assert "(100%)" in lines[-1] and "left" in lines[-1]
    out = capsys.readouterr()
    assert "\r" not in out.err and out.err == "" and out.out == ""


def test_lines_come_at_most_once_per_interval_and_once_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="licbench.progress")
    with progress(desc="BSR_bsds500.tgz", total=10_000_000, unit="B", unit_scale=True,
                  interval=3600) as bar:
        for _ in range(100):
            bar.update(100_000)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["BSR_bsds500.tgz: 10.0M/10.0M B (100%)"]


def test_an_unknown_total_still_logs(caplog):
    caplog.set_level(logging.INFO, logger="licbench.progress")
    with progress(desc="stream", unit="B", interval=0) as bar:
        bar.update(5)
    assert caplog.records[-1].getMessage().startswith("stream: 5 B, ")


def test_on_a_terminal_it_is_a_tqdm_bar(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="licbench.progress")
    monkeypatch.setattr(progress_module, "_terminal", lambda: True)
    bar = progress(range(3), desc="x", interval=0)
    assert type(bar).__name__ == "tqdm"
    assert list(bar) == [0, 1, 2]
    assert caplog.records == []


def test_postfix_updates_do_not_add_lines(caplog):
    """Training sets its postfix every few steps: still one line per interval."""
    caplog.set_level(logging.INFO, logger="licbench.progress")
    bar = progress(range(50), desc="train", unit="step", interval=3600)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    assert len(caplog.records) == 1  # the interval is an hour: the end only
    assert caplog.records[-1].getMessage().startswith("train: 50/50 step (100%)")
