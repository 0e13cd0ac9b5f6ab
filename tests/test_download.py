"""Downloads against a local HTTP server on 127.0.0.1: verified, resumed with
Range after a cut, retried through stalls, refused before a disk fills up, and
every failure of requests and urllib3 classified as transient or final."""

import errno
import hashlib
import http.client
import os
import ssl
import subprocess
import sys

import pytest
import requests
import urllib3

from licbench.data.download import check_free_space, download, download_first, transient
from licbench.errors import ChecksumError, DiskSpaceError, DownloadError, TransientDownloadError

from conftest import REPO, Reply

BODY = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_good_file_is_verified_and_kept(file_server, tmp_path):
    body = b"kodak" * 1000
    file_server.routes["/a.png"] = [(200, body)]
    dest = tmp_path / "out" / "a.png"
    download(file_server.url("/a.png"), dest, sha(body), size=len(body))
    assert dest.read_bytes() == body
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left


def test_corrupted_file_is_an_error_and_leaves_nothing(file_server, tmp_path):
    file_server.routes["/a.png"] = [(200, b"corrupted bytes")]
    dest = tmp_path / "a.png"
    with pytest.raises(ChecksumError, match=r"/a\.png: sha256 mismatch"):
        download(file_server.url("/a.png"), dest, sha(b"the real bytes"), backoff=0)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []
    assert file_server.hits["/a.png"] == 1  # not retried: the server serves those bytes


def test_corruption_does_not_replace_a_good_file(file_server, tmp_path):
    dest = tmp_path / "a.png"
    dest.write_bytes(b"good")
    file_server.routes["/a.png"] = [(200, b"bad")]
    with pytest.raises(ChecksumError):
        download(file_server.url("/a.png"), dest, sha(b"good"))
    assert dest.read_bytes() == b"good"


