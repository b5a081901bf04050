"""HTTP and wiring: settings, hooks, error envelopes and routes (the commands are in
commands.py, registered here for `flask --app app ...`).

    customers-registry serve                # serve, configured from the environment
    gunicorn 'app:create_app()'             # the same, in a checkout

`create_app(config)` with a mapping reads only that mapping (the same names as the
environment variables below); without one it reads the environment.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from marshmallow import ValidationError
from peewee import InterfaceError, OperationalError
from werkzeug.exceptions import (
    ClientDisconnected,
    HTTPException,
    InternalServerError,
    RequestEntityTooLarge,
)
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

import auth
import commands
import connections
import logs
import metrics
import migrations
import models
import openapi
import outage
import pages
import schemas
import search

# The release (semantic versioning): /health, the OpenAPI document, both commands'
# --version and the start-up line show it; the package build reads it from here.
__version__ = "0.2.0"

log = logging.getLogger("customers")

# Titles of the error envelope, as the contract spells them (Lago's, where they differ
# from the HTTP reason phrase).
ERROR_TITLES = {
    413: "Payload Too Large",
    422: "Unprocessable entity",
}

# What a database that cannot be reached, or cannot write, raises (answered 503).
DATABASE_ERRORS = (OperationalError, InterfaceError)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")


# --- Settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Every setting, by its environment name. The README lists them with their meaning."""

    database_url: str = "sqlite:///customers.db"
    api_key: str | None = None
    max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    db_timeout: float = 10.0
    sqlite_synchronous: str = "FULL"
    trust_proxy: int = 0
    customer_browser: bool = True  # the page at / (pages.py); CUSTOMER_BROWSER=off: the API alone

    @classmethod
    def from_mapping(cls, source: Mapping[str, Any]) -> Settings:
        def read(name: str, default: Any, parse: Any = str) -> Any:
            raw = source.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except (TypeError, ValueError):
                raise ValueError(f"setting {name}={raw!r} is not valid") from None

        settings = cls(
            database_url=read("DATABASE_URL", cls.database_url),
            api_key=read("API_KEY", None),
            max_body_bytes=read("MAX_BODY_BYTES", cls.max_body_bytes, int),
            log_level=read("LOG_LEVEL", cls.log_level, str.upper),
            log_format=read("LOG_FORMAT", cls.log_format, str.lower),
            db_timeout=read("DB_TIMEOUT", cls.db_timeout, float),
            sqlite_synchronous=read("SQLITE_SYNCHRONOUS", cls.sqlite_synchronous, str.upper),
            trust_proxy=read("TRUST_PROXY", cls.trust_proxy, int),
            customer_browser=read("CUSTOMER_BROWSER", cls.customer_browser, _on_off),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("setting MAX_BODY_BYTES must be at least 1")
        if self.trust_proxy < 0:
            raise ValueError("setting TRUST_PROXY must be 0 or more")
        if self.db_timeout <= 0:
            raise ValueError("setting DB_TIMEOUT must be positive")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"setting LOG_LEVEL={self.log_level!r} is not a log level")
        if self.log_format not in logs.FORMATS:
            raise ValueError(f"setting LOG_FORMAT={self.log_format!r} is not text or json")
        if self.sqlite_synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"setting SQLITE_SYNCHRONOUS={self.sqlite_synchronous!r} is not valid")


def _on_off(raw: str) -> bool:
    if raw.lower() not in ("on", "off"):
        raise ValueError(raw)
    return raw.lower() == "on"


masked_url = connections.masked_url


def startup_line(environ: Mapping[str, str], workers: int) -> str:
    """The one line that says what starts: release, database, workers, the API_KEY setting.
    Raises ValueError naming a bad setting."""
    settings = Settings.from_mapping(environ)
    active = "active" if settings.api_key else "not set"
    return (
        f"customers-registry {__version__} starting: database {masked_url(settings.database_url)},"
        f" {workers} workers, API_KEY setting {active}"
    )


class JSONProvider(DefaultJSONProvider):
    """Answers in UTF-8 as written (not `\\u` escapes), in the contract's key order. A
    lone surrogate, which a client may send as JSON's `\\ud800` and UTF-8 cannot carry,
    is written back as that escape: echoing it never fails the answer."""

    sort_keys = False
    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = super().dumps(obj, **kwargs)
        if _SURROGATE.search(text):
            return super().dumps(obj, **{**kwargs, "ensure_ascii": True})
        return text


