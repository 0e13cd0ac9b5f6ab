"""Shared start-up for command-line entry points (DVC stages, scripts)."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from .errors import ConfigError, LicbenchError, ParamsError, TransientDownloadError

# sysexits.h's EX_TEMPFAIL: the same command may succeed later. The Prefect
# flows retry a stage on this exit status only (licbench.flows).
EXIT_TRANSIENT = 75
# Bad settings: the status argparse and the `licbench` command give bad usage.
EXIT_CONFIG = 2


def run_main(main: Callable[[], object]) -> None:
    """Run ``main`` with logging set up; report our own errors in one line and
    exit 1, 2 for bad settings (params.yaml's refusals as they are, one line
    each), or 75 for a failure that may pass (a download)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except TransientDownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT)
    except ConfigError as exc:
        print(exc if isinstance(exc, ParamsError) else f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except LicbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
