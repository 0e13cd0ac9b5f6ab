"""Fetch files over HTTP(S) or from a local mirror, verifying size and sha256.

Any URL, any size: the body streams to ``.<name>.part`` beside the destination
(never held in memory) and is renamed onto it only once complete and, when a
sha256 is given, verified, so a failed or corrupted transfer never leaves a bad
file where a good one is expected.

Failures are classified in one place, :func:`transient`: every exception
requests or urllib3 raise (the body is read from ``resp.raw``, below requests'
own wrapping, so urllib3's ``ProtocolError``, ``ReadTimeoutError``,
``IncompleteRead`` arrive as they are), socket errors, and HTTP statuses.
Transient: connection refused, reset or dropped, DNS, time-outs, a body
shorter than its Content-Length, HTTP 5xx and 408/425/429. Final: other 4xx,
a malformed URL, too many redirects, a TLS certificate that does not verify, a
sha256 or size mismatch (the server reliably serves other bytes). A failure to
write the local file (a full disk) is not a download failure: its OSError goes
up as it is.

Retry policy, the only one (the Prefect flows do not retry a stage): up to
``RETRIES`` more attempts with exponential backoff (``BACKOFF_S`` doubling, at
most ``MAX_DELAY_S``; a server's Retry-After is honoured up to that; the
environment variables LICBENCH_DOWNLOAD_RETRIES and LICBENCH_DOWNLOAD_BACKOFF_S
change the first two), counted
as consecutive attempts that brought no new bytes: each attempt resumes where
the last one stopped (``Range: bytes=<n>-``, with ``If-Range`` so that a file
changed on the server starts over), so a long transfer over a flaky link
finishes. Still failing for a transient reason: :class:`TransientDownloadError`,
which stage commands turn into exit status 75 (try again later). An
interrupted run (killed, time-out) leaves its ``.part`` file, and the next run
resumes from it the same way.

Before the body is written, the free space on the destination's file system
is checked against what is left to fetch (and what the caller will extract
beside it): a one-line :class:`DiskSpaceError` saying what is needed and what
is free. Progress, in bytes, is a bar on a terminal and periodic log lines
elsewhere (:mod:`licbench.progress`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import ssl
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

import requests
import urllib3
from tqdm import tqdm

from ..errors import ChecksumError, DiskSpaceError, DownloadError, TransientDownloadError
from ..fileio import atomic_path, replace_durably
from ..progress import progress

log = logging.getLogger(__name__)

RETRIES = 5  # attempts after the first that may bring no new bytes
BACKOFF_S = 2.0  # 2, 4, 8, 16, 32 s: about a minute of outage is ridden out
# A machine's network, not an experiment's setting: the environment may change both.
RETRIES_ENV, BACKOFF_ENV = "LICBENCH_DOWNLOAD_RETRIES", "LICBENCH_DOWNLOAD_BACKOFF_S"
MAX_DELAY_S = 120.0
TIMEOUT_S = (30.0, 60.0)  # connecting; then the longest wait for any byte of the body
# Client errors that may pass on their own: time-out, too early, too many requests.
_TRANSIENT_4XX = {408, 425, 429}
_CHUNK = 1 << 20
# A read that times out loses what it had received: keep network reads short.
_NET_CHUNK = 1 << 16

_FINAL_ERRORS = (
    requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
    requests.exceptions.TooManyRedirects, requests.exceptions.ContentDecodingError,
    urllib3.exceptions.DecodeError, urllib3.exceptions.LocationValueError,
    urllib3.exceptions.ProxySchemeUnknown,
)
_TRANSIENT_ERRORS = (
    requests.exceptions.RequestException,  # ConnectionError, Timeout, ChunkedEncodingError, ...
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError, IncompleteRead, ...
    http.client.HTTPException,  # IncompleteRead, RemoteDisconnected, BadStatusLine
    OSError,  # socket errors: reset, refused, unreachable, timed out
)


def transient(exc: BaseException) -> bool | None:
    """Whether a failure while connecting or reading a body may pass (True),
    will not (False), or is no transfer failure at all (None)."""
    if _caused_by(exc, ssl.SSLCertVerificationError) or _caused_by(exc, *_FINAL_ERRORS):
        return False
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    return None


def _caused_by(exc: BaseException, *types) -> bool:
    """``exc`` or anything it wraps is one of ``types``: its cause and context,
    urllib3's ``reason``, and requests' habit of wrapping urllib3's error as its
    first argument."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, types):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += list(getattr(e, "args", ()))
        todo = [t for t in todo if isinstance(t, BaseException)]
    return False


