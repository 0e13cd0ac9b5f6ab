"""Fetch files over HTTP(S) or from a local mirror, verifying sha256.

Every file is written to a temporary name beside its destination and renamed
only once its checksum matches, so a failed or corrupted transfer never leaves
a bad file where a good one is expected.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import BinaryIO, Sequence

import requests
from tqdm import tqdm

from ..errors import ChecksumError, DownloadError, TransientDownloadError
from ..fileio import atomic_path

log = logging.getLogger(__name__)

# Client errors that may pass on their own: time-out, too many requests.
_TRANSIENT_4XX = {408, 425, 429}
_CHUNK = 1 << 20


def _copy_hashing(src: BinaryIO, dst: BinaryIO, bar: tqdm | None = None) -> str:
    h = hashlib.sha256()
    while block := src.read(_CHUNK):
        h.update(block)
        dst.write(block)
        if bar is not None:
            bar.update(len(block))
    return h.hexdigest()


def _check(digest: str, expected: str | None, what: str) -> None:
    if expected is not None and digest != expected:
        raise ChecksumError(
            f"{what}: sha256 mismatch (expected {expected}, got {digest}); file not kept"
        )


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest``, retrying transient failures with backoff.

    Transient: connection errors, time-outs, 5xx and 408/425/429 responses, a
    body shorter than its Content-Length. Not retried: other 4xx responses and
    a checksum mismatch (the server reliably serves the wrong bytes).
    ``progress=None`` shows a bar only on a terminal.
    """
    dest = Path(dest)
    attempt = 0
    while True:
        attempt += 1
        try:
            with requests.get(
                url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
            ) as resp:
                if resp.status_code >= 400:
                    transient = resp.status_code >= 500 or resp.status_code in _TRANSIENT_4XX
                    message = f"{url}: HTTP {resp.status_code} {resp.reason}"
                    if not transient:
                        raise DownloadError(message)
                    raise _Transient(message)
                total = int(resp.headers.get("Content-Length") or 0) or None
                with atomic_path(dest) as tmp, open(tmp, "wb") as out, tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=(None if progress is None else not progress),
                    leave=False,
                ) as bar:
                    digest = _copy_hashing(resp.raw, out, bar)
                    out.flush()
                    received = out.tell()
                    if total is not None and received != total:
                        raise _Transient(f"{url}: received {received} of {total} bytes")
                    _check(digest, sha256, url)
            return dest
        except (_Transient, requests.ConnectionError, requests.Timeout) as exc:
            if attempt > retries:
                raise TransientDownloadError(f"{url}: failed after {attempt} attempts: {exc}") from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s (attempt %d of %d); retrying in %.0f s", exc, attempt, retries + 1, delay)
            time.sleep(delay)


def download_first(urls: Sequence[str], dest: str | Path, sha256: str | None = None, **kwargs) -> Path:
    """Try each URL in turn (mirrors of one file); raise with every failure listed."""
    failures = []
    transient = True
    for url in urls:
        try:
            return download(url, dest, sha256, **kwargs)
        except DownloadError as exc:
            failures.append(str(exc))
            transient = transient and isinstance(exc, TransientDownloadError)
    error = TransientDownloadError if transient and failures else DownloadError
    raise error("no source could be fetched:\n  " + "\n  ".join(failures))


def copy_verified(src: str | Path, dest: str | Path, sha256: str | None) -> Path:
    """Copy a local file to ``dest`` if and only if its sha256 matches."""
    src, dest = Path(src), Path(dest)
    with open(src, "rb") as fin, atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            digest = _copy_hashing(fin, out)
        _check(digest, sha256, str(src))
    return dest


def save_stream_verified(stream: BinaryIO, dest: str | Path, sha256: str | None, what: str) -> Path:
    """Write a readable stream (an archive member) to ``dest`` if its sha256 matches."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            digest = _copy_hashing(stream, out)
        _check(digest, sha256, what)
    return Path(dest)


class _Transient(Exception):
    """A failure worth another attempt."""