_SURROGATE = re.compile("[\ud800-\udfff]")


# --- Errors -----------------------------------------------------------------------------


class ApiError(HTTPException):
    """An HTTP error whose envelope carries more than status and title."""

    def __init__(self, status: int, **extra: Any):
        self.code = status
        self.extra = extra
        super().__init__()


def bad_request(message: str) -> ApiError:
    """A 400 whose `message` names the cause (a fixed sentence: never the request's bytes)."""
    log.info("bad request: %s", message)
    return ApiError(400, message=message)


def validation_error(details: Mapping[str, list[str]]) -> ApiError:
    return ApiError(422, message="Validation error on the record", error_details=dict(details))


def error_response(exc: HTTPException) -> Response:
    """The contract's JSON envelope, built on the exception's own response so that headers
    such as `Allow` and `WWW-Authenticate` survive."""
    response = exc.get_response()
    status = response.status_code
    body = {"status": status, "error": ERROR_TITLES.get(status, HTTP_STATUS_CODES[status])}
    body.update(getattr(exc, "extra", {}))
    if status == 400:
        body.setdefault("message", "The request could not be understood")
    response.set_data(current_app.json.dumps(body, separators=(",", ":")))
    response.mimetype = "application/json"
    return response


def handle_database_error(exc: Exception) -> Response:
    # One line when an outage starts and one when it ends (outage.py), not one a request.
    current_app.extensions["customers.outage"].refused(exc)
    g.database_failed = True  # teardown drops this connection instead of pooling it
    return error_response(ApiError(503))


def handle_unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(InternalServerError())


# --- Logging ----------------------------------------------------------------------------


class CustomerIdConverter(BaseConverter):
    """A URL-decoded `customer_id`: anything non-empty, slashes and line breaks included
    (Werkzeug's `path` converter refuses a leading slash)."""

    regex = r"[\s\S]+"
    part_isolating = False


# --- Request helpers --------------------------------------------------------------------


def request_id(incoming: str, redactor: logs.Redactor | None = None) -> str:
    """The caller's (or nginx's) X-Request-Id when usable, else a new one. Usable: 1 to 200
    of the characters in _REQUEST_ID (deploy/nginx.conf applies the same rule), and no key
    in it (a minted key's shape, or the API_KEY setting), for it is written in every log
    line of the request."""
    if _REQUEST_ID.fullmatch(incoming) and not (redactor or logs.Redactor()).holds_key(incoming):
        return incoming
    return uuid.uuid4().hex


def json_body() -> Any:
    """The request body as strict JSON, or a 400 naming the cause (a 413 past
    MAX_BODY_BYTES)."""
    if request.mimetype != "application/json":
        raise bad_request("Content-Type must be application/json")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise bad_request("Content-Type charset must be utf-8")
    try:
        return schemas.decode_json(_read_body(current_app.config["MAX_CONTENT_LENGTH"]))
    except schemas.BadPayload as exc:
        raise bad_request(str(exc)) from None


BROKEN_BODY = "The body is cut short or its chunked framing is broken"


def _read_body(limit: int) -> bytes:
    try:
        if request.content_length is None and request.environ.get("wsgi.input_terminated"):
            # A chunked body has no length to check up front, and Werkzeug's stream stops
            # quietly at the limit; read one byte past it to tell "too large" from "exactly".
            data = request.environ["wsgi.input"].read(limit + 1)
            if len(data) > limit:
                raise RequestEntityTooLarge()
            return data
        return request.get_data(cache=False)  # Werkzeug answers 413 past Content-Length
    except ClientDisconnected:  # fewer bytes than Content-Length said
        raise bad_request(BROKEN_BODY) from None
    except HTTPException:
        raise
    except Exception:
        # The server's body reader (gunicorn's, Werkzeug's) failed on what the client sent:
        # bad chunk framing, or a body shorter than announced. Its exception quotes the
        # raw bytes, so it is neither logged nor chained.
        raise bad_request(BROKEN_BODY) from None


def customer_response(customer: models.Row) -> Response:
    return jsonify(customer=schemas.dump_customer(customer))


# --- Routes -----------------------------------------------------------------------------


def openapi_document() -> Response:
    return jsonify(openapi.document(__version__))


def health() -> Response:
    models.ping()
    return jsonify(status="ok", version=__version__)


