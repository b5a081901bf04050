"""The service under a real gunicorn with two workers, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import connections
import migrations
import models
from tests.conftest import API_KEY, auth, database_of, stored_customers
from tests.support import Gunicorn, refused_start, request
from tests.test_read_delete import AWKWARD_IDS, path_of


@pytest.fixture
def server(tmp_path, database_url):
    env = {
        "DATABASE_URL": database_url,
        "API_KEY": API_KEY,
        "LOG_LEVEL": "INFO",
    }
    with Gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log") as running:
        yield running


def rows(database_url: str, customer_id: str | None = None) -> list[dict]:
    found = stored_customers(database_url)
    return [row for row in found if customer_id is None or row["customer_id"] == customer_id]


def test_round_trip(server, database_url):
    body = {"customer": {"customer_id": "gc-1", "name": "Gavin", "country": "us"}}
    created = request(server.port, "POST", "/api/v1/customers", body, auth())
    assert created.status == 200
    assert created.headers["Content-Type"] == "application/json"
    assert created.headers["X-Request-Id"]
    customer = created.json()["customer"]
    assert (customer["customer_id"], customer["name"], customer["country"]) == (
        "gc-1",
        "Gavin",
        "US",
    )
    update = {"customer": {"customer_id": "gc-1", "city": "Palo Alto", "country": None}}
    updated = request(server.port, "POST", "/api/v1/customers", update, auth())
    assert updated.status == 200
    assert updated.json()["customer"] == {**customer, "city": "Palo Alto", "country": None}
    [row] = rows(database_url)
    assert (row["name"], row["city"], row["country"]) == ("Gavin", "Palo Alto", None)


def test_bad_key_is_401_over_http(server, database_url):
    body = {"customer": {"customer_id": "gc-2", "name": "Nope"}}
    reply = request(server.port, "POST", "/api/v1/customers", body, auth("wrong-key"))
    assert reply.status == 401
    assert reply.json() == {"status": 401, "error": "Unauthorized"}
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert rows(database_url) == []


def test_errors_keep_their_envelope_over_http(server):
    assert request(server.port, "GET", "/nope").json() == {"status": 404, "error": "Not Found"}
    reply = request(server.port, "PUT", "/api/v1/customers", headers=auth())
    assert reply.status == 405
    assert sorted(reply.headers["Allow"].split(", ")) == ["GET", "HEAD", "POST"]
    bad = request(
        server.port,
        "POST",
        "/api/v1/customers",
        b"{",
        {**auth(), "Content-Type": "application/json"},
    )
    assert (bad.status, bad.json()) == (
        400,
        {
            "status": 400,
            "error": "Bad Request",
            "message": "The body is not strict JSON (RFC 8259, UTF-8)",
        },
    )
    reply = request(
        server.port,
        "POST",
        "/api/v1/customers",
        {"customer": {"customer_id": "x", "country": "USA"}},
        auth(),
    )
    assert reply.status == 422
    assert reply.json()["error_details"] == {
        "country": ["not_a_valid_country_code"],
        "name": ["value_is_mandatory"],
    }
    big = request(
        server.port,
        "POST",
        "/api/v1/customers",
        b"x" * 70_000,
        {**auth(), "Content-Type": "application/json"},
    )
    assert (big.status, big.json()) == (413, {"status": 413, "error": "Payload Too Large"})


@pytest.mark.parametrize("chunked", [False, True])
def test_body_limit_holds_with_and_without_content_length(server, database_url, chunked):
    def body_of(size: int, customer_id: str) -> bytes:
        body = json.dumps({"customer": {"customer_id": customer_id, "name": ""}}).encode()
        return body.replace(b'"name": ""', b'"name": "' + b"n" * (size - len(body)) + b'"')

    headers = {**auth(), "Content-Type": "application/json"}
    # The name is too long for the field, but at the body limit that is a 422, not a 413.
    at_limit = request(
        server.port, "POST", "/api/v1/customers", body_of(65536, "a"), headers, chunked=chunked
    )
    assert at_limit.status == 422
    over = request(
        server.port, "POST", "/api/v1/customers", body_of(65537, "b"), headers, chunked=chunked
    )
    assert (over.status, over.json()) == (413, {"status": 413, "error": "Payload Too Large"})
    small = {"customer": {"customer_id": "small", "name": "S"}}
    ok = request(
        server.port,
        "POST",
        "/api/v1/customers",
        json.dumps(small).encode(),
        headers,
        chunked=chunked,
    )
    assert ok.status == 200
    assert [row["customer_id"] for row in rows(database_url)] == ["small"]


def _race(port: int, customer_id: str, writers: int) -> list:
    start = threading.Barrier(writers)

    def upsert(n: int):
        body = {"customer": {"customer_id": customer_id, "name": f"writer {n}"}}
        start.wait()
        return request(port, "POST", "/api/v1/customers", body, auth())

    with ThreadPoolExecutor(writers) as pool:
        return list(pool.map(upsert, range(writers)))


def test_50_concurrent_first_time_upserts_make_one_customer(server, database_url):
    for round_ in range(5):
        customer_id = f"race-{round_}"
        replies = _race(server.port, customer_id, 50)
        assert [r.status for r in replies] == [200] * 50
        lago_ids = {r.json()["customer"]["lago_id"] for r in replies}
        assert len(lago_ids) == 1
        [row] = rows(database_url, customer_id)
        assert row["name"] in {f"writer {n}" for n in range(50)}
    listed = request(server.port, "GET", "/api/v1/customers", headers=auth()).json()
    assert listed["meta"]["total_count"] == len(listed["customers"]) == 5
    log = (server.log_path).read_text()
    assert "locked" not in log
    assert "Traceback" not in log


def _start_app(url: str) -> None:
    from app import create_app

    create_app({"DATABASE_URL": url, "API_KEY": API_KEY})


def test_many_processes_starting_on_a_brand_new_database(database_url):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_start_app, args=(database_url,)) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 8
    with database_of(database_url) as db, connections.using(db):
        tables = {"organization", "api_key", "customer", "schema_version"}
        tables |= {"customer_country_count", "list_cursor_key"}  # search.py
        if connections.is_sqlite(db):  # the FTS5 table and its shadow tables
            tables |= {f"customer_search{part}" for part in ("", "_config", "_data", "_idx")}
        assert set(db.get_tables()) == tables
        assert migrations.version_of(db) == migrations.SCHEMA_VERSION
        assert models.Organization.select().count() == 1
        if connections.is_sqlite(db):
            assert db.execute_sql("PRAGMA journal_mode").fetchone() == ("wal",)


def test_awkward_customer_ids_round_trip_over_http(server, database_url):
    for customer_id in AWKWARD_IDS:
        body = {"customer": {"customer_id": customer_id, "name": "Awkward"}}
        created = request(server.port, "POST", "/api/v1/customers", body, auth())
        assert created.status == 200, customer_id
        customer = created.json()["customer"]
        assert customer["customer_id"] == customer_id
        fetched = request(server.port, "GET", path_of(customer_id), headers=auth())
        assert (fetched.status, fetched.json()) == (200, {"customer": customer}), customer_id
    listed = request(server.port, "GET", "/api/v1/customers?per_page=1000", headers=auth()).json()
    assert sorted(c["customer_id"] for c in listed["customers"]) == sorted(AWKWARD_IDS)
    for customer_id in AWKWARD_IDS:
        deleted = request(server.port, "DELETE", path_of(customer_id), headers=auth())
        assert deleted.status == 200, customer_id
        assert deleted.json()["customer"]["customer_id"] == customer_id
        gone = request(server.port, "GET", path_of(customer_id), headers=auth())
        assert (gone.status, gone.json()["code"]) == (404, "customer_not_found")
    assert rows(database_url) == []


def test_start_up_line_names_release_database_workers_and_key_setting(tmp_path):
    import app

    url = f"sqlite:///{tmp_path / 's.db'}"
    with Gunicorn({"DATABASE_URL": url, "API_KEY": API_KEY}, log_path=tmp_path / "g.log"):
        pass
    log = (tmp_path / "g.log").read_text()
    expected = f"customers-registry {app.__version__} starting: database {url}, 2 workers"
    assert [line for line in log.splitlines() if "starting:" in line][0].endswith(
        f"{expected}, API_KEY setting active"
    )
    assert API_KEY not in log


def test_start_up_line_masks_the_database_password():
    import app

    line = app.startup_line({"DATABASE_URL": "postgresql://u:pa%40ss@db:5432/c"}, workers=4)
    assert "database postgresql://u:***@db:5432/c, 4 workers, API_KEY setting not set" in line
    assert "pa%40ss" not in line


def test_start_up_line_masks_a_password_given_as_a_query_parameter():
    """`?password=` is a password too: the URL's query goes to the driver as settings."""
    import app

    url = "postgresql://u@db:5432/c?sslmode=require&password=pa%40ss&PASSWORD=x"
    line = app.startup_line({"DATABASE_URL": url}, workers=4)
    assert "database postgresql://u@db:5432/c?sslmode=require&password=***&PASSWORD=***," in line
    assert "pa%40ss" not in line


