"""The double's faults and request log, over real HTTP, against the running command
(`double.py`, what `customers-double` runs): every row of the fault table, every 422,
dropped connections that get no bytes at all, writes that commit with no answer, a
request log that never holds a key and stays bounded in memory, and state kept across
restarts with --database."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import REPO, Reply, request
from tests.test_double import run_recipe_tests
from tests.test_fuzz import fuzz
from tests.test_verify import edge_json, edge_text

pytestmark = pytest.mark.sqlite_only  # the double runs on its own SQLite file

KEY = "fault-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CUSTOMER = {"customer": {"customer_id": "cus-1", "name": "Acme"}}


class Command:
    """`double.py` as a process: its port, and its memory."""

    def __init__(self, tmp: Path, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "double.py"), "--api-key", KEY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "TMPDIR": str(tmp)},
            text=True,
        )
        self.url = self.process.stdout.readline().strip()
        assert self.url, self.process.stderr.read()
        self.port = int(self.url.rsplit(":", 1)[1])

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Its resident memory now, or at its peak so far (VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(15)
        self.process.stdout.close()
        self.process.stderr.close()
        return code


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    running = Command(tmp_path_factory.mktemp("double"))
    yield running
    assert running.stop() == 0


@pytest.fixture
def port(command) -> int:
    assert request(command.port, "POST", "/_double/reset").status == 200
    return command.port


def add_fault(port: int, **definition) -> Reply:
    return request(port, "POST", "/_double/faults", {"fault": definition})


def fault(port: int, **definition) -> dict:
    reply = add_fault(port, **definition)
    assert reply.status == 201, reply.body
    return reply.json()["fault"]


def upsert(port: int, customer_id: str = "cus-1", timeout: float = 30) -> Reply:
    body = {"customer": {"customer_id": customer_id, "name": "Acme"}}
    return request(port, "POST", "/api/v1/customers", body, AUTH, timeout=timeout)


def get(port: int, customer_id: str = "cus-1") -> Reply:
    return request(port, "GET", f"/api/v1/customers/{customer_id}", headers=AUTH)


def recorded(port: int) -> list[dict]:
    return request(port, "GET", "/_double/requests").json()["requests"]


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send one request as bytes; everything the double sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def raw_upsert(customer_id: str) -> bytes:
    body = json.dumps({"customer": {"customer_id": customer_id, "name": "Acme"}}).encode()
    return (
        b"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


# --- Registering ------------------------------------------------------------------------


def test_a_fault_is_answered_with_every_key_and_its_defaults(port):
    reply = add_fault(port, status=503)
    assert reply.status == 201
    registered = reply.json()["fault"]
    assert re.fullmatch(r"[0-9a-f]{12}", registered.pop("id"))
    assert registered == {
        "method": None,
        "path": None,
        "status": 503,
        "headers": {},
        "delay_ms": 0,
        "action": None,
        "times": 1,
        "remaining": 1,
    }


def test_every_bad_key_is_reported_at_once(port):
    reply = add_fault(
        port,
        status=600,
        action="drop",
        delay_ms=-1,
        times=0,
        headers={"Retry-After": 2},
        method="GET /",
        path="/_double/requests",
        colour="red",
    )
    assert reply.status == 422
    assert reply.json() == {
        "status": 422,
        "error": "Unprocessable entity",
        "message": "Validation error on the record",
        "error_details": {
            key: ["value_is_invalid"]
            for key in (
                "status",
                "action",
                "delay_ms",
                "times",
                "headers",
                "method",
                "path",
                "colour",
            )
        },
    }
    assert request(port, "GET", "/_double/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    "definition, key",
    [
        ({"status": 399}, "status"),
        ({"status": "503"}, "status"),
        ({"status": True}, "status"),
        ({"status": 503, "action": "drop"}, "action"),
        ({"action": "explode"}, "action"),
        ({"delay_ms": 60_001}, "delay_ms"),
        ({"delay_ms": 1.5}, "delay_ms"),
        ({"times": -1}, "times"),
        ({"times": "always"}, "times"),
        ({"headers": ["Retry-After", "2"]}, "headers"),
        ({"headers": {"Bad\nName": "x"}}, "headers"),
        ({"headers": {"X-A": "line\r\nbreak"}}, "headers"),
        ({"headers": {"X-A": "vertical\x0btab"}}, "headers"),
        ({"headers": {"X-A": "delete\x7f"}}, "headers"),
        ({"headers": {"X-A": "nul\x00"}}, "headers"),
        *(
            ({"headers": {name: "x"}}, "headers")
            for name in (
                "Content-Length",
                "transfer-encoding",
                "Connection",
                "Keep-Alive",
                "Proxy-Authenticate",
                "Proxy-Connection",
                "TE",
                "Trailer",
                "Upgrade",
            )
        ),
        ({"method": 7}, "method"),
        ({"path": "api/v1/customers"}, "path"),
        ({"path": "/_double/reset"}, "path"),
    ],
)
def test_a_bad_definition_is_422_keyed_by_the_key(port, definition, key):
    reply = add_fault(port, **definition)
    assert (reply.status, reply.json()["error_details"]) == (422, {key: ["value_is_invalid"]})


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json", "The body is not strict JSON (RFC 8259, UTF-8)"),
        (b'{"status": 503}', 'The body must be {"fault": {...}}'),
        (b'{"fault": [503]}', "fault must be a JSON object"),
    ],
)
def test_a_malformed_registration_is_400(port, body, message):
    reply = request(port, "POST", "/_double/faults", body, {"Content-Type": "application/json"})
    assert (reply.status, reply.json()) == (
        400,
        {"status": 400, "error": "Bad Request", "message": message},
    )


def test_a_lone_surrogate_is_answered_as_json_escapes_never_a_500(port):
    """JSON spells a lone surrogate (`\\ud800`), which UTF-8 cannot carry: refused or
    kept, it is written back as JSON's escape, and the listing still answers."""
    headers = {"Content-Type": "application/json"}
    body = b'{"fault": {"status": 500, "\\udfff": 1}}'
    reply = request(port, "POST", "/_double/faults", body, headers)
    assert (reply.status, reply.json()["error_details"]) == (422, {"\udfff": ["value_is_invalid"]})
    assert b'"\\udfff"' in reply.body
    body = b'{"fault": {"path": "/\\ud800", "status": 500}}'
    assert request(port, "POST", "/_double/faults", body, headers).status == 201
    listing = request(port, "GET", "/_double/faults")
    assert listing.status == 200
    [listed] = listing.json()["faults"]
    assert listed["path"] == "/\ud800"
    listing.body.decode("utf-8")  # strict UTF-8 all through