class _Retry(Exception):
    """A transient failure of one attempt (the message without the URL);
    ``retry_after``: the server's wish, in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _network(url: str, exc: BaseException) -> Exception:
    """The exception a transfer failure becomes: _Retry or DownloadError."""
    kind = transient(exc)
    if kind is None:
        raise exc
    # urllib3 and requests put their own message first, the wrapped error after it.
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = f"{type(exc).__name__}: {' '.join(text.split()) or 'no detail'}"
    return _Retry(text) if kind else DownloadError(f"{url}: {text}")


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    size: int | None = None,
    reserve: Mapping[str | Path, int] | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float | tuple[float, float] = TIMEOUT_S,
    show_progress: bool = True,
    progress_interval: float | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming and retrying as the module says.

    ``size``: the expected number of bytes, checked against the server's and
    used for the free-space check before anything is requested. ``reserve``:
    bytes the caller will also write, by folder (an archive's members), checked
    together with the file itself. ``show_progress``: the byte count of this
    file (off where the caller counts files instead).
    """
    retries = int(os.environ.get(RETRIES_ENV, RETRIES)) if retries is None else retries
    backoff = float(os.environ.get(BACKOFF_ENV, BACKOFF_S)) if backoff is None else backoff
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    meta_path = dest.with_name(f".{dest.name}.part.json")
    reserve = {Path(k): int(v) for k, v in (reserve or {}).items()}
    if size is not None:
        check_free_space({dest.parent: size - _partial_bytes(part, meta_path, url), **reserve},
                         f"downloading {url}")
    failures, best = 0, _partial_bytes(part, meta_path, url)
    while True:
        try:
            _attempt(url, dest, part, meta_path, sha256, size, reserve, timeout, show_progress,
                     progress_interval)
            return dest
        except ChecksumError:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise
        except _Retry as exc:
            have = _partial_bytes(part, meta_path, url)
            if have > best:  # progress: the outage is not counted against the file
                best, failures = have, 0
            failures += 1
            if failures > retries:
                kept = f"; {have} bytes kept in {part} for the next run" if have else ""
                raise TransientDownloadError(
                    f"{url}: failed after {failures} attempt(s) without progress (last: {exc}){kept}") from None
            delay = min(MAX_DELAY_S, max(backoff * 2 ** (failures - 1), exc.retry_after or 0))
            log.warning("%s: %s (attempt %d of %d%s); retrying in %.3g s", url, exc, failures,
                        retries + 1, f", {have} bytes kept" if have else "", delay)
            time.sleep(delay)


def _attempt(url, dest, part, meta_path, sha256, size, reserve, timeout, show_progress,
             progress_interval) -> None:
    have = _partial_bytes(part, meta_path, url)
    headers = {"Accept-Encoding": "identity"}  # byte offsets and sizes are the file's own
    if have:
        meta = json.loads(meta_path.read_text())
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        resp = requests.get(url, stream=True, timeout=timeout, headers=headers)
    except Exception as exc:  # noqa: BLE001 -- classified by _network, re-raised when it is ours
        raise _network(url, exc) from None
    with resp:
        if resp.status_code == 416 and have:  # our part is no prefix of what is there now
            _restart(part, meta_path)
            raise _Retry(f"HTTP 416 for the kept {have} bytes; starting over")
        if resp.status_code >= 400:
            message = f"HTTP {resp.status_code} {resp.reason}"
            if resp.status_code >= 500 or resp.status_code in _TRANSIENT_4XX:
                raise _Retry(message, _retry_after(resp))
            raise DownloadError(f"{url}: {message}")
        start = _content_start(resp) if resp.status_code == 206 else 0
        if start != have:  # a full body (no Range support, or the file changed): start over
            if have:
                log.info("%s: the server sent %s; starting over from byte 0",
                         url, "the whole file" if resp.status_code == 200 else f"bytes from {start}")
            _restart(part, meta_path)
            have = 0
            if start:
                raise _Retry(f"unexpected Content-Range start {start}")
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if resp.status_code == 206:
            total = _content_total(resp) or total
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server has {total} bytes, expected {size}")
        total = total if total is not None else size
        if total is not None:
            check_free_space({dest.parent: total - have, **reserve}, f"downloading {url}")
        if not have:
            validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            # Weak ETags cannot validate a range (RFC 9110 13.1.5).
            validator = None if validator and validator.startswith("W/") else validator
            with atomic_path(meta_path) as tmp:
                tmp.write_text(json.dumps({"url": url, "validator": validator}))
        with open(part, "ab" if have else "wb") as out, \
                progress(desc=dest.name, total=total, initial=have, unit="B", unit_scale=True,
                         leave=False, disable=not show_progress, interval=progress_interval) as bar:
            while True:
                try:
                    block = resp.raw.read(_NET_CHUNK)
                except Exception as exc:  # noqa: BLE001 -- as above
                    raise _network(url, exc) from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:  # a full disk: the file is named, what arrived is kept
                    raise OSError(exc.errno, exc.strerror, str(dest)) from exc
                bar.update(len(block))
            received = out.tell()
    if total is not None and received < total:
        raise _Retry(f"received {received} of {total} bytes")
    if total is not None and received > total:
        _restart(part, meta_path)
        raise _Retry(f"received {received} bytes, more than the {total} announced")
    if sha256 is not None:
        _check(_sha256_of(part), sha256, url)
    replace_durably(part, dest)
    meta_path.unlink(missing_ok=True)


