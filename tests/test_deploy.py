"""The production paths: nginx (deploy/nginx.conf as shipped) in front of gunicorn
(gunicorn.conf.py) with two workers, and several gunicorn "hosts" on one PostgreSQL."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from tests.conftest import API_KEY, auth, mint_key, stored_customers
from tests.servers import Nginx
from tests.support import REPO, Gunicorn, request

CLIENT = "127.0.0.5"  # the address our requests come from, as nginx sees them
CUSTOMER = {"customer": {"customer_id": "via-nginx", "name": "Proxied", "country": "fr"}}


@pytest.fixture
def stack(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "TRUST_PROXY": "1"}
    gunicorn = Gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log").start()
    try:
        with Nginx(gunicorn.port) as nginx:
            yield gunicorn, nginx
    finally:
        gunicorn.stop()


def via_nginx(nginx: Nginx, method: str, path: str, body=None, headers=None, **kwargs):
    return request(
        nginx.port, method, path, body, headers, host=nginx.host, source=CLIENT, **kwargs
    )


TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def access_line(gunicorn: Gunicorn, request_id: str, timeout: float = 5) -> str:
    """gunicorn's access-log line of the request with this id, after its timestamp."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gunicorn.log_path.read_text().splitlines():
            if f"request_id={request_id} " in line:
                assert TIMESTAMP.match(line), line
                return TIMESTAMP.sub("", line, count=1)
        time.sleep(0.05)
    raise AssertionError(f"no access-log line for {request_id}")


def test_round_trip_through_nginx(stack, database_url):
    gunicorn, nginx = stack
    created = via_nginx(nginx, "POST", "/api/v1/customers", CUSTOMER, auth())
    assert created.status == 200
    customer = created.json()["customer"]
    assert (customer["customer_id"], customer["country"]) == ("via-nginx", "FR")
    fetched = via_nginx(nginx, "GET", "/api/v1/customers/via-nginx", headers=auth())
    assert fetched.json() == {"customer": customer}
    unauthorized = via_nginx(nginx, "GET", "/api/v1/customers", headers=auth("nope"))
    assert unauthorized.status == 401
    assert unauthorized.headers["WWW-Authenticate"] == "Bearer"
    assert [row["customer_id"] for row in stored_customers(database_url)] == ["via-nginx"]


def test_request_id_is_passed_through_and_echoed(stack):
    gunicorn, nginx = stack
    sent = via_nginx(nginx, "GET", "/health", headers={"X-Request-Id": "caller-id-123"})
    assert sent.headers["X-Request-Id"] == "caller-id-123"
    assert "/health" in access_line(gunicorn, "caller-id-123")
    # Without one, nginx makes one; the app receives it, echoes it and logs it.
    made = via_nginx(nginx, "POST", "/api/v1/customers", CUSTOMER, auth())
    request_id = made.headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert '"POST /api/v1/customers' in access_line(gunicorn, request_id)


def test_forwarded_client_address_is_what_the_app_sees(stack):
    gunicorn, nginx = stack
    # A client-supplied X-Forwarded-For is not believed: nginx appends the real peer and
    # the app (TRUST_PROXY=1) takes that right-most entry.
    headers = {"X-Request-Id": "whoami-1", "X-Forwarded-For": "6.6.6.6"}
    via_nginx(nginx, "GET", "/health", headers=headers)
    assert access_line(gunicorn, "whoami-1").startswith(f"{CLIENT} ")


def test_without_trust_proxy_forwarded_headers_are_ignored(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY}
    with Gunicorn(env, workers=1, log_path=tmp_path / "direct.log") as gunicorn:
        headers = {"X-Request-Id": "direct-1", "X-Forwarded-For": "6.6.6.6"}
        request(gunicorn.port, "GET", "/health", headers=headers, source=CLIENT)
        assert access_line(gunicorn, "direct-1").startswith(f"{CLIENT} ")


def test_oversized_body_is_refused_by_nginx_in_json(stack, database_url):
    gunicorn, nginx = stack
    big = b'{"customer": {"customer_id": "big", "name": "' + b"x" * 70_000 + b'"}}'
    headers = {**auth(), "Content-Type": "application/json", "X-Request-Id": "too-big-1"}
    for chunked in (False, True):
        reply = via_nginx(nginx, "POST", "/api/v1/customers", big, headers, chunked=chunked)
        assert (reply.status, reply.json()) == (413, {"status": 413, "error": "Payload Too Large"})
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.headers["X-Request-Id"] == "too-big-1"
    assert "too-big-1" not in gunicorn.log_path.read_text()  # never reached the app
    assert stored_customers(database_url) == []


