"""The service as a test double, for other services' test suites.

The double *is* the service: the same `create_app`, the same answers and error bodies.
Only the start-up is made for tests: a throwaway SQLite database, a known key, a free
port, an optional seed, and two endpoints that exist only here:

    GET  /_double/requests?limit=N   what it received: the last N requests, oldest first
    POST /_double/reset              forget every customer and every recorded request

From any language:

    python double.py [--port 0] [--api-key test-key] [--seed customers.json]

prints its base URL alone on one line of stdout once it answers, and on SIGTERM or
SIGINT stops and deletes its database. From Python: `with serve() as double:` or the
pytest fixture `customers_double` (add `pytest_plugins = ["double"]` to a conftest).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from marshmallow import ValidationError
from werkzeug.serving import BaseWSGIServer, make_server

import models
import schemas
from app import create_app

DEFAULT_API_KEY = "test-key"
REQUEST_LOG_SIZE = 1000
INSPECTION_PREFIX = "/_double/"


class RequestLog:
    """WSGI middleware that remembers what the double received and answered."""

    def __init__(self, wsgi_app: Any, max_body_bytes: int, size: int = REQUEST_LOG_SIZE):
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(INSPECTION_PREFIX):
            return self.wsgi_app(environ, start_response)
        body = _read_body(environ, self.max_body_bytes)
        environ["wsgi.input"] = io.BytesIO(body)
        status: list[str] = []

        def recording_start_response(status_line: str, headers: Any, *args: Any) -> Any:
            status.append(status_line)
            return start_response(status_line, headers, *args)

        answer = b"".join(self.wsgi_app(environ, recording_start_response))
        entry = {
            "method": environ.get("REQUEST_METHOD"),
            "path": _decoded_path(path),
            "query": environ.get("QUERY_STRING", ""),
            "status": int(status[0].split(" ", 1)[0]) if status else None,
            "body": _as_json_or_text(body[: self.max_body_bytes]),
            "response": _as_json_or_text(answer),
        }
        with self._lock:
            self._entries.append(entry)
        return [answer]

    def last(self, count: int) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._entries)
        return entries[-count:] if count else []

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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


def _as_json_or_text(data: bytes) -> Any:
    if not data:
        return None
    try:
        return schemas.decode_json(data)
    except schemas.BadPayload:
        return data.decode("utf-8", "replace")


def make_double_app(database_url: str, api_key: str = DEFAULT_API_KEY, **settings: Any) -> Flask:
    """`create_app` on `database_url` with the inspection endpoints and request log added."""
    app = create_app({"DATABASE_URL": database_url, "API_KEY": api_key, **settings})
    log = RequestLog(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    app.wsgi_app = log  # type: ignore[method-assign]
    app.extensions["customers.double_log"] = log

    def recorded_requests():
        try:
            limit = int(request.args.get("limit", REQUEST_LOG_SIZE))
        except ValueError:
            limit = -1
        if not 0 <= limit <= REQUEST_LOG_SIZE:
            details = {"limit": [schemas.INVALID]}
            return jsonify(status=422, error="Unprocessable entity", error_details=details), 422
        return jsonify(requests=log.last(limit))

    def reset():
        models.clear_customers()
        log.clear()
        return jsonify(status="reset")

    app.add_url_rule(INSPECTION_PREFIX + "requests", view_func=recorded_requests, methods=["GET"])
    app.add_url_rule(INSPECTION_PREFIX + "reset", view_func=reset, methods=["POST"])
    return app


def seed(app: Flask, document: Mapping[str, Any]) -> int:
    """Load `{"customers": [...]}` (the API's shape) into the default organization.

    Each customer is validated as an upsert would be; `lago_id` and `created_at` are
    kept when given. Raises `ValueError` naming every bad customer; writes nothing then.
    """
    try:
        customers = schemas.load_seed(document)
    except schemas.BadPayload as exc:
        raise ValueError(f"seed: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"seed: invalid customers (by position): {exc.messages}") from None
    db = app.extensions["customers.db"]
    with models.using(db), db.atomic():
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
        """Forget every customer and recorded request, without restarting."""
        with models.using(self.app.extensions["customers.db"]):
            models.clear_customers()
        self.app.extensions["customers.double_log"].clear()

    def requests(self, last: int = REQUEST_LOG_SIZE) -> list[dict[str, Any]]:
        """The last requests received, oldest first: method, path, query, status, body,
        response."""
        return self.app.extensions["customers.double_log"].last(last)

    def seed(self, document: Mapping[str, Any]) -> int:
        return seed(self.app, document)


@contextlib.contextmanager
def serve(
    api_key: str = DEFAULT_API_KEY,
    seed_document: Mapping[str, Any] | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    **settings: Any,
) -> Iterator[Double]:
    """Run a double in a background thread on a free port (or `port`) with a fresh
    database; yields a `Double` once it listens. On exit it shuts down, joins its thread
    and deletes its database. `settings` are more `create_app` settings by name."""
    if logging.getLogger("werkzeug").level == logging.NOTSET:
        # One line per request from the development server is noise in a test run.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    workdir = tempfile.mkdtemp(prefix="customers-double-")
    try:
        app = make_double_app(f"sqlite:///{Path(workdir) / 'customers.db'}", api_key, **settings)
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
        shutil.rmtree(workdir, ignore_errors=True)


try:  # The fixture, for suites that load this module as a pytest plugin.
    import pytest
except ImportError:  # pragma: no cover - production installs have no pytest
    pass
else:

    @pytest.fixture
    def customers_double() -> Iterator[Double]:
        """A fresh double per test: `.url`, `.api_key`, `.headers`, `.requests()`,
        `.reset()`, `.seed({...})`."""
        with serve() as double:
            yield double


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the customers service as a test double on a throwaway database."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the key callers send")
    parser.add_argument("--seed", type=Path, help='JSON file {"customers": [...]} to preload')
    parser.add_argument("--log-level", default="WARNING", help="the service's log level")
    args = parser.parse_args(argv)

    try:
        document = None
        if args.seed is not None:
            document = schemas.decode_json(args.seed.read_bytes())
    except (OSError, schemas.BadPayload) as exc:
        print(f"double: cannot read seed {args.seed}: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with serve(args.api_key, document, args.port, args.host, LOG_LEVEL=args.log_level) as d:
            print(d.url, flush=True)
            stop.wait()
    except ValueError as exc:
        print(f"double: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"double: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