FAULT_KEYS = ["method", "path", "status", "headers", "delay_ms", "action", "times"]


@fuzz
@given(definition=st.dictionaries(st.sampled_from(FAULT_KEYS) | edge_text, edge_json, max_size=5))
def test_any_fault_definition_is_answered_and_listed_never_a_500(port, definition):
    request(port, "DELETE", "/_double/faults")
    reply = add_fault(port, **definition)
    assert reply.status in (201, 400, 422), reply.body
    listing = request(port, "GET", "/_double/faults")
    assert listing.status == 200
    listing.body.decode("utf-8")  # strict UTF-8
    assert len(listing.json()["faults"]) == (reply.status == 201)


# --- What a fault does ----------------------------------------------------------------------


def test_status_answers_the_envelope_with_its_headers_and_writes_nothing(port):
    registered = fault(port, status=503, headers={"Retry-After": "2"})
    reply = upsert(port)
    assert (reply.status, reply.json()) == (503, {"status": 503, "error": "Service Unavailable"})
    assert reply.headers["Retry-After"] == "2"
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Request-Id"]
    assert get(port).status == 404  # nothing was written
    [posted, read] = recorded(port)
    assert (posted["status"], posted["fault"]) == (503, registered["id"])
    assert posted["response"] == {"status": 503, "error": "Service Unavailable"}
    assert (read["status"], read["fault"]) == (404, None)


def test_status_faults_use_the_contracts_titles(port):
    for status, title in [
        (422, "Unprocessable entity"),
        (429, "Too Many Requests"),
        (500, "Internal Server Error"),
    ]:
        fault(port, status=status)
        assert upsert(port).json() == {"status": status, "error": title}
    fault(port, status=400)
    assert upsert(port).json()["message"]