def test_body_at_the_limit_passes_nginx(stack):
    gunicorn, nginx = stack
    body = b'{"customer": {"customer_id": "fits", "name": "ok", "pad": "'
    body += b"p" * (65536 - len(body) - 3) + b'"}}'
    assert len(body) == 65536
    headers = {**auth(), "Content-Type": "application/json"}
    for chunked in (False, True):
        reply = via_nginx(nginx, "POST", "/api/v1/customers", body, headers, chunked=chunked)
        assert reply.status == 200


def test_app_errors_pass_through_nginx_untouched(stack):
    gunicorn, nginx = stack
    reply = via_nginx(nginx, "GET", "/api/v1/customers/nobody", headers=auth())
    assert reply.json() == {"status": 404, "error": "Not Found", "code": "customer_not_found"}
    reply = via_nginx(nginx, "PUT", "/api/v1/customers", headers=auth())
    assert reply.status == 405 and "POST" in reply.headers["Allow"]


def test_json_502_when_gunicorn_is_down(stack):
    gunicorn, nginx = stack
    gunicorn.stop()
    reply = via_nginx(nginx, "GET", "/health", headers={"X-Request-Id": "down-1"})
    assert (reply.status, reply.json()) == (502, {"status": 502, "error": "Bad Gateway"})
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Request-Id"] == "down-1"


def test_nginx_own_bad_request_is_json(stack):
    gunicorn, nginx = stack
    headers = {"X-Request-Id": "huge-header-1", "X-Filler": "f" * 20_000}
    reply = via_nginx(nginx, "GET", "/health", headers=headers)
    assert (reply.status, reply.json()["status"], reply.json()["error"]) == (
        400,
        400,
        "Bad Request",
    )
    assert reply.headers["X-Request-Id"] == "huge-header-1"


# --- Several hosts on one PostgreSQL ------------------------------------------------------


@pytest.mark.postgres_only
def test_two_gunicorn_hosts_race_first_time_upserts_on_one_postgres(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY}
    with (
        Gunicorn(env, workers=2, log_path=tmp_path / "a.log") as host_a,
        Gunicorn(env, workers=2, log_path=tmp_path / "b.log") as host_b,
    ):
        ports = [host_a.port, host_b.port]
        ids = [f"shared-{n}" for n in range(20)]
        writers = 16
        start = threading.Barrier(writers)

        def writer(w: int) -> list:
            start.wait()
            replies = []
            for customer_id in ids:
                body = {"customer": {"customer_id": customer_id, "name": f"writer {w}"}}
                replies.append(request(ports[w % 2], "POST", "/api/v1/customers", body, auth()))
            return replies

        with ThreadPoolExecutor(writers) as pool:
            replies = [r for batch in pool.map(writer, range(writers)) for r in batch]
        assert [r.status for r in replies] == [200] * (writers * len(ids))
        lago_ids: dict[str, set] = {}
        for reply in replies:
            customer = reply.json()["customer"]
            lago_ids.setdefault(customer["customer_id"], set()).add(customer["lago_id"])
        assert all(len(found) == 1 for found in lago_ids.values())
        rows = stored_customers(database_url)
        assert sorted(row["customer_id"] for row in rows) == sorted(ids)
        listed = request(host_a.port, "GET", "/api/v1/customers", headers=auth()).json()
        assert listed["meta"]["total_count"] == len(ids)
        for log in ("a.log", "b.log"):
            assert "Traceback" not in (tmp_path / log).read_text()


# --- Backing up SQLite while the service writes -------------------------------------------