def _partial_bytes(part: Path, meta_path: Path, url: str) -> int:
    """Bytes of ``url`` already in ``part`` (0 when it holds another URL's)."""
    try:
        if json.loads(meta_path.read_text()).get("url") == url:
            return part.stat().st_size
    except (OSError, ValueError):
        pass
    return 0


def _restart(part: Path, meta_path: Path) -> None:
    part.unlink(missing_ok=True)
    meta_path.unlink(missing_ok=True)


def _content_start(resp) -> int:
    """The first byte of a 206 response (``Content-Range: bytes 100-199/200``)."""
    try:
        return int(resp.headers["Content-Range"].split()[1].split("-")[0])
    except (KeyError, IndexError, ValueError):
        return -1


def _content_total(resp) -> int | None:
    try:
        value = resp.headers["Content-Range"].rsplit("/", 1)[1]
        return None if value == "*" else int(value)
    except (KeyError, IndexError, ValueError):
        return None


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def check_free_space(needs: Mapping[str | Path, int], what: str) -> None:
    """Refuse, in one line, when the bytes ``needs`` asks for in each folder do
    not fit in the free space of its file system (folders on one file system
    add up)."""
    by_device: dict[int, list] = {}
    for folder, nbytes in needs.items():
        existing = _existing_ancestor(Path(folder))
        entry = by_device.setdefault(existing.stat().st_dev, [existing, 0])
        entry[1] += max(0, int(nbytes))
    for folder, nbytes in by_device.values():
        free = shutil.disk_usage(folder).free
        if nbytes > free:
            raise DiskSpaceError(
                f"{what}: not enough disk space on the file system of {folder}: needs "
                f"{_size(nbytes)}, {_size(free)} free")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _size(nbytes: int) -> str:
    return tqdm.format_sizeof(nbytes, "B", 1000) if nbytes >= 1000 else f"{nbytes} B"


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _copy_hashing(src: BinaryIO, dst: BinaryIO) -> str:
    h = hashlib.sha256()
    while block := src.read(_CHUNK):
        h.update(block)
        dst.write(block)
    return h.hexdigest()


def _check(digest: str, expected: str | None, what: str) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(
            f"{what}: sha256 mismatch (expected {expected}, got {digest}); file not kept"
        )


def download_first(urls: Sequence[str], dest: str | Path, sha256: str | None = None, **kwargs) -> Path:
    """Try each URL in turn (mirrors of one file); raise with every failure
    listed, transient only when every failure was."""
    failures = []
    transient_only = True
    for url in urls:
        try:
            return download(url, dest, sha256, **kwargs)
        except DownloadError as exc:
            failures.append(str(exc))
            transient_only = transient_only and isinstance(exc, TransientDownloadError)
    error = TransientDownloadError if transient_only and failures else DownloadError
    raise error(failures[0] if len(failures) == 1 else "every source failed: " + "; ".join(failures))


def copy_verified(src: str | Path, dest: str | Path, sha256: str | None) -> str:
    """Copy a local file to ``dest`` if and only if its sha256 matches (any
    file when ``sha256`` is None); return its sha256."""
    src, dest = Path(src), Path(dest)
    with open(src, "rb") as fin, atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            digest = _copy_hashing(fin, out)
        _check(digest, sha256, str(src))
    return digest


def save_stream_verified(stream: BinaryIO, dest: str | Path, sha256: str | None, what: str) -> str:
    """Write a readable stream (an archive member) to ``dest`` if its sha256
    matches (any stream when ``sha256`` is None); return its sha256."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            digest = _copy_hashing(stream, out)
        _check(digest, sha256, what)
    return digest


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """The sha256 and length of what a readable stream holds."""
    h, n = hashlib.sha256(), 0
    while block := stream.read(_CHUNK):
        h.update(block)
        n += len(block)
    return h.hexdigest(), n