def test_times_counts_down_and_a_used_up_fault_stays_listed(port):
    registered = fault(port, status=500, times=2)
    assert registered["remaining"] == 2
    assert [upsert(port).status for _ in range(3)] == [500, 500, 200]
    [listed] = request(port, "GET", "/_double/faults").json()["faults"]
    assert (listed["id"], listed["times"], listed["remaining"]) == (registered["id"], 2, 0)


def test_times_null_applies_until_removed(port):
    registered = fault(port, status=502, times=None)
    assert (registered["times"], registered["remaining"]) == (None, None)
    assert [upsert(port).status for _ in range(5)] == [502] * 5
    assert request(port, "DELETE", "/_double/faults").json() == {"faults": []}
    assert upsert(port).status == 200


def test_faults_match_method_and_decoded_path(port):
    assert upsert(port, "cus 1/é").status == 200
    fault(port, method="get", path="/api/v1/customers/cus 1/é", status=418, times=None)
    assert request(port, "DELETE", "/api/v1/customers/cus%201%2F%C3%A9", headers=AUTH).status == 200
    assert get(port, "cus%201%2F%C3%A9").status == 418
    assert get(port, "other").status == 404


def test_without_a_path_any_api_path_but_not_health_or_control_routes(port):
    fault(port, status=503, times=None)
    assert request(port, "GET", "/health").status == 200
    assert request(port, "GET", "/_double/faults").status == 200
    assert request(port, "GET", "/api/v1/nowhere").status == 503
    assert get(port).status == 503
    request(port, "DELETE", "/_double/faults")
    fault(port, path="/health", status=503)
    assert request(port, "GET", "/health").status == 503


def test_the_first_registered_applies_first(port):
    first = fault(port, status=500)
    second = fault(port, status=503)
    assert [upsert(port).status for _ in range(3)] == [500, 503, 200]
    assert [r["fault"] for r in recorded(port)] == [first["id"], second["id"], None]


def test_delay_alone_then_runs_the_request(port):
    fault(port, delay_ms=300)
    began = time.monotonic()
    reply = upsert(port)
    assert time.monotonic() - began >= 0.3
    assert reply.status == 200 and get(port).status == 200


def test_a_fault_header_may_hold_a_tab_and_replace_the_content_type(port):
    fault(
        port, status=503, headers={"Retry-After": "2", "X-Note": "a\tb", "content-type": "text/x"}
    )
    reply = upsert(port)
    assert (reply.status, reply.headers["X-Note"], reply.headers["content-type"]) == (
        503,
        "a\tb",
        "text/x",
    )
    assert "Content-Type" not in reply.headers  # one Content-Type: the fault's


def test_a_reset_wakes_a_delayed_request_at_once(port):
    fault(port, delay_ms=20_000)
    outcome: dict = {}

    def client() -> None:
        began = time.monotonic()
        try:
            outcome["reply"] = upsert(port)
        except ConnectionError as exc:  # RemoteDisconnected: closed with no answer
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - began

    thread = threading.Thread(target=client)
    thread.start()
    while request(port, "GET", "/_double/faults").json()["faults"][0]["remaining"]:
        time.sleep(0.01)  # until the request has taken the fault and waits
    assert request(port, "POST", "/_double/reset").status == 200
    thread.join(30)
    assert "reply" not in outcome and isinstance(outcome["error"], ConnectionError)
    assert outcome["took"] < 5  # not the 20 s of the delay
    assert get(port).status == 404  # it never ran
    assert [r["path"] for r in recorded(port)] == ["/api/v1/customers/cus-1"]  # that GET alone


def test_delay_makes_a_client_time_out(port):
    fault(port, delay_ms=2000, status=504)
    with pytest.raises(TimeoutError):
        upsert(port, timeout=0.2)


def test_drop_closes_with_no_bytes_and_writes_nothing(port):
    registered = fault(port, action="drop")
    assert raw_exchange(port, raw_upsert("dropped")) == b""
    assert get(port, "dropped").status == 404
    entry = recorded(port)[0]
    assert (entry["status"], entry["response"], entry["fault"]) == (None, None, registered["id"])
    assert entry["body"]["customer"]["customer_id"] == "dropped"


def test_drop_after_write_commits_and_sends_no_bytes(port):
    fault(port, action="drop_after_write")
    assert raw_exchange(port, raw_upsert("written")) == b""
    stored = get(port, "written")
    assert stored.status == 200
    assert (recorded(port)[0]["status"], recorded(port)[0]["response"]) == (None, None)


