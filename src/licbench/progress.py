"""Progress for every stage: a tqdm bar on a terminal, periodic log lines elsewhere.

A bar written to a file or a pipe (CI, ``dvc repro > log``) fills it with
carriage-return updates; there, the same progress object logs one line every
``LOG_INTERVAL_S`` seconds at most (and one when it ends) through ``logging``.
Both are tqdm objects: ``update``, ``set_postfix``, iteration work alike.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0


def progress(iterable=None, *, desc: str, total: float | None = None, unit: str = "it",
             unit_scale: bool = False, initial: float = 0, disable: bool = False,
             interval: float | None = None, leave: bool = True) -> tqdm:
    """A bar over ``iterable`` (or ``total`` units), or log lines when stderr is
    not a terminal, every ``interval`` seconds (default ``LOG_INTERVAL_S``)."""
    kwargs = dict(desc=desc, total=total, unit=unit, unit_scale=unit_scale, initial=initial,
                  disable=disable)
    if _terminal():
        return tqdm(iterable, leave=leave, **kwargs)
    return _LogLines(iterable, mininterval=LOG_INTERVAL_S if interval is None else interval, **kwargs)


def _terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return False


class _LogLines(tqdm):
    """tqdm that logs its status line instead of redrawing a bar: at most one
    line per ``mininterval`` seconds (``set_postfix`` included), and one when
    it closes."""

    monitor_interval = 0  # no monitor thread: lines come from the updates themselves

    def __init__(self, *args, **kwargs):
        kwargs["bar_format"] = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), "
                                "{elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}"
                                if kwargs.get("total") is not None or _has_len(args)
                                else "{desc}: {n_fmt} {unit}, {elapsed} elapsed, {rate_fmt}{postfix}")
        self._logged_at: float | None = None
        self._closing = False
        super().__init__(*args, file=_Discard(), miniters=1, **kwargs)

    def display(self, msg=None, pos=None):
        now = time.monotonic()
        if not self._closing:
            if self._logged_at is None and self.n == self.initial:
                return True  # tqdm draws once when it starts: nothing to say yet
            if self._logged_at is not None and now - self._logged_at < self.mininterval:
                return True
        self._logged_at = now
        log.info("%s", self.format_meter(**self.format_dict))
        return True

    def close(self):
        self._closing = True
        super().close()


def _has_len(args) -> bool:
    return bool(args) and hasattr(args[0], "__len__")


class _Discard:
    def write(self, text):
        pass

    def flush(self):
        pass