@auth.require_api_key
def upsert_customer() -> Response:
    payload = json_body()
    try:
        fields = schemas.load_customer(payload)
    except schemas.BadPayload as exc:
        raise bad_request(str(exc)) from None
    except ValidationError as exc:
        details = dict(exc.messages)  # type: ignore[arg-type]
        if "name" not in payload["customer"] and not _is_update(details, payload["customer"]):
            details["name"] = [schemas.MANDATORY]
        raise validation_error(details) from None
    customer = models.upsert_customer(g.organization_id, fields)
    if customer is None:  # no name, and no customer to update
        raise validation_error({"name": [schemas.MANDATORY]})
    return customer_response(customer)


@auth.require_api_key
def get_customer(customer_id: str) -> Response:
    return customer_response(_found(models.get_customer, customer_id))


@auth.require_api_key
def delete_customer(customer_id: str) -> Response:
    return customer_response(_found(models.delete_customer, customer_id))


@auth.require_api_key
def list_customers() -> Response:
    try:
        query = request.query_string
        page, per_page, filters, cursor = schemas.load_list_params(request.args, query)
        rows, total, next_cursor = models.list_customers(
            g.organization_id, page, per_page, filters, cursor
        )
    except ValidationError as exc:
        raise validation_error(exc.messages) from None  # type: ignore[arg-type]
    except search.BadCursor:
        raise validation_error({"cursor": [schemas.INVALID]}) from None
    return jsonify(
        customers=[schemas.dump_customer(row) for row in rows],
        meta=schemas.page_meta(page, per_page, total, next_cursor, cursor is not None),
    )


def _found(lookup: Any, customer_id: str) -> models.Row:
    customer = None
    if schemas.is_possible_customer_id(customer_id):
        customer = lookup(g.organization_id, customer_id)
    if customer is None:
        raise ApiError(404, code="customer_not_found")
    return customer


def _is_update(details: Mapping[str, Any], customer: Mapping[str, Any]) -> bool:
    # Reporting every failing field at once: a body without a name is only valid as an
    # update, so tell the caller the name is missing too when nothing would be updated.
    customer_id = customer.get("customer_id")
    if "customer_id" in details or not isinstance(customer_id, str):
        return False
    return models.get_customer(g.organization_id, customer_id) is not None