def test_missing_file_is_not_retried(file_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download(file_server.url("/missing.png"), tmp_path / "m.png", None, backoff=0)
    assert not isinstance(caught.value, TransientDownloadError)
    assert file_server.hits["/missing.png"] == 1
    assert not (tmp_path / "m.png").exists()


def test_transient_errors_are_retried(file_server, tmp_path):
    body = b"x" * 100
    file_server.routes["/flaky"] = [(503, b""), (500, b""), (200, body)]
    dest = tmp_path / "f"
    download(file_server.url("/flaky"), dest, sha(body), backoff=0)
    assert dest.read_bytes() == body
    assert file_server.hits["/flaky"] == 3


def test_retries_give_up_with_the_url(file_server, tmp_path):
    file_server.routes["/down"] = [(503, b"")]
    with pytest.raises(TransientDownloadError, match=r"/down: failed after 3 attempt\(s\) without progress"):
        download(file_server.url("/down"), tmp_path / "d", None, retries=2, backoff=0)


def test_all_sources_down_is_transient_and_one_missing_is_not(file_server, tmp_path):
    file_server.routes["/down"] = [(503, b"")]
    urls = [file_server.url("/down"), file_server.url("/down")]
    with pytest.raises(TransientDownloadError, match="every source failed"):
        download_first(urls, tmp_path / "d", None, retries=0, backoff=0)
    # A 404 is an answer, not an outage: trying the stage again would not help.
    with pytest.raises(DownloadError) as caught:
        download_first([file_server.url("/down"), file_server.url("/gone")], tmp_path / "d", None,
                       retries=0, backoff=0)
    assert not isinstance(caught.value, TransientDownloadError)


def test_first_working_mirror_is_used(file_server, tmp_path):
    body = b"payload"
    file_server.routes["/second"] = [(200, body)]
    dest = tmp_path / "p"
    download_first([file_server.url("/first"), file_server.url("/second")], dest, sha(body), backoff=0)
    assert dest.read_bytes() == body


# ---------------------------------------------------------------- cut, stalled, resumed


def test_a_connection_dropped_mid_body_resumes_with_range(file_server, tmp_path):
    half = len(BODY) // 2
    file_server.routes["/set.tgz"] = [Reply(200, BODY, drop_at=half), Reply(200, BODY)]
    dest = tmp_path / "set.tgz"
    download(file_server.url("/set.tgz"), dest, sha(BODY), backoff=0)
    assert dest.read_bytes() == BODY
    assert file_server.requests["/set.tgz"] == ["", f"bytes={half}-"]
    assert leftovers(tmp_path) == []


def test_a_stall_past_the_time_out_is_retried_and_resumed(file_server, tmp_path):
    third = len(BODY) // 3
    file_server.routes["/set.tgz"] = [Reply(200, BODY, stall_at=third, stall_s=3), Reply(200, BODY)]
    dest = tmp_path / "set.tgz"
    download(file_server.url("/set.tgz"), dest, sha(BODY), backoff=0, timeout=(5, 0.5))
    assert dest.read_bytes() == BODY
    assert file_server.hits["/set.tgz"] == 2
    # Resumed: from what had arrived before the stall (less the read that timed out).
    resumed = file_server.requests["/set.tgz"][1]
    assert resumed.startswith("bytes=") and 0 < int(resumed[6:-1]) <= third


def test_a_cut_transfer_resumes_in_the_next_run(file_server, tmp_path):
    """A run that gives up keeps what it received; the next run asks only for the rest."""
    half = len(BODY) // 2
    file_server.routes["/set.tgz"] = [Reply(200, BODY, drop_at=half), Reply(200, BODY, drop_at=half),
                                      Reply(200, BODY)]
    dest = tmp_path / "set.tgz"
    with pytest.raises(TransientDownloadError, match=rf"{half} bytes kept in .*\.set\.tgz\.part"):
        download(file_server.url("/set.tgz"), dest, sha(BODY), retries=0, backoff=0)
    assert not dest.exists() and (tmp_path / ".set.tgz.part").stat().st_size == half
    # The second run: its first attempt resumes (and is cut where the first
    # one was: no new bytes), its second gets the rest.
    file_server.routes["/set.tgz"] = [Reply(200, BODY, drop_at=half), Reply(200, BODY)]
    file_server.hits.clear()
    file_server.requests.clear()
    download(file_server.url("/set.tgz"), dest, sha(BODY), backoff=0)
    assert dest.read_bytes() == BODY
    assert file_server.requests["/set.tgz"] == [f"bytes={half}-", f"bytes={half}-"]
    assert leftovers(tmp_path) == []


def test_a_file_changed_on_the_server_starts_over(file_server, tmp_path):
    """If-Range: the kept bytes are of another version (another ETag): the server sends it whole."""
    half = len(BODY) // 2
    file_server.routes["/set.tgz"] = [Reply(200, BODY, drop_at=half)]
    dest = tmp_path / "set.tgz"
    with pytest.raises(TransientDownloadError):
        download(file_server.url("/set.tgz"), dest, retries=0, backoff=0)
    new = BODY[::-1]
    file_server.routes["/set.tgz"] = [Reply(200, new)]
    download(file_server.url("/set.tgz"), dest, sha(new), backoff=0)
    assert dest.read_bytes() == new


def test_a_server_without_ranges_is_read_again_from_the_start(file_server, tmp_path):
    half = len(BODY) // 2
    file_server.routes["/set.tgz"] = [Reply(200, BODY, drop_at=half, ranges=False),
                                      Reply(200, BODY, ranges=False)]
    dest = tmp_path / "set.tgz"
    download(file_server.url("/set.tgz"), dest, sha(BODY), backoff=0)
    assert dest.read_bytes() == BODY


def test_a_connection_that_always_drops_is_retried_then_exit_75_through_the_stage(file_server, tmp_path):
    """The real datasets stage command fetching Kodak from its real URL, which
    a proxy on 127.0.0.1 (the test server) cuts after the headers, every time."""
    from licbench.data.sources import kodak

    url = "http://r0k.us/graphics/kodak/kodak/kodim01.png"
    size = next(f.bytes for f in kodak().files if f.relpath == "kodim01.png")
    file_server.routes[url] = [Reply(200, bytes(size), drop_at=0)]
    env = dict(os.environ, http_proxy=file_server.base, HTTP_PROXY=file_server.base, no_proxy="",
               NO_PROXY="", LICBENCH_DOWNLOAD_RETRIES="2", LICBENCH_DOWNLOAD_BACKOFF_S="0.01")
    env.pop("LICBENCH_MIRROR", None)
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "datasets.py"), "kodak",
                           "--params", str(REPO / "params.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert file_server.hits[url] == 3  # the first attempt and 2 retries
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {url}: failed after 3 attempt(s) without progress "
                           "(last: ProtocolError: Connection broken: IncompleteRead"), proc.stderr
    assert "Traceback" not in proc.stderr
    retried = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(retried) == 2 and all(url in line for line in retried)
    assert not (tmp_path / "data" / "kodak" / "kodim01.png").exists()


