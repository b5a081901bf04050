"""Logs and metrics as a user meets them: the installed `customers-registry serve`
(tests/installed.py: a fresh venv, an environment of PATH, HOME and the settings named),
alone and behind the shipped nginx. What a client sends (a made-up method, a key in the
query, the path, a header, bytes meant to forge a line) adds no metric series, shows no
key in any line of any process's log, in either format, and cannot forge a line."""

from __future__ import annotations

import json
import random
import re
import string
import time
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.servers import Nginx
from tests.support import request
from tests.test_operating import count, scrape

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="the installed commands, once")

API_KEY = "users-key-Zq8Xw2Lr5Tn7Vb4Mc1Hd"  # the API_KEY setting, as a user sets it
CLIENT = "127.0.0.5"
TEXT_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def minted_key(installed, env, tmp_path) -> str:
    made = installed.run(
        "customers-registry", "keys", "create", "--org", "acme", env=env, cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    [key] = re.findall(r"lk_[A-Za-z0-9_-]{43}", made.stdout)
    return key


def careless_requests(port: int, keys: list[str], host: str = "127.0.0.1") -> list[str]:
    """A key in each place a careless (or hostile) client puts one; returns the request
    ids the answers carried."""
    ids = []
    for key in keys:
        auth = {"Authorization": f"Bearer {key}"}
        for method, path, headers in [
            ("GET", f"/api/v1/customers?q={key}&page=1", auth),
            ("GET", f"/api/v1/customers?api_key={key}", auth),
            ("GET", f"/api/v1/customers/{key}", auth),
            ("GET", f"/api/v1/customers/prefix{key}suffix", auth),
            ("GET", "/health", {"User-Agent": f"curl/8 {key}"}),
            ("GET", "/health", {"X-Request-Id": key}),
            ("GET", "/health", {"X-Request-Id": f"id-{key}-1"}),
            ("POST", f"/api/v1/customers?api_key={key}", {**auth, "X-Request-Id": key}),
        ]:
            body = {"customer": {"customer_id": "c-1", "name": "C"}} if method == "POST" else None
            reply = request(port, method, path, body, headers, host=host, source=CLIENT)
            assert reply.status in (200, 404), (path, reply.status)
            ids.append(reply.headers["X-Request-Id"])
    return ids


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_key_in_any_line_of_serve(installed, tmp_path, log_format):
    env = installed.env(tmp_path / "home", API_KEY=API_KEY, LOG_FORMAT=log_format)
    key = minted_key(installed, env, tmp_path)
    with installed.serve(tmp_path, env, workers=1) as served:
        ids = careless_requests(served.port, [API_KEY, key])
        time.sleep(0.2)  # the last access line
        text = served.log_text()
    assert not any(API_KEY in i or key in i for i in ids)  # never taken as the request id
    assert API_KEY not in text and key not in text
    lines = text.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line is one object
        access = [r for r in records if "status" in r]
        assert len(access) >= 16
        paths = {r["path"] for r in access}
        assert "/api/v1/customers/[redacted]" in paths
        assert "/api/v1/customers/prefix[redacted]suffix" in paths
        assert {r["query"] for r in access} >= {"q=[redacted]&page=1", "api_key=[redacted]"}
        assert "curl/8 [redacted]" in {r["user_agent"] for r in access}
    else:
        assert [line for line in lines if not TEXT_STAMP.match(line)] == []
        assert '"GET /api/v1/customers?q=[redacted]&page=1"' in text
        assert '"curl/8 [redacted]"' in text


def test_text_lines_cannot_be_forged(installed, tmp_path):
    env = installed.env(tmp_path / "home", API_KEY=API_KEY)
    forged = "2026-01-01 00:00:00,000 ERROR forged line"
    with installed.serve(tmp_path, env, workers=1) as served:
        path = "/api/v1/customers/x%0A" + forged.replace(" ", "%20") + "%0D%1B[2J%C2%85%E2%80%A8"
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "User-Agent": 'agent" 200 0 forged \\',  # gunicorn refuses control bytes here
            "X-Request-Id": "forge-1",
        }
        assert request(served.port, "GET", path, headers=headers).status == 404
        time.sleep(0.2)
        text = served.log_text()
    [line] = [line for line in text.split("\n") if "request_id=forge-1" in line]
    assert TEXT_STAMP.match(line)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", line)
    assert "/api/v1/customers/x\\x0a2026-01-01 00:00:00,000 ERROR forged line" in line
    assert "\\x0d\\x1b[2J\\x85\\u2028" in line
    assert line.endswith('"agent\\x22 200 0 forged \\x5c"')
    assert [ln for ln in text.split("\n") if ln and not TEXT_STAMP.match(ln)] == []
    assert forged not in [TEXT_STAMP.sub("", ln, count=1) for ln in text.split("\n")]


def test_made_up_methods_add_no_series(installed, tmp_path):
    env = installed.env(tmp_path / "home", API_KEY=API_KEY)  # serve picks the metrics folder
    rng = random.Random(19)
    paths = ["/health", "/api/v1/customers", "/api/v1/customers/c", "/x"]
    with installed.serve(tmp_path, env, workers=2) as served:

        def made_up(path: str) -> None:
            method = "".join(rng.choices(string.ascii_uppercase, k=12))
            assert served.request(method, path).status in (401, 404, 405)

        for path in paths:  # the series of an unknown method on each route exist now
            made_up(path)
        scrape(served.port)  # and those of /metrics
        before = scrape(served.port)
        for _ in range(300):
            made_up(rng.choice(paths))
        after = scrape(served.port)
    assert set(after) == set(before)  # the same series, counted further
    other = "customers_http_requests_total"
    assert count(after, other, method="other") - count(before, other, method="other") == 300
    methods = {dict(labels).get("method") for (_, labels) in after}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def nginx_files(nginx: Nginx) -> str:
    return "".join(p.read_text(errors="replace") for p in Path(nginx.prefix).glob("*.log"))


def test_no_key_in_nginx_logs_nor_behind_it(installed, tmp_path):
    env = installed.env(tmp_path / "home", API_KEY=API_KEY, TRUST_PROXY="1")
    key = minted_key(installed, env, tmp_path)
    big = b'{"customer": {"customer_id": "big", "name": "' + b"x" * 70_000 + b'"}}'
    with installed.serve(tmp_path, env, workers=1) as served, Nginx(served.port) as nginx:
        ids = careless_requests(nginx.port, [API_KEY, key], host=nginx.host)
        for secret in (API_KEY, key):
            for path in (f"/api/v1/customers?api_key={secret}", f"/api/v1/customers/{secret}"):
                headers = {"Content-Type": "application/json", "User-Agent": secret}
                reply = request(nginx.port, "POST", path, big, headers, host=nginx.host)
                assert reply.status == 413  # refused by nginx itself
        served.stop()
        for secret in (API_KEY, key):
            for path in (f"/api/v1/customers?q={secret}", f"/api/v1/customers/{secret}"):
                headers = {"User-Agent": secret, "X-Request-Id": secret}
                reply = request(nginx.port, "GET", path, headers=headers, host=nginx.host)
                assert reply.status == 502
                assert secret not in reply.headers["X-Request-Id"] or secret == API_KEY
        time.sleep(0.3)
        logs = nginx_files(nginx)
        app_log = served.log_text()
    assert not any(API_KEY in i or key in i for i in ids)
    assert key not in logs and key not in app_log and API_KEY not in app_log
    assert API_KEY not in logs.replace(f"request_id={API_KEY} ", "")  # see the README
    assert "upstream_status=502" in logs  # what the error log's line said, in short