# --- Factory ----------------------------------------------------------------------------


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the service.

    `config`: a mapping of settings by their environment names (`DATABASE_URL`,
    `API_KEY`, `MAX_BODY_BYTES`, ...); when given, the environment is not read at all.
    Creates the tables when missing. Leaves no database connection open, so it is safe
    to call before gunicorn forks its workers.
    """
    settings = Settings.from_mapping(os.environ if config is None else config)
    logs.configure(log, settings.log_level, settings.log_format, (settings.api_key or "",))

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json = JSONProvider(app)
    app.url_map.merge_slashes = False  # a customer_id may hold "//"
    app.url_map.converters["customer_id"] = CustomerIdConverter
    if settings.trust_proxy:
        # Only behind that many proxies of our own (nginx) are X-Forwarded-* the truth;
        # each takes the right-most value, the one the nearest proxy added.
        n = settings.trust_proxy
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]

    db = connections.open_database(
        settings.database_url,
        busy_timeout=settings.db_timeout,
        synchronous=settings.sqlite_synchronous,
    )
    checker = auth.KeyChecker(settings.api_key)
    prepare = DatabasePreparation(db, checker, settings.api_key is not None)
    try:
        prepare()
    except DATABASE_ERRORS as exc:
        log.warning(
            "database unavailable at start (%s); trying again on each request", outage.reason(exc)
        )
    app.extensions["customers.db"] = db
    app.extensions["customers.settings"] = settings
    password = urlsplit(settings.database_url).password
    app.extensions["customers.outage"] = outage.OutageLog(
        masked_url(settings.database_url), log, password=unquote(password) if password else None
    )
    app.extensions["customers.keys"] = checker
    app.extensions["customers.preparation"] = prepare

    metrics.instrument(app)  # first, so that its clock starts before the other hooks
    _register_hooks(app, db, prepare, logs.Redactor((settings.api_key or "",)))
    _register_errors(app)
    _register_routes(app)
    if settings.customer_browser:
        pages.register_browser(app)
    _register_commands(app)
    return app


class DatabasePreparation:
    """Brings the schema up to date (migrations.py: creates it in an empty database,
    upgrades an older one, refuses a newer one), and makes the organization of the
    `API_KEY` setting.

    Run at start; if the database cannot be reached then, run again by every request
    until it succeeds. A worker that boots during a database outage (a restart, a
    recycled worker) then answers 503 until the database is back, instead of failing to
    boot, which makes gunicorn stop the whole service.
    """

    def __init__(self, db: Any, checker: auth.KeyChecker, default_organization: bool):
        self.db = db
        self.checker = checker
        self.default_organization = default_organization
        self.done = False
        self.upgraded_from: int | None = None  # the schema version found, if it was older
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if self.done:
            return
        with self._lock:
            if self.done:
                return
            found, now = migrations.upgrade(self.db)
            if found is not None and found != now:
                self.upgraded_from = found
            if self.default_organization:
                with connections.using(self.db):
                    organization_id = models.ensure_organization(models.DEFAULT_ORGANIZATION)
                self.checker.default_organization_id = organization_id
            self.done = True


def check_database(environ: Mapping[str, str]) -> None:
    """Refuse, before gunicorn forks its workers, what no worker could serve: a SQLite
    file that cannot be made (its folder cannot be made, or written), a schema that a
    newer release has upgraded, a schema_version that is not one, tables that lack this
    release's columns (the workers upgrade an older one, under the schema lock). Reads
    only, but for making a missing SQLite file. An existing SQLite file that cannot be
    written (storage gone read-only), or a database that cannot be reached now, is only
    logged: the workers answer 503 until it heals.
    Raises ValueError (a bad setting, connections.UnusablePath,
    migrations.SchemaUnusable) and migrations.SchemaTooNew."""
    settings = Settings.from_mapping(environ)
    logs.configure(log, settings.log_level, settings.log_format, (settings.api_key or "",))
    url = settings.database_url
    path = connections.sqlite_file(url)
    if path is not None:
        connections.make_sqlite_file(path)  # one that cannot be made is refused
        try:
            connections.check_sqlite_writable(path)
        except connections.UnusablePath as exc:
            log.warning("%s; the workers answer 503 until it can be written", exc)
    db = connections.open_database(url, busy_timeout=settings.db_timeout)
    try:
        with connections.using(db):
            found = migrations.version_of(db)
            if found == migrations.SCHEMA_VERSION:
                migrations.check_columns(db)
    except DATABASE_ERRORS as exc:
        log.warning(
            "database unavailable at start (%s); the workers will retry", outage.reason(exc)
        )
        return
    finally:
        db.close_all()
    if found is not None and found > migrations.SCHEMA_VERSION:
        raise migrations.SchemaTooNew(found)


def _register_hooks(
    app: Flask, db: Any, prepare: DatabasePreparation, redactor: logs.Redactor
) -> None:
    @app.before_request
    def start_request() -> None:
        g.request_id = request_id(request.headers.get("X-Request-Id", ""), redactor)
        g.db_token = connections.activate(db)
        prepare()

    @app.after_request
    def stamp_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id") or uuid.uuid4().hex
        return response

    @app.teardown_request
    def end_request(exc: BaseException | None) -> None:
        if not db.is_closed():
            if g.get("database_failed"):
                # A connection that met a fault (a restarted server, a file it could not
                # write) is not trusted again: the next request opens a fresh one.
                db.manual_close()
            else:
                db.close()
                app.extensions["customers.outage"].served()
        token = g.pop("db_token", None)
        if token is not None:
            connections.deactivate(token)


def _register_errors(app: Flask) -> None:
    app.register_error_handler(HTTPException, error_response)
    for error in DATABASE_ERRORS:
        app.register_error_handler(error, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected_error)


def _register_routes(app: Flask) -> None:
    # No automatic OPTIONS: it would answer 200 with an empty, non-JSON body.
    def route(rule: str, view: Any, *methods: str) -> None:
        app.add_url_rule(rule, view_func=view, methods=methods, provide_automatic_options=False)

    route("/health", health, "GET")
    route("/api/v1/openapi.json", openapi_document, "GET")
    route("/api/v1/customers", upsert_customer, "POST")
    route("/api/v1/customers", list_customers, "GET")
    route("/api/v1/customers/<customer_id:customer_id>", get_customer, "GET")
    route("/api/v1/customers/<customer_id:customer_id>", delete_customer, "DELETE")


def _register_commands(app: Flask) -> None:
    for command in commands.COMMANDS:
        app.cli.add_command(command)