# ---------------------------------------------------------------- disk space


def test_a_file_larger_than_the_free_space_is_refused_before_any_request(file_server, tmp_path):
    file_server.routes["/huge.tgz"] = [(200, b"x")]
    with pytest.raises(DiskSpaceError, match=r"downloading .*/huge\.tgz: not enough disk space on the "
                                             r"file system of .*: needs 1\.00PB, .*B free$"):
        download(file_server.url("/huge.tgz"), tmp_path / "huge.tgz", size=10**15)
    assert file_server.hits == {}
    assert list(tmp_path.iterdir()) == []


def test_an_announced_length_larger_than_the_free_space_is_refused(file_server, tmp_path):
    file_server.routes["/huge.tgz"] = [Reply(200, b"x" * 10, length=10**15)]
    with pytest.raises(DiskSpaceError, match="needs 1.00PB"):
        download(file_server.url("/huge.tgz"), tmp_path / "huge.tgz")
    assert list(tmp_path.iterdir()) == []



def test_a_disk_filling_up_during_the_transfer_names_the_file(file_server, tmp_path):
    """A real write failure (a file-size limit, EFBIG) in a subprocess: the
    stage's one line names the destination; the bytes that arrived are kept."""
    file_server.routes["/set.tgz"] = [Reply(200, BODY)]
    code = ("import resource, sys; from licbench.entry import run_main; "
            "from licbench.data.download import download; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); "
            "run_main(lambda: download(sys.argv[1], 'cache/set.tgz'))")
    proc = subprocess.run([sys.executable, "-c", code, file_server.url("/set.tgz")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: cache/set.tgz: File too large"
    assert not (tmp_path / "cache" / "set.tgz").exists()
    assert (tmp_path / "cache" / ".set.tgz.part").stat().st_size <= 300_000

def test_folders_on_one_file_system_add_up(tmp_path):
    free = __import__("shutil").disk_usage(tmp_path).free
    check_free_space({tmp_path / "a": free // 3, tmp_path / "b": free // 3}, "x")
    with pytest.raises(DiskSpaceError, match="^x: not enough disk space"):
        check_free_space({tmp_path / "a": free // 3 * 2, tmp_path / "b" / "c": free // 3 * 2}, "x")


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("exc, kind", [
    (urllib3.exceptions.ProtocolError("Connection broken", http.client.IncompleteRead(b"", 10)), True),
    (urllib3.exceptions.ReadTimeoutError(None, "/x", "Read timed out."), True),
    (urllib3.exceptions.IncompleteRead(5, 10), True),
    (urllib3.exceptions.NewConnectionError(None, "refused"), True),
    (urllib3.exceptions.NameResolutionError("host", None, OSError("no such host")), True),
    (http.client.IncompleteRead(b"", 10), True),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (TimeoutError("timed out"), True),
    (requests.ConnectionError("refused"), True),
    (requests.ReadTimeout("slow"), True),
    (requests.exceptions.ChunkedEncodingError("broken"), True),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
    (requests.exceptions.SSLError(urllib3.exceptions.MaxRetryError(
        None, "/x", urllib3.exceptions.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")))),
     False),
    (requests.exceptions.InvalidURL("http://"), False),
    (requests.exceptions.MissingSchema("x"), False),
    (requests.exceptions.TooManyRedirects("loop"), False),
    (urllib3.exceptions.DecodeError("bad gzip"), False),
    (ValueError("not a network failure"), None),
])
def test_every_failure_is_classified(exc, kind):
    assert transient(exc) is kind