def test_a_bad_setting_stops_gunicorn_with_one_line(tmp_path):
    result = refused_start({"MAX_BODY_BYTES": "abc", "DATABASE_URL": f"sqlite:///{tmp_path}/b.db"})
    assert result.returncode == 2
    assert "customers-registry: setting MAX_BODY_BYTES='abc' is not valid" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len((result.stderr + result.stdout).strip().splitlines()) <= 2  # gunicorn's banner


STOP_WHILE_BOOTING = """
import os, queue, runpy, signal, sys, types

conf = runpy.run_path(sys.argv[1])
delivered = []


def boot(queued, arrives=None):
    # What gunicorn does in a new worker: post_fork, then its own handlers, then
    # post_worker_init; `queued` is the worker's copy of the master's signal queue,
    # `arrives` a signal that reaches the worker between post_fork and its handlers.
    server = types.SimpleNamespace(SIG_QUEUE=queue.SimpleQueue())
    for sig in queued:
        server.SIG_QUEUE.put(sig)
    worker = types.SimpleNamespace()
    conf["post_fork"](server, worker)
    if arrives is not None:
        os.kill(os.getpid(), arrives)
    for sig in conf["STOP_SIGNALS"]:
        signal.signal(sig, lambda sig, frame: delivered.append(signal.Signals(sig).name))
    conf["post_worker_init"](worker)


boot([signal.SIGHUP, signal.SIGTERM])
boot([], arrives=signal.SIGINT)
boot([signal.SIGHUP, signal.SIGTTIN])
print(" ".join(delivered))
"""


def test_a_stop_signal_that_reaches_a_booting_worker_is_not_lost(tmp_path):
    """gunicorn.conf.py's post_fork and post_worker_init: a SIGTERM that reached a worker
    before gunicorn installed the worker's own handlers (queued in its copy of the
    master's queue, or after post_fork) is delivered to them once they are in place,
    instead of leaving the worker serving until the master kills it 30 s later."""
    import subprocess
    import sys

    from tests.support import REPO

    result = subprocess.run(
        [sys.executable, "-c", STOP_WHILE_BOOTING, str(REPO / "gunicorn.conf.py")],
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SIGTERM", "SIGINT"]
