"""DVC's tables fit a screen: the metrics files hold numbers only, and the
`dvc exp show` command docs/dvc.md gives stays within 200 columns.

The check on a real pipeline, two `dvc exp run -S lambdas=...` after a repro,
is :func:`check_exp_show`, which tests/test_pipeline.py calls at the end of its
end-to-end run (no second DAG run here)."""

import math
import re
import shlex
import subprocess

from conftest import REPO

DOC = REPO / "docs" / "dvc.md"
MARKER = "tests/test_pipeline.py runs the next command"
WIDTH = 200


def exp_show_command() -> list[str]:
    """The `dvc exp show` command of docs/dvc.md: the first line of the code
    block after the marker comment."""
    lines = DOC.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if MARKER in line)
    fence = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("```"))
    command = shlex.split(lines[fence + 1])
    assert command[:3] == ["dvc", "exp", "show"], command
    return command


def test_readme_gives_the_same_command():
    command = " ".join(shlex.quote(w) for w in exp_show_command())
    readme = [shlex.split(line) for line in (REPO / "README.md").read_text().splitlines()
              if line.startswith("dvc exp show")]
    assert [" ".join(shlex.quote(w) for w in r) for r in readme] == [command]


def options(command: list[str], name: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == name]


def assert_numbers_only(tree, path: str):
    """Every leaf of a DVC metrics file is a finite number (no string, bool, null, list)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            assert_numbers_only(value, f"{path}:{key}")
    else:
        assert type(tree) in (int, float) and math.isfinite(tree), f"{path}: {tree!r}"


def widest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


def check_exp_show(dvc: str, repo, env, *, models: list[str], expected: list[str]) -> dict[int, str]:
    """Run docs/dvc.md's `dvc exp show` in ``repo`` at its natural width (what
    the pager shows) and at 200 and 80 columns; the natural width is at most
    200, and at 200 nothing is elided and the λ list, ``expected`` columns and
    each of ``models``' bpp and PSNR are there. Returns {columns: output}."""
    command = exp_show_command()
    out = {}
    for columns in (1000, WIDTH, 80):
        proc = subprocess.run([dvc, *command[1:], "--no-pager"], cwd=repo, capture_output=True, text=True,
                              env=dict(env, COLUMNS=str(columns)))
        assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
        out[columns] = proc.stdout
    natural = out[1000]
    assert widest(natural) <= WIDTH, f"dvc exp show is {widest(natural)} columns wide:\n{natural}"
    assert out[WIDTH] == natural and "…" not in natural
    header = natural.splitlines()[1].split()
    for name in ["Experiment", "lambdas", "archs", *expected,
                 *(f"{m}.{k}" for m in models for k in ("bpp", "psnr"))]:
        assert name in header, f"no column {name} in:\n{natural}"
    for dropped in ("Created", "bpp_est", "ms_ssim", "enc_s", "dec_s", "src/", "stages/"):
        assert not any(dropped in h for h in header), f"{dropped} in:\n{natural}"
    assert widest(out[80]) <= 80
    return out


def test_the_documented_command_keeps_and_drops_the_intended_columns():
    """docs/dvc.md's regular expressions, matched as DVC matches them (re.match,
    --keep protecting a column from --drop), on the columns a run names."""
    command = exp_show_command()
    keep = re.compile("|".join(options(command, "--keep")))
    drop = re.compile("|".join(options(command, "--drop")))
    assert "--only-changed" in command

    def shown(col):
        return bool(keep.match(col)) or not drop.match(col)

    for col in ("lambdas", "archs", "train.steps", "Experiment", "mbt2018-mean-0.01.bpp",
                "mbt2018-mean-0.01.psnr", "bd_rate.mbt2018-mean.jpeg", "bd_rate.charm.jpeg",
                "data/report/kodak/metrics.json:mbt2018-mean-0.01.psnr"):
        assert shown(col), col
    for col in ("Created", "mbt2018-mean-0.01.bpp_est", "mbt2018-mean-0.01.ms_ssim",
                "mbt2018-mean-0.01.enc_s", "mbt2018-mean-0.01.dec_s", "bd_rate.mbt2018-mean.webp",
                "bd_psnr.mbt2018-mean.jpeg", "bd_psnr.mbt2018-mean.pub_vtm", "bd_rate.mbt2018-mean.pub_vtm",
                "bd_rate_ms_ssim.mbt2018-mean.jpeg", "bd_rate_jpeg_ai.mbt2018-mean.jpeg",
                "bd_psnr.mbt2018-mean.pub_charm", "bd_rate.mbt2018-mean.jpeg2000",
                "src/licbench/report", "stages/report.py", "data/metrics/kodak",
                "models/mbt2018-mean-0.01/checkpoint.pt", "data/kodak"):
        assert not shown(col), col
    # --keep names whole columns: not every parameter whose name starts so.
    assert not keep.match("architectures.mbt2018-mean.N") and not keep.match("lambdas_old")
