"""Errors (README "Errors"): every answer is JSON, carries a request id, and leaks nothing."""

from __future__ import annotations

import logging
import os

import pytest
from peewee import OperationalError, ProgrammingError

import app as app_module
import connections
import models
from tests.conftest import auth

CUSTOMER = {"customer": {"customer_id": "c-1", "name": "Acme"}}


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/index.html"),
        ("GET", "/api/v1"),
        ("POST", "/api/v2/customers"),
        ("GET", "/api/v1/customers/"),
        ("DELETE", "/nothing/here"),
        ("GET", "/health/"),
    ],
)
def test_unknown_route_is_json_404(client, method, path):
    response = client.open(path, method=method, headers=auth())
    assert response.status_code == 404
    assert response.get_json() == {"status": 404, "error": "Not Found"}


@pytest.mark.parametrize(
    "method,path,allowed",
    [
        ("PUT", "/api/v1/customers", {"GET", "HEAD", "POST"}),
        ("PATCH", "/api/v1/customers", {"GET", "HEAD", "POST"}),
        ("OPTIONS", "/api/v1/customers", {"GET", "HEAD", "POST"}),
        ("POST", "/api/v1/customers/x", {"GET", "HEAD", "DELETE"}),
        ("POST", "/health", {"GET", "HEAD"}),
        ("DELETE", "/health", {"GET", "HEAD"}),
    ],
)
def test_wrong_method_is_json_405_with_allow(client, method, path, allowed):
    response = client.open(path, method=method, headers=auth())
    assert response.status_code == 405
    assert response.get_json() == {"status": 405, "error": "Method Not Allowed"}
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


def test_unexpected_failure_is_a_bare_500_and_the_trace_goes_to_the_log(
    client, monkeypatch, caplog
):
    def explode(*args, **kwargs):
        raise RuntimeError('near "SELECT secret FROM api_key": syntax error in /srv/models.py')

    monkeypatch.setattr(models, "upsert_customer", explode)
    caplog.set_level(logging.ERROR, logger="customers")
    response = client.post("/api/v1/customers", json=CUSTOMER, headers=auth())
    assert response.status_code == 500
    assert response.get_json() == {"status": 500, "error": "Internal Server Error"}
    body = response.get_data(as_text=True)
    for leak in ("Traceback", "SELECT", "secret", "models.py", "RuntimeError"):
        assert leak not in body
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text
    request_id = response.headers["X-Request-Id"]
    assert any(getattr(r, "request_id", None) == request_id for r in caplog.records)


def test_request_id_is_generated_when_absent(client):
    first = client.get("/health").headers["X-Request-Id"]
    second = client.get("/health").headers["X-Request-Id"]
    assert first and second and first != second


@pytest.mark.parametrize("path", ["/health", "/api/v1/customers", "/missing"])
def test_request_id_sent_by_the_caller_is_echoed_on_every_answer(client, path):
    response = client.post(path, headers={"X-Request-Id": "req-abc.123"})
    assert response.headers["X-Request-Id"] == "req-abc.123"


@pytest.mark.parametrize("bad", ["has space", "x" * 201, "line\tbreak", "é"])
def test_unusable_request_id_is_replaced(client, bad):
    response = client.get("/health", headers={"X-Request-Id": bad})
    assert response.headers["X-Request-Id"] not in ("", bad)


def test_log_lines_of_a_request_carry_its_id(client, monkeypatch, caplog):
    def down(*args, **kwargs):
        raise models.OperationalError("unable to open database file")

    monkeypatch.setattr(models, "ping", down)
    caplog.set_level(logging.INFO, logger="customers")
    client.get("/health", headers={"X-Request-Id": "trace-me-42"})
    assert caplog.records
    assert {r.request_id for r in caplog.records} == {"trace-me-42"}


def test_log_format_shows_the_request_id(make_app, capfd, monkeypatch):
    app = make_app()

    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr(models, "ping", boom)
    app.test_client().get("/health", headers={"X-Request-Id": "visible-id-7"})
    err = capfd.readouterr().err
    assert "[visible-id-7]" in err


def test_health_is_ok_without_a_key(client):
    response = client.get("/health")
    assert (response.status_code, response.get_json()) == (
        200,
        {"status": "ok", "version": app_module.__version__},
    )


