"""Idle and slow clients against gunicorn's sync workers, straight and behind nginx.

    .venv/bin/python bench/slow_clients.py

Opens idle TCP connections (connected, nothing sent) to the service, then times one
`GET /health` beside them: straight to gunicorn (two sync workers, the shipped
gunicorn.conf.py) and through nginx running deploy/nginx.conf. Everything is on
127.0.0.1 and bounded: each probe waits at most 40 s. Prints one line per case.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import Nginx  # noqa: E402
from tests.support import Gunicorn, request  # noqa: E402


def probe(host: str, port: int, idle: int) -> str:
    with ExitStack() as stack:
        for _ in range(idle):
            sock = stack.enter_context(socket.create_connection((host, port), timeout=5))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        time.sleep(0.5)  # let the server accept them
        began = time.perf_counter()
        try:
            status = request(port, "GET", "/health", host=host, timeout=40).status
        except OSError as exc:
            status = type(exc).__name__
        return f"{status} after {time.perf_counter() - began:.3f} s"


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="customers-slow-"))
    env = {"DATABASE_URL": f"sqlite:///{workdir / 'customers.db'}", "TRUST_PROXY": "1"}
    with Gunicorn(env, workers=2, log_path=workdir / "gunicorn.log") as gunicorn:
        with Nginx(gunicorn.port) as nginx:
            for idle in (0, 1, 2):
                print(
                    f"straight to gunicorn, {idle} idle: {probe('127.0.0.1', gunicorn.port, idle)}"
                )
            for idle in (0, 2, 300):
                print(f"through nginx, {idle} idle: {probe(nginx.host, nginx.port, idle)}")


if __name__ == "__main__":
    main()
