"""Shared start-up for command-line entry points (DVC stages, scripts)."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import LicbenchError


def run_main(main: Callable[[], object]) -> None:
    """Run ``main`` with logging set up; report our own errors in one line, exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except LicbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