def _break_the_database(app, tmp_path):
    """Really take the SQLite file away: close pooled connections, put a directory where
    the file was (SQLite cannot open a directory)."""
    app.extensions["customers.db"].close_all()
    for name in os.listdir(tmp_path):
        if name.startswith("customers.db"):
            os.replace(tmp_path / name, tmp_path / f"moved-{name}")
    os.mkdir(tmp_path / "customers.db")


def _repair_the_database(app, tmp_path):
    os.rmdir(tmp_path / "customers.db")
    for name in os.listdir(tmp_path):
        if name.startswith("moved-"):
            os.replace(tmp_path / name, tmp_path / name.removeprefix("moved-"))


SERVICE_UNAVAILABLE = {"status": 503, "error": "Service Unavailable"}


@pytest.mark.sqlite_only
def test_unreachable_database_is_503_on_health_and_on_the_api(app, client, tmp_path):
    client.post("/api/v1/customers", json=CUSTOMER, headers=auth())
    _break_the_database(app, tmp_path)
    health = client.get("/health")
    assert (health.status_code, health.get_json()) == (503, SERVICE_UNAVAILABLE)
    upsert = client.post("/api/v1/customers", json=CUSTOMER, headers=auth())
    assert (upsert.status_code, upsert.get_json()) == (503, SERVICE_UNAVAILABLE)
    _repair_the_database(app, tmp_path)
    assert client.get("/health").status_code == 200
    again = client.post("/api/v1/customers", json=CUSTOMER, headers=auth())
    assert again.status_code == 200


def test_bad_settings_fail_at_start_with_the_setting_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for name, value in [
        ("MAX_BODY_BYTES", "lots"),
        ("MAX_BODY_BYTES", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("DB_TIMEOUT", "-1"),
        ("SQLITE_SYNCHRONOUS", "SOMETIMES"),
    ]:
        with pytest.raises(ValueError, match=name):
            app_module.create_app({"DATABASE_URL": url, name: value})
    with pytest.raises(ValueError, match="DATABASE_URL"):
        app_module.create_app({"DATABASE_URL": "mysql://x/y"})


def test_config_mapping_is_used_instead_of_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///" + str(tmp_path / "from-env.db"))
    monkeypatch.setenv("API_KEY", "env-key")
    app = app_module.create_app({"DATABASE_URL": "sqlite:///" + str(tmp_path / "given.db")})
    assert (tmp_path / "given.db").exists()
    assert not (tmp_path / "from-env.db").exists()
    client = app.test_client()
    response = client.post("/api/v1/customers", json=CUSTOMER, headers=auth("env-key"))
    assert response.status_code == 401


def test_environment_is_read_without_a_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///" + str(tmp_path / "from-env.db"))
    monkeypatch.setenv("API_KEY", "env-key")
    monkeypatch.setenv("MAX_BODY_BYTES", "100")
    client = app_module.create_app().test_client()
    assert (tmp_path / "from-env.db").exists()
    assert (
        client.post("/api/v1/customers", json=CUSTOMER, headers=auth("env-key")).status_code == 200
    )
    big = {"customer": {"customer_id": "c-2", "name": "x" * 120}}
    assert client.post("/api/v1/customers", json=big, headers=auth("env-key")).status_code == 413


def test_a_connection_that_met_an_error_is_not_pooled_again(app):
    # A SQLite connection opened while its file could not be written stays read-only;
    # pooled again, it refused every write after the storage healed.
    db = app.extensions["customers.db"]
    with connections.using(db):
        healthy = db.connection()
    with connections.using(db):
        assert db.connection() is healthy  # handed back, and reused
    with pytest.raises((OperationalError, ProgrammingError)), connections.using(db):
        failed = db.connection()
        db.execute_sql("SELECT * FROM no_such_table")
    with connections.using(db):
        assert db.connection() is not failed


@pytest.mark.postgres_only
def test_a_pooled_connection_the_server_closed_is_replaced_after_idling(app, postgres):
    # Pooled connections are pinged on check-out only after PING_AFTER seconds idle (a
    # ping per request cost a round trip each); this one has idled long enough.
    import psycopg2

    db = app.extensions["customers.db"]
    db.PING_AFTER = 0.0
    with connections.using(db):
        first = db.connection()
        backend = first.get_backend_pid()
    admin = psycopg2.connect(postgres.url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", (backend,))
    admin.close()
    response = app.test_client().get("/health")
    assert response.status_code == 200
    with connections.using(db):
        assert db.connection() is not first
