"""Operating it: metrics summed over gunicorn's workers, log lines people and pipelines can
read (a timestamp on each; one JSON object each with LOG_FORMAT=json), and no key in any
line, gunicorn's, the app's or nginx's, whatever the caller did with it."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import app as app_module
from tests.conftest import API_KEY, auth
from tests.servers import Nginx
from tests.support import Gunicorn, free_port, request

MINTED_LOOKING = "lk_" + "Q" * 43
SAMPLE = re.compile(r"^(\w+)\{(.*)\} ([0-9.e+]+)$")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    reply = request(port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for line in reply.body.decode().splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1).startswith("customers_"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def count(samples: dict, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_metrics_are_summed_over_the_workers(tmp_path, database_url):
    metrics_dir = tmp_path / "metrics"
    env = {
        "DATABASE_URL": database_url,
        "API_KEY": API_KEY,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with Gunicorn(env, workers=2, log_path=tmp_path / "g.log") as server:

        def upsert(n: int) -> int:
            body = {"customer": {"customer_id": f"metered/{n}", "name": "M"}}
            return request(server.port, "POST", "/api/v1/customers", body, auth()).status

        def writers() -> set[str]:
            return {p.name.split("_")[-1] for p in metrics_dir.glob("counter_*.db")}

        # Upserts in batches of 40 from 8 connections until both workers have served
        # some (the kernel hands connections to whichever worker accepts first), at most
        # 25 batches; every one is counted.
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while sent == 0 or (len(writers()) < 2 and sent < 1000):
                assert list(pool.map(upsert, range(sent, sent + 40))) == [200] * 40
                sent += 40
        assert len(writers()) == 2, writers()
        for n in range(5):
            reply = request(server.port, "GET", f"/api/v1/customers/metered%2F{n}", headers=auth())
            assert reply.status == 200
        for _ in range(3):
            assert (
                request(server.port, "GET", "/api/v1/customers", headers=auth("nope")).status == 401
            )
        assert request(server.port, "GET", "/no/such/route").status == 404
        samples = scrape(server.port)

    total = "customers_http_requests_total"
    assert count(samples, total, method="POST", route="/api/v1/customers", status="200") == sent
    one = "/api/v1/customers/<customer_id>"
    assert count(samples, total, method="GET", route=one, status="200") == 5
    assert count(samples, total, method="GET", route="/api/v1/customers", status="401") == 3
    assert count(samples, total, method="GET", route="unmatched", status="404") == 1
    histogram = "customers_http_request_duration_seconds_count"
    assert count(samples, histogram, method="POST", route="/api/v1/customers") == sent
    routes = {dict(labels).get("route") for (_, labels) in samples}
    assert not any("metered" in route for route in routes if route)  # never a customer_id


def test_nginx_does_not_serve_the_metrics(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "TRUST_PROXY": "1"}
    with Gunicorn(env, workers=1, log_path=tmp_path / "g.log") as gunicorn:
        with Nginx(gunicorn.port) as nginx:
            reply = request(nginx.port, "GET", "/metrics", host=nginx.host)
            assert (reply.status, reply.json()) == (404, {"status": 404, "error": "Not Found"})
            assert request(gunicorn.port, "GET", "/metrics").status == 200


def leaky_requests(port: int, minted_key: str) -> None:
    """What careless callers do with keys: put them in the query string, send unknown
    ones, send bad bodies. None of it may reach a log."""
    request(port, "GET", f"/api/v1/customers?api_key={API_KEY}&page=1", headers=auth())
    request(port, "GET", f"/api/v1/customers?token={minted_key}", headers=auth())
    request(port, "GET", f"/api/v1/customers/{minted_key}", headers=auth(minted_key))
    request(port, "POST", "/api/v1/customers", b"{", {**auth(), "Content-Type": "application/json"})
    request(port, "GET", "/health", headers={"User-Agent": f"curl {minted_key}"})


def test_text_logs_have_a_timestamp_on_every_line_and_no_key(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "LOG_LEVEL": "DEBUG"}
    with Gunicorn(env, workers=2, log_path=tmp_path / "g.log") as server:
        leaky_requests(server.port, MINTED_LOOKING)
    text = (tmp_path / "g.log").read_text()
    lines = text.splitlines()
    assert len(lines) > 10
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert [line for line in lines if not stamp.match(line)] == []
    assert API_KEY not in text and MINTED_LOOKING not in text
    assert "api_key=[redacted]&page=1" in text
    assert f"customers-registry {app_module.__version__} starting:" in text


def test_json_logs_are_one_object_a_line_access_log_included(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "LOG_FORMAT": "json"}
    with Gunicorn(env, workers=2, log_path=tmp_path / "g.log") as server:
        leaky_requests(server.port, MINTED_LOOKING)
        created = request(
            server.port,
            "POST",
            "/api/v1/customers",
            {"customer": {"customer_id": "j", "name": "J"}},
            {**auth(), "X-Request-Id": "json-1"},
        )
        assert created.status == 200
    text = (tmp_path / "g.log").read_text()
    assert API_KEY not in text and MINTED_LOOKING not in text
    records = [json.loads(line) for line in text.splitlines()]  # every line parses
    assert all({"time", "level", "request_id", "message"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", r["time"]) for r in records)
    [access] = [r for r in records if r.get("request_id") == "json-1" and "status" in r]
    assert (access["method"], access["path"], access["status"]) == (
        "POST",
        "/api/v1/customers",
        200,
    )
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] > 0
    [bad] = [r for r in records if r["message"].startswith("bad request:")]
    assert bad["level"] == "INFO" and re.fullmatch(r"[0-9a-f]{32}", bad["request_id"])
    [start] = [r for r in records if "starting:" in r["message"]]
    assert app_module.__version__ in start["message"]


def test_a_bad_log_format_stops_the_start_in_one_line(tmp_path, database_url):
    with pytest.raises(ValueError, match="LOG_FORMAT='xml' is not text or json"):
        app_module.Settings.from_mapping({"LOG_FORMAT": "xml"})


def test_nginx_access_log_leaves_the_query_string_out(tmp_path, database_url):
    env = {"DATABASE_URL": database_url, "API_KEY": API_KEY, "TRUST_PROXY": "1"}
    with Gunicorn(env, workers=1, log_path=tmp_path / "g.log") as gunicorn:
        with Nginx(gunicorn.port) as nginx:
            path = f"/api/v1/customers?api_key={API_KEY}"
            headers = {**auth(), "X-Request-Id": "nginx-log-1"}
            assert request(nginx.port, "GET", path, headers=headers, host=nginx.host).status == 200
            deadline = time.monotonic() + 5
            lines: list[str] = []
            while not lines and time.monotonic() < deadline:
                text = (nginx.prefix / "customers.access.log").read_text()
                lines = [line for line in text.splitlines() if "request_id=nginx-log-1" in line]
                time.sleep(0.05)
    [line] = lines
    assert '"GET /api/v1/customers HTTP/1.1" 200' in line
    assert API_KEY not in text


def test_copy_to_an_unreachable_database_says_so_in_one_line(app):
    target = f"postgresql://customers:s3cret-pw@127.0.0.1:{free_port()}/customers"
    result = app.test_cli_runner().invoke(args=["copy-to", target])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: cannot reach postgresql://customers:***@127.0.0.1:")
    assert "Connection refused" in lines[0] and "s3cret-pw" not in result.output


@pytest.mark.sqlite_only
def test_backup_onto_an_existing_file_says_it_exists(app, tmp_path):
    existing = tmp_path / "taken.db"
    existing.write_bytes(b"keep me")
    result = app.test_cli_runner().invoke(args=["backup", str(existing)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {existing} exists already; name a new file"
    assert existing.read_bytes() == b"keep me"


def test_a_short_api_key_is_hidden_as_a_word_a_long_one_everywhere():
    import logs

    short = logs.Redactor(("test-key",))
    assert short.redact("/api/v1/customers/test-key?q=test-key") == (
        "/api/v1/customers/[redacted]?q=[redacted]"
    )
    assert short.redact("curl test-key") == "curl [redacted]"
    assert short.redact("latest-keys my-test-key-2") == "latest-keys my-test-key-2"
    one_letter = logs.Redactor(("a",))
    assert one_letter.redact("GET /health a") == "GET /health [redacted]"
    long_key = logs.Redactor((API_KEY,))
    assert long_key.redact(f"x{API_KEY}y") == "x[redacted]y"
    assert long_key.holds_key(f"id-{API_KEY}") and not long_key.holds_key("id-1")
    assert long_key.redact(MINTED_LOOKING + "z") == "[redacted]z"


def test_every_format_escapes_what_would_end_or_forge_a_line():
    import logging

    import logs

    record = logging.LogRecord(
        "customers", logging.INFO, __file__, 1, "%s", ("a\rb\x1bc\u2028d\x85e",), None
    )
    record.request_id = "-"
    text = logs.formatter("text").format(record)
    assert text.endswith("customers: a\\x0db\\x1bc\\u2028d\\x85e")
    line = logs.formatter("json").format(record)
    assert len(line.splitlines()) == 1 and json.loads(line)["message"] == "a\rb\x1bc\u2028d\x85e"
    record.args = ("first\nsecond",)
    first, second = logs.formatter("text").format(record).split("\n")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| second", second)
