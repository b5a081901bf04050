"""The pytest fixture `customers_double`, registered by the package's `pytest11` entry
point: install the package and use the fixture, no conftest line.

One double serves the whole session (one per pytest-xdist worker), in a process of its
own started from the `customers-double` command; each test gets it reset: no customers,
no recorded requests, no faults, the same key. Nothing of the service is imported here,
only the standard library and pytest, so a project with its own `app.py` or `models.py`,
or its own pins of Flask and marshmallow, is never touched by it.

`CUSTOMERS_DOUBLE_COMMAND`, when set, is the command line that starts the double (split
as a shell would; this plugin adds `--port 0 --api-key ...` after it): for instance the
`customers-double` of another environment (pipx, uv tool, a venv of its own).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

API_KEY = "test-key"
START_TIMEOUT = 60.0  # seconds from starting the command to its ready line


class DoubleError(Exception):
    """The double answered a control request with an error."""


class CustomersDouble:
    """A running double as a test sees it: `url`, `api_key`, `headers`, and the control
    routes as methods. Talks plain HTTP to it (no proxy settings apply: it is local)."""

    def __init__(self, url: str, api_key: str):
        self.url = url
        self.api_key = api_key
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)

    @property
    def headers(self) -> dict[str, str]:
        """The headers of an authorised JSON request."""
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def requests(self, last: int = 1000) -> list[dict[str, Any]]:
        """The last requests it received, oldest first (`GET /_double/requests`)."""
        return self._call("GET", f"/_double/requests?limit={int(last)}")["requests"]

    def reset(self) -> None:
        """Forget every customer, recorded request and fault; the key stays."""
        self._call("POST", "/_double/reset")

    def seed(self, document: dict[str, Any]) -> int:
        """Load `{"customers": [...]}` (lago_id and created_at kept when given); returns
        how many. Raises DoubleError naming every bad customer; nothing is loaded then."""
        return self._call("POST", "/_double/seed", document)["seeded"]

    def fault(self, **definition: Any) -> dict[str, Any]:
        """Register a fault (`method`, `path`, `status`, `headers`, `delay_ms`, `action`,
        `times`); returns it as the double lists it, with its `id` and `remaining`."""
        return self._call("POST", "/_double/faults", {"fault": definition})["fault"]

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_double/faults")["faults"]

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        connection = http.client.HTTPConnection(*self._address, timeout=30)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            answer = json.loads(response.read() or b"null")
        finally:
            connection.close()
        if response.status >= 400:
            raise DoubleError(f"{method} {path}: {response.status} {answer}")
        return answer


class DoubleProcess:
    """The `customers-double` command, started and stopped."""

    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.process: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()

    @staticmethod
    def command() -> tuple[list[str], dict[str, str]]:
        """The command line, and its environment."""
        configured = os.environ.get("CUSTOMERS_DOUBLE_COMMAND", "").strip()
        if configured:
            return shlex.split(configured), dict(os.environ)
        # The customers-double of this environment, whatever the PATH or the current
        # directory say: this interpreter, with this package findable.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "customers_registry.cli_double"]
        return argv, {**os.environ, "PYTHONPATH": path}

    def start(self) -> CustomersDouble:
        command, environment = self.command()
        argv = [*command, "--port", "0", "--api-key", self.api_key]
        try:
            self.process = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                stdin=subprocess.DEVNULL,
                env=environment,
            )
        except OSError as exc:
            raise RuntimeError(f"customers_double: cannot start {argv[0]!r}: {exc}") from None
        url = self._ready_line(argv)
        return CustomersDouble(url, self.api_key)

    def _ready_line(self, argv: list[str]) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(remaining, 0))
            if not readable:
                self.stop()
                raise RuntimeError(f"customers_double: no ready line in {START_TIMEOUT:.0f} s")
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                self.process.wait(10)
                raise RuntimeError(
                    f"customers_double: {shlex.join(argv)} exited with "
                    f"{self.process.returncode}: {self._stderr_text()}"
                )
            line += chunk
        return line.decode().splitlines()[0].strip()

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-2000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@pytest.fixture(scope="session")
def customers_double_server() -> Iterator[CustomersDouble]:
    """The session's double process (started at first use, stopped at the end)."""
    process = DoubleProcess()
    running = process.start()
    try:
        yield running
    finally:
        process.stop()


@pytest.fixture
def customers_double(customers_double_server: CustomersDouble) -> CustomersDouble:
    """An empty double for this test: `.url`, `.api_key`, `.headers`, `.requests(last=N)`,
    `.reset()`, `.seed(document)`, `.fault(**definition)`."""
    customers_double_server.reset()
    return customers_double_server
