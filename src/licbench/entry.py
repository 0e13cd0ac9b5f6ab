"""Shared start-up for command-line entry points (DVC stages, scripts)."""

from __future__ import annotations

import errno
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
    """Run ``main`` with logging set up; report our own errors, and the file
    system's (a full disk, a permission), in one line and exit 1, 2 for bad
    settings (params.yaml's refusals as they are, one line each), or 75 for a
    failure that may pass (a download)."""
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
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


_REASONS = {errno.ENOSPC: "the disk is full (no space left on device)",
            errno.EDQUOT: "the disk quota is used up"}


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` (``<path> -> <path2>`` for a rename). Writes go
    through :func:`licbench.fileio.atomic_path`, which names the file a failed
    write was for and leaves no partial one."""
    reason = _REASONS.get(exc.errno) or exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    return f"{where}: {reason}"