def flask_command(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`flask --app app ...` as an operator runs it, with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.sqlite_only
def test_online_backup_while_gunicorn_writes(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY}
    with Gunicorn(env, workers=2, log_path=tmp_path / "g.log") as gunicorn:
        acknowledged: list[str] = []
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                body = {"customer": {"customer_id": f"w-{n}", "name": "Writer"}}
                if request(gunicorn.port, "POST", "/api/v1/customers", body, auth()).status == 200:
                    acknowledged.append(f"w-{n}")
                n += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            while len(acknowledged) < 50:
                time.sleep(0.01)
            before = set(acknowledged)
            result = flask_command(env, "backup", str(tmp_path / "b.db"))
        finally:
            stop.set()
            writer.join()
    assert result.returncode == 0, result.stderr
    assert re.search(r"backed up \d+ customers", result.stdout)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        saved = {row[0] for row in conn.execute("SELECT customer_id FROM customer")}
    assert before <= saved  # everything acknowledged before the backup is in it
    again = flask_command(env, "backup", str(tmp_path / "b.db"))
    assert again.returncode != 0 and "b.db" in again.stderr  # never overwrites


# --- Moving from SQLite to PostgreSQL -----------------------------------------------------


@pytest.mark.postgres_only
def test_copy_from_sqlite_to_postgres_keeps_everything(tmp_path, database_url):
    sqlite_url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_app({"DATABASE_URL": sqlite_url, "API_KEY": API_KEY})
    key = mint_key(old, "acme")
    client = old.test_client()
    made = []
    for n in range(12):
        body = {"customer": {"customer_id": f"c-{n}", "name": f"N{n}", "country": "de"}}
        made.append(client.post("/api/v1/customers", json=body, headers=auth(key)).get_json())
    client.delete("/api/v1/customers/c-3", headers=auth(key))

    result = old.test_cli_runner().invoke(args=["copy-to", database_url])
    assert result.exit_code == 0, result.output
    assert "11 customer" in result.output

    new = create_app({"DATABASE_URL": database_url, "API_KEY": API_KEY}).test_client()
    listed = new.get("/api/v1/customers", headers=auth(key)).get_json()  # the same key works
    expected = [m["customer"] for m in made if m["customer"]["customer_id"] != "c-3"]
    assert sorted(listed["customers"], key=lambda c: c["customer_id"]) == sorted(
        expected, key=lambda c: c["customer_id"]
    )
    assert listed["meta"]["total_count"] == 11
    # New rows get fresh ids after the copied ones.
    body = {"customer": {"customer_id": "after-move", "name": "New"}}
    assert new.post("/api/v1/customers", json=body, headers=auth(key)).status_code == 200
    assert mint_key(create_app({"DATABASE_URL": database_url}), "hooli").startswith("lk_")
    # A second copy into the now non-empty database is refused.
    again = old.test_cli_runner().invoke(args=["copy-to", database_url])
    assert again.exit_code != 0 and "not empty" in again.output


def nginx_access_line(nginx: Nginx, request_id: str, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = (nginx.prefix / "customers.access.log").read_text()
        found = [line for line in text.splitlines() if f"request_id={request_id} " in line]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no nginx access line for {request_id}")


def test_nginx_and_the_app_take_the_same_request_id(stack):
    gunicorn, nginx = stack
    minted_shape = "lk_" + "Q" * 43
    for sent in ['abc def"x', "x" * 201, minted_shape, f"id-{minted_shape}", f"id-{API_KEY}"]:
        reply = via_nginx(nginx, "GET", "/health", headers={"X-Request-Id": sent})
        used = reply.headers["X-Request-Id"]
        assert used != sent and re.fullmatch(r"[0-9a-f]{32}", used)
        # The id the client got is the one both logs carry.
        assert "/health" in access_line(gunicorn, used)
        assert '"GET /health HTTP/1.1" 200' in nginx_access_line(nginx, used)
    kept = via_nginx(nginx, "GET", "/health", headers={"X-Request-Id": "a.b_c:d@e/f+g=h-1"})
    assert kept.headers["X-Request-Id"] == "a.b_c:d@e/f+g=h-1"
    assert "upstream_status=200" in nginx_access_line(nginx, "a.b_c:d@e/f+g=h-1")
    text = (nginx.prefix / "customers.access.log").read_text() + gunicorn.log_path.read_text()
    assert API_KEY not in text and minted_shape not in text


def test_nginx_logs_the_route_not_the_path(stack):
    gunicorn, nginx = stack
    headers = {**auth(), "X-Request-Id": "route-1"}
    reply = via_nginx(nginx, "GET", "/api/v1/customers/secret%0Aforged?x=1", headers=headers)
    assert reply.status == 404
    line = nginx_access_line(nginx, "route-1")
    assert '"GET /api/v1/customers/<customer_id> HTTP/1.1" 404' in line
    assert "secret" not in line and "forged" not in line
    assert "/api/v1/customers/secret\\x0aforged?x=1" in access_line(gunicorn, "route-1")
