"""The pytest fixture `customers_double`, registered by the package's `pytest11` entry
point: install the package and use the fixture, no conftest line.

One double serves the whole session (one per pytest-xdist worker), in a process of its
own started from the `customers-double` command; each test gets it reset: no customers,
no recorded requests, no faults, the same key. Nothing of the service is imported here,
only the standard library and pytest, so a project with its own `app.py` or `models.py`,
or its own pins of Flask and marshmallow, is never touched by it.

A test checks what its client sent with `assert_request_made`, `calls` and
`wait_for_request`: the double matches and ranks the near misses (`POST
/_double/verify`), this module only formats its answer. Strict teardown (the marker
`customers_double(strict=True)` or the ini option `customers_double_strict`) fails a test
whose faults never fired or whose client got an answer it should not have.

`CUSTOMERS_DOUBLE_COMMAND`, when set, is the command line that starts the double (split
as a shell would; this plugin adds `--port 0 --api-key ...` after it): for instance the
`customers-double` of another environment (pipx, uv tool, a venv of its own).
"""

from __future__ import annotations

import http.client
import json as json_module
import os
import re
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


class Call:
    """One recorded request, as `.calls()` and `.assert_request_made()` return it:
    `.method`, `.path`, `.query`, `.headers`, `.json` (the body as JSON, None when it was
    none, not JSON or cut), `.body` (as recorded: JSON, else text), `.status` and
    `.response_json` (None when no answer was sent), `.fault` (the id of the fault that
    touched it), `.duration_ms`, `.id`, and `.record`, the record as the double lists it.
    Keys are redacted in all of it."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.id: int = record.get("id", 0)
        self.method: str = record["method"]
        self.path: str = record["path"]
        self.query: str = record.get("query", "")
        self.headers: dict[str, str] = record.get("headers", {})
        self.body: Any = record.get("body")
        self.status: int | None = record.get("status")
        self.response: Any = record.get("response")
        self.fault: str | None = record.get("fault")
        self.duration_ms: float | None = record.get("duration_ms")
        self.json = (
            None if record.get("body_truncated") or isinstance(self.body, str) else self.body
        )
        cut = record.get("response_truncated") or isinstance(self.response, str)
        self.response_json = None if cut else self.response

    def __repr__(self) -> str:
        return f"<Call #{self.id} {self.method} {_text(self.path)} -> {self.status}>"


class Calls(list):
    """The matching calls, oldest first; `.last` is the newest."""

    @property
    def last(self) -> Call:
        if not self:
            raise AssertionError("customers_double: no matching request was recorded")
        return self[-1]


class CustomersDouble:
    """A running double as a test sees it: `url`, `api_key`, `headers`, the control
    routes as methods, and verification (`assert_request_made`, `calls`,
    `wait_for_request`). Talks plain HTTP to it (no proxy settings apply: it is local)."""

    def __init__(self, url: str, api_key: str):
        self.url = url
        self.api_key = api_key
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._verified: set[int] = set()  # ids of the records a verification returned

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
        self._verified.clear()

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

    # --- Verification: the double matches and ranks (POST /_double/verify) ---------------

    def assert_request_made(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        json: Any = None,
        query: dict[str, Any] | str | None = None,
        headers: dict[str, str | None] | None = None,
        status: int | None = None,
        count: int | None = None,
    ) -> Calls:
        """Fail unless the double received a matching request (exactly `count` of them
        when given); the failure lists the closest requests and how each differs.
        `json` is a subset of the body (objects by subset, anything else exactly), `path`
        exact or a pattern (`/api/v1/customers/{customer_id}`). Returns the matches."""
        __tracebackhide__ = True
        criteria = _criteria(method, path, json, query, headers, status, count)
        status_code, answer = self._verify(criteria)
        if status_code != 200:
            raise AssertionError(failure_text(answer)) from None
        return self._calls(answer["matches"])

    def calls(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        json: Any = None,
        query: dict[str, Any] | str | None = None,
        headers: dict[str, str | None] | None = None,
        status: int | None = None,
    ) -> Calls:
        """The matching requests as `Call` objects, oldest first (`.last`, `len()`)."""
        status_code, answer = self._verify(
            _criteria(method, path, json, query, headers, status, None)
        )
        return self._calls(answer["matches"] if status_code == 200 else [])

    def wait_for_request(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        json: Any = None,
        query: dict[str, Any] | str | None = None,
        headers: dict[str, str | None] | None = None,
        status: int | None = None,
        timeout: float = 5,
    ) -> Call:
        """The first matching request, once there is one (for clients that call from a
        thread or another process); after `timeout` seconds, fails with the near misses."""
        __tracebackhide__ = True
        criteria = _criteria(method, path, json, query, headers, status, None)
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            status_code, answer = self._verify(criteria)
            if status_code == 200:
                return self._calls(answer["matches"])[0]
            if time.monotonic() >= deadline:
                answer["message"] += f" within {timeout:g} s"
                raise AssertionError(failure_text(answer)) from None
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.05)

    def _verify(self, criteria: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status_code, answer = self._exchange("POST", "/_double/verify", criteria)
        if status_code == 422 and "near_misses" not in answer:
            bad = ", ".join(sorted(answer.get("error_details", {})))
            raise ValueError(f"customers_double: invalid verification arguments: {bad}")
        if status_code not in (200, 422):
            raise DoubleError(f"POST /_double/verify: {status_code} {answer}")
        return status_code, answer

    def _calls(self, records: list[dict[str, Any]]) -> Calls:
        self._verified.update(record["id"] for record in records)
        return Calls(Call(record) for record in records)

    def strict_problems(self) -> list[str]:
        """What a strict test fails on: faults that never fired, and answers the client
        should not have got (401, 404 on an unknown route, 405, 422) that no verification
        returned. Answers a fault gave are the test's own doing and do not count."""
        faults = self.faults()
        records = self.requests()
        fired = {record["fault"] for record in records}
        problems = [
            f"a fault never fired: {_fault(fault)}"
            for fault in faults
            if fault["id"] not in fired
            and (fault["times"] is None or fault["remaining"] == fault["times"])
        ]
        by_fault = {fault["id"]: fault for fault in faults}
        for record in records:
            fault = by_fault.get(record["fault"] or "")
            if fault is not None and fault["status"] is not None:
                continue
            if record["id"] not in self._verified and _unwanted(record):
                problems.append(
                    f"an answer the test did not verify: {_summary(record)} "
                    f"{_value(record['response'])}"
                )
        return problems

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, answer = self._exchange(method, path, body)
        if status >= 400:
            raise DoubleError(f"{method} {path}: {status} {answer}")
        return answer

    def _exchange(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(*self._address, timeout=30)
        try:
            data = None if body is None else _json(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            answer = json_module.loads(response.read() or b"null")
        finally:
            connection.close()
        return response.status, answer


def _criteria(method, path, json, query, headers, status, count) -> dict[str, Any]:
    given = {
        "method": method,
        "path": path,
        "json": json,
        "query": query,
        "headers": headers,
        "status": status,
        "count": count,
    }
    return {key: value for key, value in given.items() if value is not None}


def _fault(fault: dict[str, Any]) -> str:
    """A fault by its id and the keys it was given."""
    given = {key: value for key, value in fault.items() if value not in (None, {}, 0)}
    given.pop("remaining", None)
    return _json(given)


def _unwanted(record: dict[str, Any]) -> bool:
    status = record["status"]
    if status == 404:  # an unknown route; an unknown customer has its own `code`
        response = record["response"]
        return not (isinstance(response, dict) and "code" in response)
    return status in (401, 405, 422)


# --- The failure message: the double's verdict, for a person --------------------------------

VALUE_CHARS = 120


def failure_text(answer: dict[str, Any]) -> str:
    """The 422 of `POST /_double/verify` as a person reads it: what was wanted, then the
    closest requests, each with what differs."""
    lines = [answer["message"], f"expected: {_wanted(answer['wanted'])}"]
    recorded = answer["recorded"]
    if answer["matches"]:
        lines.append(f"matching ({answer['matched']}):")
        lines += [f"  {_summary(record)}" for record in answer["matches"]]
    if not recorded:
        lines.append("No request was recorded.")
    elif answer["near_misses"]:
        plural = "request" if recorded == 1 else "requests"
        lines.append(f"{recorded} {plural} recorded; the closest:")
        for miss in answer["near_misses"]:
            lines.append(f"  {_summary(miss['request'])}")
            lines += [f"      {_difference(d)}" for d in miss["differences"]]
    return "\n".join(lines)


def _wanted(wanted: dict[str, Any]) -> str:
    words = [str(wanted.get("method", "*")), _text(str(wanted.get("path", "*")))]
    words += [
        f"{key}={_value(wanted[key])}"
        for key in ("query", "headers", "json", "status", "count")
        if key in wanted
    ]
    return " ".join(words)


def _summary(record: dict[str, Any]) -> str:
    status = "no answer" if record["status"] is None else record["status"]
    query = f"?{_text(record['query'])}" if record.get("query") else ""
    return f"#{record['id']} {_text(record['method'])} {_text(record['path'])}{query} -> {status}"


def _difference(difference: dict[str, Any]) -> str:
    field, wanted = difference["field"], _value(difference["wanted"])
    if difference.get("missing"):
        return f"{field}: missing (wanted {wanted})"
    if difference["wanted"] is None and field.startswith("headers."):
        return f"{field}: sent (wanted none), {_value(difference['seen'])}"
    return f"{field}: wanted {wanted}, seen {_value(difference['seen'])}"


def _value(value: Any) -> str:
    text = _json(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _text(text: str) -> str:
    """Text a client sent, shown with its control characters escaped."""
    return json_module.dumps(text, ensure_ascii=False)[1:-1]


def _json(value: Any) -> str:
    return json_module.dumps(value, ensure_ascii=False)


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
        # directory say: this interpreter, with this package findable, and never the
        # project's folder on its import path (-P; a PYTHONPATH entry naming it is left
        # out): a project's own `secrets.py` or `json.py` must not stand in for the
        # standard library's in the double.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        here = os.path.abspath(os.getcwd())
        inherited = [
            entry
            for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if entry and os.path.abspath(entry) != here
        ]
        path = os.pathsep.join([package_parent, *inherited])
        argv = [sys.executable, "-P", "-m", "customers_registry.cli_double"]
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
                raise RuntimeError(self._exit_message(argv))
            line += chunk
        return line.decode().splitlines()[0].strip()

    def _exit_message(self, argv: list[str]) -> str:
        assert self.process is not None
        said = self._stderr_text().strip()
        message = f"customers_double: {shlex.join(argv)} exited with {self.process.returncode}"
        missing = re.search(r"No module named '[^']+'", said)
        if missing is None:
            return f"{message}: {said}"
        missing = missing.group()
        if os.environ.get("CUSTOMERS_DOUBLE_COMMAND", "").strip():
            return (
                f"{message}: {missing}\nThe command in CUSTOMERS_DOUBLE_COMMAND runs in an "
                "environment without the double's dependencies: point it at a "
                "customers-double installed with them (pip install <the package>, not --no-deps)."
            )
        return (
            f"customers_double: the double cannot run in this test environment ({missing}): "
            "the package was installed without its dependencies (pip install --no-deps), "
            "as when the double runs from an environment of its own.\n"
            "Set CUSTOMERS_DOUBLE_COMMAND to the customers-double of that environment, e.g.\n"
            '    export CUSTOMERS_DOUBLE_COMMAND="$HOME/.customers-double/bin/customers-double"\n'
            "or install the package with its dependencies here."
        )

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


STRICT_INI = "customers_double_strict"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        STRICT_INI,
        type="bool",
        default=False,
        help="customers_double: fail a test whose faults never fired or whose client got a "
        "401, a 404 on an unknown route, a 405 or a 422 that the test did not verify",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "customers_double(strict=True): fail the test if a fault it registered never fired, "
        "or its client got a 401, 404 (unknown route), 405 or 422 it did not verify",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    double = getattr(item, "funcargs", {}).get("customers_double")
    if isinstance(double, CustomersDouble) and _strict(item):
        problems = double.strict_problems()
        if problems:
            lines = "\n".join(f"  {problem}" for problem in problems)
            pytest.fail(f"customers_double (strict):\n{lines}", pytrace=False)
    return result


def _strict(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("customers_double")
    if marker is not None and "strict" in marker.kwargs:
        return bool(marker.kwargs["strict"])
    return bool(item.config.getini(STRICT_INI))


@pytest.fixture(scope="session")
def customers_double_server() -> Iterator[CustomersDouble]:
    """The session's double process (started at first use, stopped at the end)."""
    process = DoubleProcess()
    try:
        running = process.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield running
    finally:
        process.stop()


@pytest.fixture
def customers_double(customers_double_server: CustomersDouble) -> CustomersDouble:
    """An empty double for this test: `.url`, `.api_key`, `.headers`, `.requests(last=N)`,
    `.reset()`, `.seed(document)`, `.fault(**definition)`, and verification:
    `.assert_request_made(...)`, `.calls(...)`, `.wait_for_request(...)`."""
    customers_double_server.reset()
    return customers_double_server
