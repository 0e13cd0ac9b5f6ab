"""Imported first by every stage: dvc.yaml runs ``python stages/...``, so the
stage runs under whichever ``python`` is first on PATH (`.venv/bin/dvc repro`
without the venv activated gives the system's). Under an interpreter without
licbench this says so in one line, before any ModuleNotFoundError; one that
has licbench but lacks a dependency is named the same way when the import fails.
Standard library only: it runs where nothing else is installed."""

import importlib.util
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _advice() -> str:
    venv = _REPO / ".venv"
    if (venv / "bin" / "python").exists():
        return f"activate the project's environment (source {venv}/bin/activate) and run again"
    return f"create the project's environment (make install, in {_REPO}), activate it and run again"


def _say(what: str) -> None:
    stage = sys.argv[0] if sys.argv and sys.argv[0] else "this stage"
    print(f"error: {stage} runs under {sys.executable}, which {what}: {_advice()}", file=sys.stderr)


def _missing_module(kind, value, traceback):
    if issubclass(kind, ModuleNotFoundError) and value.name:
        _say(f"cannot import {value.name}")  # the exit status stays 1, as for any uncaught error
    else:
        _default_hook(kind, value, traceback)


if importlib.util.find_spec("licbench") is None:
    _say("cannot import licbench")
    sys.exit(1)
_default_hook = sys.excepthook
sys.excepthook = _missing_module
