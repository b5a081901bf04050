"""The service as a test double, for other services' test suites.

The double *is* the service: the same `create_app`, the same answers and error bodies.
Only the start-up is made for tests (a throwaway SQLite database, a known key, a free
port, an optional seed) and a few control routes exist only here (no key needed):

    GET    /_double/requests?limit=N   what it received: the last N requests, oldest first
    POST   /_double/reset              forget every customer, recorded request and fault
    POST   /_double/seed               load {"customers": [...]} (lago_id, created_at kept)
    POST   /_double/faults             make matching requests fail: a status, a delay, or
    GET    /_double/faults             a dropped connection (before or after the write)
    DELETE /_double/faults

From any language:

    customers-double [--port 0] [--api-key test-key] [--seed FILE] [--database FILE]
    python double.py ...                                           # the same, in a checkout

prints its base URL alone on the first line of stdout once it answers, and on SIGTERM
or SIGINT stops (exit code 0) and deletes its database unless `--database` named one.
From Python: `with serve() as double:`; from pytest, the `customers_double` fixture of
the installed package (customers_registry/pytest_plugin.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from marshmallow import ValidationError
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.serving import BaseWSGIServer, make_server

import app as service
import auth
import connections
import logs
import models
import pages
import schemas

DEFAULT_API_KEY = "test-key"
REQUEST_LOG_SIZE = 1000
# What one recorded request may hold of the body it carried and the answer it got. A
# longer one is kept cut to this and marked `body_truncated` / `response_truncated`:
# 1000 requests then take at most ~32 MB, whatever is sent.
RECORDED_BYTES = 16 * 1024
CONTROL_PREFIX = "/_double/"
API_PREFIX = "/api/v1/"
MAX_DELAY_MS = 60_000
_MINTED_KEY_BYTES = re.compile(auth.MINTED_KEY.pattern.encode())


# --- Faults -------------------------------------------------------------------------------


@dataclass
class Fault:
    """A registered fault: what it matches, what it does, how many more times."""

    id: str
    method: str | None = None
    path: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: int = 0
    action: str | None = None
    times: int | None = 1
    remaining: int | None = 1

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path is None:
            return path.startswith(API_PREFIX)
        return self.path == path

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "headers": dict(self.headers),
            "delay_ms": self.delay_ms,
            "action": self.action,
            "times": self.times,
            "remaining": self.remaining,
        }


FAULT_KEYS = ("method", "path", "status", "headers", "delay_ms", "action", "times")
ACTIONS = ("drop", "drop_after_write")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names


def parse_fault(definition: Any) -> Fault:
    """A `Fault` from the `fault` object of `POST /_double/faults`; raises ValidationError
    keyed by every offending key at once."""
    if not isinstance(definition, dict):
        raise schemas.BadPayload("fault must be a JSON object")
    errors: dict[str, list[str]] = {}

    def invalid(key: str) -> None:
        errors[key] = [schemas.INVALID]

    for key in definition:
        if key not in FAULT_KEYS:
            invalid(key)
    fault = Fault(id=uuid.uuid4().hex[:12])
    method = definition.get("method")
    if method is not None:
        if isinstance(method, str) and _TOKEN.fullmatch(method):
            fault.method = method.upper()
        else:
            invalid("method")
    path = definition.get("path")
    if path is not None:
        if isinstance(path, str) and path.startswith("/") and not _is_control(path):
            fault.path = path
        else:
            invalid("path")
    status = definition.get("status")
    if status is not None:
        if _is_int(status) and 400 <= status <= 599:
            fault.status = status
        else:
            invalid("status")
    headers = definition.get("headers")
    if headers is not None:
        if isinstance(headers, dict) and all(
            _TOKEN.fullmatch(str(name)) and isinstance(value, str) and _is_header_value(value)
            for name, value in headers.items()
        ):
            fault.headers = dict(headers)
        else:
            invalid("headers")
    delay = definition.get("delay_ms")
    if delay is not None:
        if _is_int(delay) and 0 <= delay <= MAX_DELAY_MS:
            fault.delay_ms = delay
        else:
            invalid("delay_ms")
    action = definition.get("action")
    if action is not None:
        if action not in ACTIONS:
            invalid("action")
        elif status is not None:
            invalid("action")  # an answer and no answer at once
        else:
            fault.action = action
    if "times" in definition:
        times = definition["times"]
        if times is None or (_is_int(times) and times >= 1):
            fault.times = fault.remaining = times
        else:
            invalid("times")
    if errors:
        raise ValidationError(errors)
    return fault


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_header_value(value: str) -> bool:
    return value.isascii() and not any(ch in value for ch in "\r\n\0")


def _is_control(path: str) -> bool:
    return path.startswith(CONTROL_PREFIX)


class Faults:
    """The registered faults, tried in the order registered."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault that matches and has uses left, with one use counted."""
        with self._lock:
            for fault in self._faults:
                if fault.remaining != 0 and fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def listed(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


# --- The request log, and the faults applied on the way in --------------------------------


@dataclass
class Recorded:
    """One request as received, kept as bytes (at most RECORDED_BYTES of body and answer)
    and rendered to JSON only when asked for."""

    method: str
    path: str
    query: str
    body: bytes
    body_truncated: bool
    status: int | None = None
    response: bytes | None = None
    response_truncated: bool = False
    fault: str | None = None
    recorded: bool = False  # in the log already (or left out of it by a reset)

    def to_json(self) -> str:
        head = {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "fault": self.fault,
            "body_truncated": self.body_truncated,
            "response_truncated": self.response_truncated,
        }
        text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        return (
            f'{text},"body":{_json_or_text(self.body)},"response":{_json_or_text(self.response)}}}'
        )


def _json_or_text(data: bytes | None) -> str:
    """Recorded bytes as a JSON value: the JSON they are (spliced in as they are, never
    parsed into objects: a body of 16 KiB of `{}`s would take megabytes), else text."""
    if not data:
        return "null"
    try:
        schemas.decode_json(data)
    except schemas.BadPayload:
        return json.dumps(data.decode("utf-8", "replace"), ensure_ascii=False)
    return data.decode("utf-8")


class Dropped(ConnectionAbortedError):
    """Raised to the server once a fault has closed the connection: Werkzeug's server
    takes a ConnectionError as a client gone, and writes nothing more."""


class DoubleMiddleware:
    """WSGI middleware of the double: applies the faults and records every request but
    those to the control routes."""

    def __init__(self, wsgi_app: Any, max_body_bytes: int, api_key: str, faults: Faults):
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.faults = faults
        self._entries: deque[Recorded] = deque(maxlen=REQUEST_LOG_SIZE)
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every reset

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raw_path = environ.get("PATH_INFO", "")
        if _is_control(raw_path):
            return self.wsgi_app(environ, start_response)
        method, path = environ.get("REQUEST_METHOD", ""), _decoded_path(raw_path)
        body = _read_body(environ, self.max_body_bytes)
        environ["wsgi.input"] = io.BytesIO(body)
        secrets = self._secrets(environ)
        entry = Recorded(
            method=method,
            path=logs.redact(path, secrets),
            query=logs.redacted_query(_decoded_path(environ.get("QUERY_STRING", "")), secrets),
            body=_redact_bytes(body[:RECORDED_BYTES], secrets),
            body_truncated=len(body) > RECORDED_BYTES,
        )
        generation = self._generation
        fault = self.faults.take(method, path)
        try:
            if fault is not None:
                entry.fault = fault.id
                if fault.delay_ms:
                    time.sleep(fault.delay_ms / 1000)
                    if generation != self._generation:
                        # A reset came while this request waited: it belongs to a test
                        # that has ended, so it neither runs nor leaves a trace.
                        self._drop(entry, environ, secrets, generation)
                if fault.status is not None:
                    return self._answer(entry, start_response, _fault_answer(fault, environ))
                if fault.action == "drop":
                    self._drop(entry, environ, secrets, generation)
            status_line, headers, answer = _run(self.wsgi_app, environ)
            if fault is not None and fault.action == "drop_after_write":
                self._drop(entry, environ, secrets, generation)
            return self._answer(entry, start_response, (status_line, headers, answer))
        finally:
            self._record(entry, secrets, generation)

    def _answer(self, entry: Recorded, start_response: Any, answer: tuple) -> list[bytes]:
        status_line, headers, data = answer
        entry.status = int(status_line.split(" ", 1)[0])
        entry.response = data[:RECORDED_BYTES]
        entry.response_truncated = len(data) > RECORDED_BYTES
        start_response(status_line, headers)
        return [data]

    def _secrets(self, environ: dict[str, Any]) -> list[str]:
        presented = auth.bearer_token(environ.get("HTTP_AUTHORIZATION"))
        return [secret for secret in (self.api_key, presented) if secret]

    def _drop(self, entry: Recorded, environ: dict, secrets: list[str], generation: int):
        """Record the request, then close its connection without a byte of answer
        (recorded first: the client may send its next request the moment it sees the
        connection close)."""
        self._record(entry, secrets, generation)
        connection = environ.get("werkzeug.socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        raise Dropped("connection dropped by a fault")

    def _record(self, entry: Recorded, secrets: list[str], generation: int) -> None:
        if entry.recorded:
            return
        entry.recorded = True
        if entry.response is not None:
            entry.response = _redact_bytes(entry.response, secrets)
        with self._lock:
            if generation == self._generation:  # else a reset came meanwhile
                self._entries.append(entry)

    def last(self, count: int) -> list[Recorded]:
        with self._lock:
            entries = list(self._entries)
        return entries[-count:] if count else []

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation += 1


def _run(wsgi_app: Any, environ: dict[str, Any]) -> tuple[str, list, bytes]:
    """Run the app to the end and hold its answer (to record it, or to drop it)."""
    started: list[tuple[str, list]] = []

    def start_response(status_line: str, headers: list, exc_info: Any = None) -> Any:
        started[:] = [(status_line, headers)]
        return lambda data: None  # the app never writes; Flask returns an iterable

    result = wsgi_app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status_line, headers = started[0]
    return status_line, headers, data


def _fault_answer(fault: Fault, environ: dict[str, Any]) -> tuple[str, list, bytes]:
    """The answer of a `status` fault, in the error envelope, with its extra headers."""
    status = fault.status
    title = service.ERROR_TITLES.get(status, HTTP_STATUS_CODES.get(status, "Error"))
    body: dict[str, Any] = {"status": status, "error": title}
    if status == 400:
        body["message"] = "A fault registered on the test double"
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("X-Request-Id", service.request_id(environ.get("HTTP_X_REQUEST_ID", ""))),
        *fault.headers.items(),
    ]
    return f"{status} {title}", headers, data


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The body, up to one byte past the limit (so the app still answers "too large"),
    read as a WSGI app must: no further than Content-Length."""
    stream = environ["wsgi.input"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length >= 0:
        return stream.read(min(length, limit + 1))
    if environ.get("wsgi.input_terminated"):  # chunked, ended by the server
        return stream.read(limit + 1)
    return b""


def _decoded_path(path: str) -> str:
    # PEP 3333 hands the path over as latin-1; the caller sent UTF-8.
    return path.encode("latin-1").decode("utf-8", "replace")


def _redact_bytes(data: bytes, secrets: list[str]) -> bytes:
    for secret in secrets:
        data = data.replace(secret.encode("utf-8", "surrogateescape"), logs.REDACTED.encode())
    return _MINTED_KEY_BYTES.sub(logs.REDACTED.encode(), data)


# --- The app --------------------------------------------------------------------------------


def make_double_app(database_url: str, api_key: str = DEFAULT_API_KEY, **settings: Any) -> Flask:
    """`create_app` on `database_url` with the control routes, faults and request log."""
    app = service.create_app({"DATABASE_URL": database_url, "API_KEY": api_key, **settings})
    faults = Faults()
    log = DoubleMiddleware(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"], api_key, faults)
    app.wsgi_app = log  # type: ignore[method-assign]
    app.extensions["customers.double_log"] = log
    app.extensions["customers.double_faults"] = faults

    def recorded_requests():
        try:
            limit = int(request.args.get("limit", REQUEST_LOG_SIZE))
        except ValueError:
            limit = -1
        if not 0 <= limit <= REQUEST_LOG_SIZE:
            raise service.validation_error({"limit": [schemas.INVALID]})
        entries = ",".join(entry.to_json() for entry in log.last(limit))
        return app.response_class(f'{{"requests":[{entries}]}}', mimetype="application/json")

    def reset():
        reset_double(app)
        return jsonify(status="reset")

    def seed_route():
        try:
            count = seed(app, service.json_body())
        except SeedError as exc:
            if exc.details is None:
                raise service.bad_request(str(exc)) from None
            raise service.validation_error(exc.details) from None
        return jsonify(seeded=count), 201

    def add_fault():
        payload = service.json_body()
        if not isinstance(payload, dict) or "fault" not in payload:
            raise service.bad_request('The body must be {"fault": {...}}')
        try:
            fault = faults.add(parse_fault(payload["fault"]))
        except schemas.BadPayload as exc:
            raise service.bad_request(str(exc)) from None
        except ValidationError as exc:
            raise service.validation_error(exc.messages) from None  # type: ignore[arg-type]
        return jsonify(fault=fault.as_dict()), 201

    def list_faults():
        return jsonify(faults=faults.listed())

    def remove_faults():
        faults.clear()
        return jsonify(faults=[])

    def route(rule: str, view: Any, method: str) -> None:
        app.add_url_rule(
            CONTROL_PREFIX + rule,
            endpoint=f"double_{view.__name__}",
            view_func=view,
            methods=[method],
            provide_automatic_options=False,
        )

    route("requests", recorded_requests, "GET")
    route("reset", reset, "POST")
    route("seed", seed_route, "POST")
    route("faults", add_fault, "POST")
    route("faults", list_faults, "GET")
    route("faults", remove_faults, "DELETE")
    pages.register_double_page(app)
    return app


def reset_double(app: Flask) -> None:
    """Forget every customer, recorded request and fault; keys stay. A request still in
    flight (one waiting out a delay) is dropped unrun when it wakes, and none is logged."""
    app.extensions["customers.double_log"].clear()
    app.extensions["customers.double_faults"].clear()
    with connections.using(app.extensions["customers.db"]):
        models.clear_customers()


class SeedError(ValueError):
    """A seed document that cannot be loaded; `details` are the invalid customers' errors
    by position (None when the document itself is not `{"customers": [...]}`)."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details


def seed(app: Flask, document: Mapping[str, Any]) -> int:
    """Load `{"customers": [...]}` (the API's shape) into the default organization.

    Each customer is validated as an upsert would be; `lago_id` and `created_at` are
    kept when given. Raises `SeedError` naming every bad customer; writes nothing then.
    """
    try:
        customers = schemas.load_seed(document)
    except schemas.BadPayload as exc:
        raise SeedError(f"seed: {exc}") from None
    except ValidationError as exc:
        details = {str(position): errors for position, errors in exc.messages.items()}  # type: ignore[union-attr]
        raise SeedError(f"seed: invalid customers (by position): {details}", details) from None
    db = app.extensions["customers.db"]
    with connections.using(db), db.atomic():
        organization_id = models.ensure_organization(models.DEFAULT_ORGANIZATION)
        for customer in customers:
            lago_id, created_at = customer.pop("lago_id"), customer.pop("created_at")
            models.upsert_customer(
                organization_id,
                customer,
                lago_id=lago_id,
                created_at=created_at.replace(microsecond=0) if created_at else None,
            )
    return len(customers)


class Double:
    """A running double: `url`, `api_key`, and what a test needs to steer it."""

    def __init__(self, app: Flask, server: BaseWSGIServer, api_key: str):
        self.app = app
        self.server = server
        self.api_key = api_key
        host = server.server_address[0]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{server.server_port}"

    @property
    def headers(self) -> dict[str, str]:
        """The headers of an authorised JSON request."""
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def reset(self) -> None:
        """Forget every customer, recorded request and fault, without restarting."""
        reset_double(self.app)

    def requests(self, last: int = REQUEST_LOG_SIZE) -> list[dict[str, Any]]:
        """The last requests received, oldest first, as `GET /_double/requests` shows them."""
        entries = self.app.extensions["customers.double_log"].last(last)
        return [json.loads(entry.to_json()) for entry in entries]

    def seed(self, document: Mapping[str, Any]) -> int:
        return seed(self.app, document)

    def fault(self, **definition: Any) -> dict[str, Any]:
        """Register a fault (the keys of `POST /_double/faults`); returns it as listed.
        Raises ValueError naming every bad key."""
        try:
            fault = parse_fault(definition)
        except (ValidationError, schemas.BadPayload) as exc:
            raise ValueError(f"fault: {getattr(exc, 'messages', exc)}") from None
        return self.app.extensions["customers.double_faults"].add(fault).as_dict()


@contextlib.contextmanager
def serve(
    api_key: str = DEFAULT_API_KEY,
    seed_document: Mapping[str, Any] | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    database: str | Path | None = None,
    **settings: Any,
) -> Iterator[Double]:
    """Run a double in a background thread on a free port (or `port`); yields a `Double`
    once it listens. Its database is a throwaway file, deleted on exit, unless `database`
    names a file to keep (and reuse on the next start). On exit it shuts down and joins
    its thread. `settings` are more `create_app` settings by name."""
    if logging.getLogger("werkzeug").level == logging.NOTSET:
        # One line per request from the development server is noise in a test run.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    workdir = None
    if database is None:
        workdir = tempfile.mkdtemp(prefix="customers-double-")
        database = Path(workdir) / "customers.db"
        # A throwaway database need not survive a power cut: a commit skips the fsync.
        settings.setdefault("SQLITE_SYNCHRONOUS", "OFF")
    try:
        app = make_double_app(f"sqlite:///{Path(database).absolute()}", api_key, **settings)
        if seed_document is not None:
            seed(app, seed_document)
        server = make_server(host, port, app, threaded=True)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon shutdown() is noticed
            name="customers-double",
        )
        thread.daemon = True
        thread.start()
        try:
            yield Double(app, server, api_key)
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
            app.extensions["customers.db"].close_all()
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="customers-double",
        description="Run the customers service as a test double on a throwaway database.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the key callers send")
    parser.add_argument("--seed", type=Path, help='JSON file {"customers": [...]} to preload')
    parser.add_argument(
        "--database", type=Path, help="SQLite file to keep state in across restarts"
    )
    parser.add_argument("--log-level", default="WARNING", help="the service's log level")
    parser.add_argument(
        "--version", action="version", version=f"customers-double {service.__version__}"
    )
    args = parser.parse_args(argv)

    try:
        document = None
        if args.seed is not None:
            document = schemas.decode_json(args.seed.read_bytes())
    except (OSError, schemas.BadPayload) as exc:
        print(f"customers-double: cannot read seed {args.seed}: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with serve(
            args.api_key,
            document,
            args.port,
            args.host,
            database=args.database,
            LOG_LEVEL=args.log_level,
        ) as running:
            print(running.url, flush=True)
            print(f"customers-double: its page: {running.url}/_double/", file=sys.stderr)
            stop.wait()
    except ValueError as exc:
        print(f"customers-double: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"customers-double: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
