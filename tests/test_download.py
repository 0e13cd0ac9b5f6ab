import hashlib

import pytest

from licbench.data.download import download, download_first
from licbench.errors import ChecksumError, DownloadError, TransientDownloadError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_good_file_is_verified_and_kept(file_server, tmp_path):
    body = b"kodak" * 1000
    file_server.routes["/a.png"] = [(200, body)]
    dest = tmp_path / "out" / "a.png"
    download(file_server.url("/a.png"), dest, sha(body), progress=False)
    assert dest.read_bytes() == body
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left


def test_corrupted_file_is_an_error_and_leaves_nothing(file_server, tmp_path):
    file_server.routes["/a.png"] = [(200, b"corrupted bytes")]
    dest = tmp_path / "a.png"
    with pytest.raises(ChecksumError, match=r"/a\.png: sha256 mismatch"):
        download(file_server.url("/a.png"), dest, sha(b"the real bytes"), progress=False)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_corruption_does_not_replace_a_good_file(file_server, tmp_path):
    dest = tmp_path / "a.png"
    dest.write_bytes(b"good")
    file_server.routes["/a.png"] = [(200, b"bad")]
    with pytest.raises(ChecksumError):
        download(file_server.url("/a.png"), dest, sha(b"good"), progress=False)
    assert dest.read_bytes() == b"good"


def test_missing_file_is_not_retried(file_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        download(file_server.url("/missing.png"), tmp_path / "m.png", None, backoff=0, progress=False)
    assert not isinstance(caught.value, TransientDownloadError)
    assert file_server.hits["/missing.png"] == 1
    assert not (tmp_path / "m.png").exists()


def test_transient_errors_are_retried(file_server, tmp_path):
    body = b"x" * 100
    file_server.routes["/flaky"] = [(503, b""), (500, b""), (200, body)]
    dest = tmp_path / "f"
    download(file_server.url("/flaky"), dest, sha(body), backoff=0, progress=False)
    assert dest.read_bytes() == body
    assert file_server.hits["/flaky"] == 3


def test_retries_give_up_with_the_url(file_server, tmp_path):
    file_server.routes["/down"] = [(503, b"")]
    with pytest.raises(TransientDownloadError, match=r"/down: failed after 3 attempts"):
        download(file_server.url("/down"), tmp_path / "d", None, retries=2, backoff=0, progress=False)


def test_all_sources_down_is_transient_and_one_missing_is_not(file_server, tmp_path):
    file_server.routes["/down"] = [(503, b"")]
    urls = [file_server.url("/down"), file_server.url("/down")]
    with pytest.raises(TransientDownloadError, match="no source could be fetched"):
        download_first(urls, tmp_path / "d", None, retries=0, backoff=0, progress=False)
    # A 404 is an answer, not an outage: trying the stage again would not help.
    with pytest.raises(DownloadError) as caught:
        download_first([file_server.url("/down"), file_server.url("/gone")], tmp_path / "d", None,
                       retries=0, backoff=0, progress=False)
    assert not isinstance(caught.value, TransientDownloadError)


def test_first_working_mirror_is_used(file_server, tmp_path):
    body = b"payload"
    file_server.routes["/second"] = [(200, body)]
    dest = tmp_path / "p"
    download_first([file_server.url("/first"), file_server.url("/second")], dest, sha(body),
                   backoff=0, progress=False)
    assert dest.read_bytes() == body