def test_reset_forgets_faults(port):
    fault(port, status=503, times=None)
    assert request(port, "POST", "/_double/reset").status == 200
    assert request(port, "GET", "/_double/faults").json() == {"faults": []}
    assert upsert(port).status == 200


# --- The request log ------------------------------------------------------------------------


def test_keys_are_never_recorded_wherever_they_were_put(port):
    minted = "lk_" + "A" * 43
    body = {"customer": {"customer_id": "k", "name": f"{KEY} and {minted}"}}
    request(port, "POST", f"/api/v1/customers?api_key={KEY}&token=abc&page=2", body, AUTH)
    request(port, "GET", f"/api/v1/customers/{minted}", headers={"Authorization": "Bearer wrong-1"})
    request(port, "GET", "/api/v1/customers?access_token=wrong-2", headers=AUTH)
    text = json.dumps(recorded(port))
    for secret in (KEY, minted, "abc", "wrong-1", "wrong-2"):
        assert secret not in text, secret
    first = recorded(port)[0]
    assert first["query"] == "api_key=[redacted]&token=[redacted]&page=2"
    assert first["body"]["customer"]["name"] == "[redacted] and [redacted]"


def test_a_key_spelt_with_json_escapes_is_not_recorded_either(port):
    """JSON may spell any character as an escape (PHP writes `/` as `\\/`, ensure_ascii
    writes `é` as `\\u00e9`): a body holding a key so spelt is recorded with it hidden."""
    minted = "lk_" + "B" * 43
    spelt = "".join(f"\\u{ord(c):04x}" for c in KEY)  # every character escaped
    body = (
        f'{{"customer": {{"customer_id": "k", "name": "{spelt}",'
        f' "note": "lk\\u005f{minted[3:]}"}}}}'
    ).encode()
    sent = {**AUTH, "Content-Type": "application/json"}
    assert request(port, "POST", "/api/v1/customers", body, sent).status == 200
    [entry] = recorded(port)
    hidden = {"customer_id": "k", "name": "[redacted]", "note": "[redacted]"}
    assert entry["body"]["customer"] == hidden
    assert KEY not in json.dumps(entry, ensure_ascii=False) and minted[3:] not in str(entry)
    status, answer = verify_json(port, {"customer": {"customer_id": "k"}})
    assert (status, answer["matches"][0]["body"]["customer"]) == (200, hidden)


def verify_json(port: int, wanted: dict) -> tuple[int, dict]:
    reply = request(port, "POST", "/_double/verify", {"json": wanted})
    return reply.status, reply.json()


def test_long_bodies_are_kept_cut_short_and_marked(port):
    padding = "p" * 20_000
    body = {"customer": {"customer_id": "long", "name": "Long", "pad": padding}}
    assert request(port, "POST", "/api/v1/customers", body, AUTH).status == 200
    upsert(port, "short")
    long_entry, short_entry = recorded(port)
    assert long_entry["body_truncated"] is True
    assert isinstance(long_entry["body"], str) and len(long_entry["body"].encode()) == 16 * 1024
    assert short_entry["body_truncated"] is False and isinstance(short_entry["body"], dict)


def test_memory_stays_bounded_whatever_is_sent(command, port, capsys):
    body = b"[" + b",".join([b"{}"] * 21_845) + b"]"  # 64 KiB of empty objects
    assert len(body) == 65_536
    before = command.rss_mb()
    for n in range(300):
        reply = request(port, "POST", f"/anywhere/{n}", body, {"Content-Type": "application/json"})
        assert reply.status == 404
    listed = request(port, "GET", "/_double/requests")
    assert len(listed.json()["requests"]) == 300
    after = command.rss_mb()
    with capsys.disabled():
        print(f"\n  double RSS: {before:.0f} MB before, {after:.0f} MB after 300 x 64 KiB bodies")
    assert after < 200


