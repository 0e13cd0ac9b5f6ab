import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def git_env(base: dict | None = None) -> dict:
    return dict(os.environ if base is None else base, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")


def copy_repo(dest: Path, params: dict) -> Path:
    """The repository's files (as `git ls-files` lists them; a developer's own
    dvc.lock describes their runs, not the copy's) with ``params``, committed."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file() and f != "dvc.lock":
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, env=git_env(), capture_output=True, check=True)
    return dest


def find_mirror() -> Path | None:
    value = os.environ.get("LICBENCH_MIRROR")
    candidates = [Path(value)] if value else []
    candidates.append(REPO.parent / "shared" / "data" / "mirror")
    for c in candidates:
        if (c / "kodak").is_dir():
            return c.resolve()
    return None


# Read before any test's monkeypatch clears the variable.
MIRROR = find_mirror()


@pytest.fixture(scope="session")
def mirror() -> Path:
    m = MIRROR
    if m is None:
        pytest.skip("no dataset mirror: set LICBENCH_MIRROR (CI sets it to ../shared/data/mirror)")
    return m


# Starting a Dask LocalCluster sets these in this process's environment for
# its workers and leaves them (OMP_NUM_THREADS=1...): every later subprocess
# would run with other thread counts, so other floating-point sums.
_LEFT_BY_DASK = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # Subprocesses (dvc, and the `python stages/...` it runs) get the
    # interpreter the tests run under, whatever PATH the caller had.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    # Tests choose their mirror and tracking store explicitly.
    monkeypatch.delenv("LICBENCH_MIRROR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("LICBENCH_CACHE", str(tmp_path / "cache"))
    before = {name: os.environ.get(name) for name in _LEFT_BY_DASK}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def data_root(mirror, tmp_path_factory) -> Path:
    """A data folder with Kodak and its manifest, as the datasets stage leaves
    it, shared read-only by the stage tests."""
    from licbench.data.datasets import prepare_dataset
    from licbench.data.sources import kodak

    root = tmp_path_factory.mktemp("data")
    prepare_dataset(kodak(), root, root / "manifests" / "kodak.parquet", mirror=mirror)
    return root


@pytest.fixture(scope="session")
def kodak_pair(mirror) -> list[Path]:
    return [mirror / "kodak" / "kodim01.png", mirror / "kodak" / "kodim04.png"]


@dataclass
class Reply:
    """One response of the FileServer. ``drop_at``: close the connection once
    the body has reached this byte of the file (a transfer cut off);
    ``stall_at``/``stall_s``: stop sending there for a while; ``length``: the
    Content-Length to announce instead of the true one; ``ranges``: honour
    ``Range`` (and ``If-Range``, against the ETag) as a static file server does."""

    status: int = 200
    body: bytes = b""
    drop_at: int | None = None
    stall_at: int | None = None
    stall_s: float = 0.0
    length: int | None = None
    ranges: bool = True
    headers: dict = field(default_factory=dict)


class FileServer:
    """A local HTTP server: routes map a path to a list of responses, (status,
    body) or :class:`Reply`, served one per request (the last one repeats).
    ``requests[path]``: the Range header of each request ('' without)."""

    def __init__(self):
        self.routes: dict[str, list] = {}
        self.hits: dict[str, int] = {}
        self.requests: dict[str, list[str]] = {}
        routes, hits, seen = self.routes, self.hits, self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                seen.setdefault(self.path, []).append(self.headers.get("Range", ""))
                responses = routes.get(self.path, [(404, b"not found")])
                reply = responses[min(hits[self.path], len(responses)) - 1]
                if not isinstance(reply, Reply):
                    reply = Reply(*reply)
                body, start, status = reply.body, 0, reply.status
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                wanted = self.headers.get("Range", "")
                if status == 200 and reply.ranges and wanted.startswith("bytes=") \
                        and self.headers.get("If-Range", etag) == etag:
                    start = int(wanted[len("bytes="):].split("-")[0])
                    status = 206 if start < len(body) else 416
                self.send_response(status)
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes" if reply.ranges else "none")
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if status == 416:
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                length = reply.length if reply.length is not None else len(body) - start
                self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    self._send(body, start, reply)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a time-out)
                    self.close_connection = True

            def _send(self, body, start, reply):
                position = start
                for mark, action in sorted((m, a) for m, a in ((reply.stall_at, "stall"),
                                                               (reply.drop_at, "drop"))
                                           if m is not None and m >= start):
                    self.wfile.write(body[position:mark])
                    self.wfile.flush()
                    position = mark
                    if action == "drop":
                        self.close_connection = True
                        return
                    time.sleep(reply.stall_s)
                self.wfile.write(body[position:])

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def briefly_trained(mirror, tmp_path_factory):
    """``briefly_trained(arch)``: a tiny model (N=16, M=24) after 300 steps on
    BSDS500 crops, made once per session: a latent with real statistics (a
    random one quantizes to zeros), in a few seconds."""
    from licbench.data.images import load_rgb8
    from licbench.models import load_checkpoint
    from licbench.config import train_config
    from licbench.train import train_model

    images = [load_rgb8(p).array for p in sorted((mirror / "bsds500" / "train").glob("*.jpg"))[:8]]
    cfg = train_config(REPO / "params.yaml", steps=300, batch_size=8, crop=64, lr=1e-3, aux_lr=1e-2,
                       device="cpu", log_every=100, lr_schedule="none", val_split=None)
    made = {}

    def train(arch):
        if arch not in made:
            path = tmp_path_factory.mktemp("trained") / f"{arch}.pt"
            train_model(arch, {"N": 16, "M": 24}, 0.01, cfg, images, path)
            made[arch] = load_checkpoint(path)
        return made[arch]

    return train
