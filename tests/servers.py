"""Real servers for the tests, each in its own temporary directory on a free local port:
PostgreSQL (initdb + postgres from Debian's packages) and nginx (with the shipped
deploy/nginx.conf). Both are started and stopped by the tests themselves."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support import REPO, free_port, request


def find_binary(name: str, *patterns: str) -> str:
    """The path of a server binary, or a clear failure (a skip outside CI)."""
    found = shutil.which(name)
    for pattern in patterns:
        found = found or next(iter(sorted(glob.glob(pattern), reverse=True)), None)
    if found:
        return found
    import pytest  # here: the benchmark uses these servers too, without pytest

    message = f"{name} is not installed: run `make servers` (Debian: apt-get install ...)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PostgresServer:
    """A throwaway PostgreSQL cluster: trust auth on 127.0.0.1, one database per test."""

    def __init__(self) -> None:
        self.bindir = os.path.dirname(find_binary("initdb", "/usr/lib/postgresql/*/bin/initdb"))
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="customers-pg-"))
        self.process: subprocess.Popen | None = None
        # PostgreSQL refuses to run as root; run it as the package's own user then.
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run_as(self) -> dict:
        return {"user": self.user, "group": self.user} if self.user else {}

    def start(self) -> PostgresServer:
        if self.user:
            shutil.chown(self.workdir, self.user, self.user)
        data = self.workdir / "data"
        subprocess.run(
            [
                f"{self.bindir}/initdb",
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._run_as(),
        )
        self._log = open(self.workdir / "postgres.log", "ab")  # closed in stop()
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start postgres on the cluster (again, after `stop_server`)."""
        data = self.workdir / "data"
        log = self._log
        self.process = subprocess.Popen(
            [
                f"{self.bindir}/postgres",
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.workdir),
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=log,
            **self._run_as(),
        )
        self._wait_ready()

    def stop_server(self) -> None:
        """Stop postgres (a fast shutdown: sessions are cut), keeping the cluster."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "PostgreSQL did not start: "
                        + (self.workdir / "postgres.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.url("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.stop_server()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


NGINX_MAIN = """
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/customers.conf;
}}
"""


class Nginx:
    """A real nginx in a temporary prefix, running deploy/nginx.conf as shipped, with only
    its listen address and upstream port changed."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.2") -> None:
        self.binary = find_binary("nginx", "/usr/sbin/nginx")
        self.upstream_port = upstream_port
        self.host = host
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="customers-nginx-"))
        self.process: subprocess.Popen | None = None

    def site_config(self) -> str:
        shipped = (REPO / "deploy" / "nginx.conf").read_text()
        for old, new in [
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{self.upstream_port};"),
            ("listen 80;", f"listen {self.host}:{self.port};"),
            ("/var/log/nginx/customers.access.log", str(self.prefix / "customers.access.log")),
            ("/var/log/nginx/customers.error.log", str(self.prefix / "customers.error.log")),
        ]:
            assert shipped.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
            shipped = shipped.replace(old, new)
        return shipped

    def start(self) -> Nginx:
        (self.prefix / "customers.conf").write_text(self.site_config())
        (self.prefix / "nginx.conf").write_text(NGINX_MAIN.format(prefix=self.prefix))
        os.chmod(self.prefix, 0o755)  # its workers run as nobody
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-e",
                str(self.prefix / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                request(self.port, "GET", "/health", host=self.host, timeout=2)
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.prefix / "error.log").read_text()
                    raise RuntimeError(f"nginx did not start: {log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
