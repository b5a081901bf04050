"""Helpers for tests that drive a real server over HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    chunked: bool = False,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> Reply:
    """One HTTP request on a new connection; `body` is sent as JSON unless it is bytes.
    `chunked` sends it with `Transfer-Encoding: chunked` and no `Content-Length`;
    `source` is the loopback address to send from (127.0.0.0/8 is all ours)."""
    conn = http.client.HTTPConnection(
        host, port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if chunked:
            pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
            conn.request(method, path, body=iter(pieces), headers=headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def gunicorn_command(port: int) -> list[str]:
    """gunicorn serving `app:create_app()` with the shipped gunicorn.conf.py on `port`."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(REPO / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "app:create_app()",
    ]


def refused_start(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start gunicorn with these settings when it is expected to refuse: its exit."""
    return subprocess.run(
        gunicorn_command(free_port()),
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Gunicorn:
    """A real gunicorn serving `app:create_app()` from the repository with the shipped
    gunicorn.conf.py, on a free port."""

    env: dict[str, str]
    workers: int = 2
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    _log: Any = None

    def start(self, timeout: float = 30, healthy: bool = True) -> Gunicorn:
        """Start and wait until /health answers 200 (or, not `healthy`, answers at all)."""
        self._log = open(self.log_path, "ab") if self.log_path else None
        log = self._log or subprocess.DEVNULL
        self.process = subprocess.Popen(
            [*gunicorn_command(self.port), "--workers", str(self.workers)],
            cwd=REPO,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
            start_new_session=True,  # so that kill() reaches the master and every worker
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            try:
                status = request(self.port, "GET", "/health", timeout=2).status
                if status == 200 or not healthy:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("gunicorn did not answer in time")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: a crash, not a shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