def test_memory_stays_under_200_mb_whatever_each_field_holds(tmp_path, capsys):
    """The flood of issue 19: 600 requests, each with a 60 KB path, a 64 KiB body, a long
    header, and a one-character key that stands alone everywhere (so redacting it would
    grow every field tenfold), then the whole log listed and verified. A double of its own,
    so that its peak (VmHWM) is this flood's."""
    flooded = Command(tmp_path)
    try:
        path = "/" + "a/" * 30_000  # 60,001 characters
        body = b"a " * 32_768  # 64 KiB, the most the double takes
        headers = {"Authorization": "Bearer a", "X-Pad": "a " * 4_000}
        threads = [
            threading.Thread(
                target=lambda: [
                    request(flooded.port, "POST", path, body, headers) for _ in range(150)
                ]
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        listed = request(flooded.port, "GET", "/_double/requests")
        assert listed.headers.get("Transfer-Encoding") == "chunked"  # streamed, not built
        records = listed.json()["requests"]
        verified = request(flooded.port, "POST", "/_double/verify", {"path": "/{x}"})
        peak = flooded.rss_mb("VmHWM")
    finally:
        assert flooded.stop() == 0
    assert len(records) == 600 and verified.status == 422
    record = records[-1]
    assert (record["status"], record["path_truncated"], len(record["path"])) == (404, True, 2048)
    assert record["path"].startswith("/[redacted]/[redacted]/")
    assert record["body_truncated"] and len(record["body"].encode()) == 16 * 1024
    assert record["headers"]["Authorization"] == "Bearer [redacted]"
    assert record["headers_truncated"] and sum(map(len, record["headers"].items())) <= 4096
    with capsys.disabled():
        print(f"\n  double peak RSS: {peak:.0f} MB after 600 flooding requests, listed")
    assert peak < 200


def test_memory_stays_under_200_mb_ranking_near_misses_of_1000_json_bodies(tmp_path, capsys):
    """1,000 recorded bodies of 1,150 JSON leaves each (15 KB, kept as JSON), and a
    verification whose 1,150 wanted leaves each differ in every one of them: only the 5
    closest requests' differences are kept while ranking, not 1,150,000."""
    flooded = Command(tmp_path)
    try:
        leaves = {f"f{n}": n for n in range(1_150)}
        body = json.dumps({"customer": {"customer_id": "c-1", "name": "A"}, "k": leaves})
        sent = {**AUTH, "Content-Type": "application/json"}
        threads = [
            threading.Thread(
                target=lambda: [
                    request(flooded.port, "POST", "/api/v1/customers", body.encode(), sent)
                    for _ in range(250)
                ]
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wanted = {"k": {name: -1 for name in leaves}}
        verified = request(flooded.port, "POST", "/_double/verify", {"json": wanted})
        peak = flooded.rss_mb("VmHWM")
    finally:
        assert flooded.stop() == 0
    answer = verified.json()
    assert (verified.status, answer["recorded"], len(answer["near_misses"])) == (422, 1000, 5)
    assert len(answer["near_misses"][0]["differences"]) == 1_150
    assert answer["near_misses"][0]["request"]["id"] == 1000  # the newer first among equals
    with capsys.disabled():
        print(f"\n  double peak RSS: {peak:.0f} MB ranking 1,000 near misses of 1,150 leaves")
    assert peak < 200


def test_a_short_key_is_redacted_only_where_it_stands_alone(port):
    body = {"customer": {"customer_id": "a", "name": "Acme a-b", "city": "Ka"}}
    request(port, "POST", "/api/v1/customers?q=a&banana=1", body, {"Authorization": "Bearer a"})
    [entry] = recorded(port)
    assert entry["body"] == {
        "customer": {"customer_id": "[redacted]", "name": "Acme [redacted]-b", "city": "Ka"}
    }
    assert entry["query"] == "q=[redacted]&banana=1"


# --- State across restarts ------------------------------------------------------------------


def test_database_option_keeps_state_across_restarts(tmp_path):
    database = tmp_path / "state.db"
    first = Command(tmp_path, "--database", str(database))
    try:
        created = upsert(first.port, "kept").json()["customer"]
    finally:
        assert first.stop() == 0
    assert database.exists()
    second = Command(tmp_path, "--database", str(database))
    try:
        assert get(second.port, "kept").json()["customer"] == created
    finally:
        assert second.stop() == 0
    assert database.exists()


# --- The README's failure recipes, run as written -------------------------------------------


def test_readme_failure_recipes(tmp_path):
    run_recipe_tests(tmp_path, "failures", passed=4)
