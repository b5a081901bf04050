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
    POST   /_double/verify             did it receive a request like this? the matches,
                                       or the near misses and how each differs

This module is the wiring; faults live in faults.py, the request log (bounds and
redaction) in recording.py, matching and near misses in verify.py.

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
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from marshmallow import ValidationError
from werkzeug.serving import BaseWSGIServer, make_server

import app as service
import auth
import connections
import faults
import models
import pages
import recording
import schemas
import verify

DEFAULT_API_KEY = "test-key"
REQUEST_LOG_SIZE = recording.LOG_SIZE
RECORDED_BYTES = recording.BODY_BYTES
CONTROL_PREFIX = faults.CONTROL_PREFIX


# --- The middleware: faults applied on the way in, every request recorded ------------------


class Dropped(ConnectionAbortedError):
    """Raised to the server once a fault has closed the connection: Werkzeug's server
    takes a ConnectionError as a client gone, and writes nothing more."""


class DoubleMiddleware:
    """WSGI middleware of the double: applies the faults and records every request but
    those to the control routes."""

    def __init__(
        self,
        wsgi_app: Any,
        max_body_bytes: int,
        api_key: str,
        registry: faults.Faults,
        log: recording.RequestLog,
    ):
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.faults = registry
        self.log = log

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raw_path = environ.get("PATH_INFO", "")
        if faults.is_control(raw_path):
            return self.wsgi_app(environ, start_response)
        began = time.perf_counter()
        generation, wake = self.log.current()
        method, path = environ.get("REQUEST_METHOD", ""), recording.decoded(raw_path)
        body = _read_body(environ, self.max_body_bytes)
        environ["wsgi.input"] = io.BytesIO(body)
        redactor = recording.Redactor(self._secrets(environ))
        entry = recording.Recorded.received(environ, body, redactor, self.log.salt)
        fault = self.faults.take(method, path)
        try:
            if fault is not None:
                entry.fault = fault.id
                if fault.delay_ms:
                    wake.wait(fault.delay_ms / 1000)  # a reset wakes it at once
                    if generation != self.log.generation:
                        # A reset came while this request waited: it belongs to a test
                        # that has ended, so it neither runs nor leaves a trace.
                        self._drop(entry, environ, began, generation)
                if fault.status is not None:
                    answer = faults.answer(fault, environ)
                    return self._answer(entry, redactor, start_response, answer)
                if fault.action == "drop":
                    self._drop(entry, environ, began, generation)
            answer = _run(self.wsgi_app, environ)
            if fault is not None and fault.action == "drop_after_write":
                self._drop(entry, environ, began, generation)
            return self._answer(entry, redactor, start_response, answer)
        finally:
            self._record(entry, began, generation)

    def _answer(
        self, entry: recording.Recorded, redactor: recording.Redactor, start_response: Any, answer
    ) -> list[bytes]:
        status_line, headers, data = answer
        entry.answered(status_line, data, redactor)
        start_response(status_line, headers)
        return [data]

    def _secrets(self, environ: dict[str, Any]) -> list[str]:
        presented = auth.bearer_token(environ.get("HTTP_AUTHORIZATION"))
        return [self.api_key, recording.decoded(presented or "")]

    def _drop(self, entry: recording.Recorded, environ: dict, began: float, generation: int):
        """Record the request, then close its connection without a byte of answer
        (recorded first: the client may send its next request the moment it sees the
        connection close)."""
        self._record(entry, began, generation)
        connection = environ.get("werkzeug.socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        raise Dropped("connection dropped by a fault")

    def _record(self, entry: recording.Recorded, began: float, generation: int) -> None:
        if entry.recorded:
            return
        entry.recorded = True
        entry.duration_ms = round((time.perf_counter() - began) * 1000, 2)
        self.log.append(entry, generation)


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


# --- The app --------------------------------------------------------------------------------


def make_double_app(database_url: str, api_key: str = DEFAULT_API_KEY, **settings: Any) -> Flask:
    """`create_app` on `database_url` with the control routes, faults and request log."""
    app = service.create_app({"DATABASE_URL": database_url, "API_KEY": api_key, **settings})
    registry = faults.Faults()
    log = recording.RequestLog()
    app.wsgi_app = DoubleMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, app.config["MAX_CONTENT_LENGTH"], api_key, registry, log
    )
    app.extensions["customers.double_log"] = log
    app.extensions["customers.double_faults"] = registry

    def recorded_requests():
        try:
            limit = int(request.args.get("limit", REQUEST_LOG_SIZE))
        except ValueError:
            limit = -1
        if not 0 <= limit <= REQUEST_LOG_SIZE:
            raise service.validation_error({"limit": [schemas.INVALID]})
        listing = recording.json_array("requests", log.entries(limit))
        return app.response_class(listing, mimetype="application/json")

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
            fault = registry.add(faults.parse(payload["fault"]))
        except schemas.BadPayload as exc:
            raise service.bad_request(str(exc)) from None
        except ValidationError as exc:
            raise service.validation_error(exc.messages) from None  # type: ignore[arg-type]
        return jsonify(fault=fault.as_dict()), 201

    def list_faults():
        return jsonify(faults=registry.listed())

    def remove_faults():
        registry.clear()
        return jsonify(faults=[])

    def verify_requests():
        payload = service.json_body()
        if not isinstance(payload, dict):
            raise service.bad_request("The body must be a JSON object")
        try:
            expected = verify.parse(payload)
        except ValidationError as exc:
            raise service.validation_error(exc.messages) from None  # type: ignore[arg-type]
        redactor = recording.Redactor([api_key])
        verdict = verify.verify(expected, log.entries(), log.salt, redactor)
        if not verdict.met:
            raise service.ApiError(422, **verdict.failure(redactor))
        listing = recording.json_array("matches", verdict.matches)
        return app.response_class(listing, mimetype="application/json")

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
    route("verify", verify_requests, "POST")
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
        entries = self.app.extensions["customers.double_log"].entries(last)
        return [entry.as_dict() for entry in entries]

    def seed(self, document: Mapping[str, Any]) -> int:
        return seed(self.app, document)

    def fault(self, **definition: Any) -> dict[str, Any]:
        """Register a fault (the keys of `POST /_double/faults`); returns it as listed.
        Raises ValueError naming every bad key."""
        try:
            fault = faults.parse(definition)
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
