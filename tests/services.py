"""Real servers for the tests (prefect server and worker, mlflow server,
PostgreSQL): each in its own process group with its output in a log file, so
that a test can wait for it, show its log when it fails, and stop it and
every process it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, stop_signal: int = signal.SIGTERM, **popen):
        self.name, self.log, self.stop_signal = name, log, stop_signal
        # A file, not a pipe: nobody reads a pipe while the test waits, and a
        # full one would block the server.
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, **popen)

    def tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log ({self.log}), last {chars} characters:\n{text[-chars:]}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")

    def wait_http(self, url: str, timeout: float) -> None:
        """Until ``url`` answers 200; fail with the log if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {url} did not answer in {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.3)

    def stop(self, timeout: float = 30) -> None:
        """``stop_signal`` to the whole group (a server's own workers too);
        once the leader has exited or ``timeout`` passed, SIGKILL to what is left."""
        self._signal_group(self.stop_signal)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
