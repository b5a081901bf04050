"""Verification: what a test can say about the requests its client made, through the
fixture (`assert_request_made`, `calls`, `wait_for_request`, strict teardown) and over
HTTP (`POST /_double/verify`), with the failure text a person reads when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import double
from tests.support import REPO, request
from tests.test_double import SEED, readme_recipe
from tests.test_fuzz import any_text, fuzz, json_value

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.sqlite_only  # the double runs on its own SQLite file


# What POST /_double/verify takes.
FIELDS = ["method", "path", "query", "headers", "json", "status", "count"]


def port_of(double) -> int:
    return int(double.url.rsplit(":", 1)[1])


def send(double, method: str, path: str, body=None, headers=None) -> int:
    """What a client under test does; `headers` None sends the double's own."""
    sent = double.headers if headers is None else headers
    return request(port_of(double), method, path, body, sent).status


def upsert(double, customer: dict, headers=None) -> int:
    return send(double, "POST", "/api/v1/customers", {"customer": customer}, headers)


def verify(double, **criteria):
    reply = request(port_of(double), "POST", "/_double/verify", criteria)
    return reply.status, reply.json()


def failure(call) -> str:
    with pytest.raises(AssertionError) as raised:
        call()
    return str(raised.value)


# --- Matching --------------------------------------------------------------------------


def test_json_is_a_subset_of_nested_objects(customers_double):
    upsert(customers_double, {"customer_id": "c-1", "name": "Acme", "city": "Lyon"})
    made = customers_double.assert_request_made
    [call] = made("POST", "/api/v1/customers", json={"customer": {"city": "Lyon"}})
    assert call.json == {"customer": {"customer_id": "c-1", "name": "Acme", "city": "Lyon"}}
    assert made(json={}) and made(json={"customer": {}})
    text = failure(lambda: made(json={"customer": {"city": "Paris", "name": "Acme"}}))
    assert 'json.customer.city: wanted "Paris", seen "Lyon"' in text
    assert "json.customer.name" not in text  # what matches is not listed


def test_lists_match_exactly(customers_double):
    upsert(customers_double, {"customer_id": "c-1", "name": "A", "tags": ["a", {"b": 1}]})
    made = customers_double.assert_request_made
    assert made(json={"customer": {"tags": ["a", {"b": 1}]}})
    for other in (["a"], [{"b": 1}, "a"], ["a", {}], ["a", {"b": 1}, "c"]):
        text = failure(lambda other=other: made(json={"customer": {"tags": other}}))
        assert f"json.customer.tags: wanted {json.dumps(other)}, seen" in text


def test_nulls_numbers_and_strings_are_told_apart(customers_double):
    upsert(customers_double, {"customer_id": "42", "name": "A", "city": None, "n": 1, "t": True})
    made = customers_double.assert_request_made
    assert made(json={"customer": {"customer_id": "42", "city": None, "n": 1.0, "t": True}})
    cases = [
        ({"customer_id": 42}, 'json.customer.customer_id: wanted 42, seen "42"'),
        ({"city": ""}, 'json.customer.city: wanted "", seen null'),
        ({"email": None}, "json.customer.email: missing (wanted null)"),
        ({"n": "1"}, 'json.customer.n: wanted "1", seen 1'),
        ({"n": True}, "json.customer.n: wanted true, seen 1"),
        ({"t": 1}, "json.customer.t: wanted 1, seen true"),
    ]
    for wanted, line in cases:
        assert line in failure(lambda w=wanted: made(json={"customer": w})), wanted


def test_path_patterns_take_one_decoded_segment(customers_double):
    for path in ("/api/v1/customers/cus-1", "/api/v1/customers/a%2Fb", "/api/v1/customers/a/b"):
        send(customers_double, "GET", path)
    pattern = customers_double.calls(path="/api/v1/customers/{customer_id}")
    assert [call.path for call in pattern] == ["/api/v1/customers/cus-1", "/api/v1/customers/a/b"]
    assert [call.id for call in pattern] == [1, 2]  # the encoded one: a%2Fb is one segment
    exact = customers_double.calls(path="/api/v1/customers/a/b")
    assert [call.id for call in exact] == [2, 3]  # the decoded path, however it was sent
    assert len(customers_double.calls(path="/api/v1/{what}/{customer_id}")) == 2
    assert len(customers_double.calls(path="/api/v1/customers")) == 0


def test_counts_are_exact_when_given(customers_double):
    for _ in range(2):
        upsert(customers_double, {"customer_id": "c-1", "name": "A"})
    made = customers_double.assert_request_made
    assert len(made("POST", count=2)) == 2
    made("DELETE", count=0)
    text = failure(lambda: made("POST", count=1))
    assert text.startswith(
        "2 recorded requests match, 1 wanted\nexpected: POST * count=1\nmatching (2):"
    )
    assert failure(lambda: made("POST", count=3)).startswith("2 recorded requests match, 3 wanted")
    assert failure(lambda: made("GET", count=1)).startswith("0 recorded requests match, 1 wanted")


def test_query_status_and_headers(customers_double):
    send(customers_double, "GET", "/api/v1/customers?page=2&per_page=5", headers={"X-Trace": "t"})
    made = customers_double.assert_request_made
    [call] = made(query={"page": "2"}, status=401, headers={"x-trace": "t", "Authorization": None})
    assert call.response_json == {"status": 401, "error": "Unauthorized"}
    assert made(query="page=2&per_page=5")
    text = failure(lambda: made(query={"page": "3", "sort": "name"}, status=200))
    assert 'query.page: wanted "3", seen "2"' in text
    assert 'query.sort: missing (wanted "name")' in text
    assert "status: wanted 200, seen 401" in text


def test_calls_are_objects_newest_last(customers_double):
    customers_double.fault(method="GET", status=503)
    upsert(customers_double, {"customer_id": "c-1", "name": "First"})
    send(customers_double, "GET", "/api/v1/customers/c-1")
    upsert(customers_double, {"customer_id": "c-1", "name": "Second"})
    calls = customers_double.calls(method="POST")
    assert len(calls) == 2
    assert [call.json["customer"]["name"] for call in calls] == ["First", "Second"]
    last = calls.last
    assert (last.method, last.path, last.status) == ("POST", "/api/v1/customers", 200)
    assert last.response_json["customer"]["name"] == "Second"
    assert last.fault is None and last.duration_ms >= 0
    [faulted] = customers_double.calls(method="GET")
    assert (faulted.status, faulted.fault) == (503, customers_double.faults()[0]["id"])
    none = customers_double.calls(method="PUT")
    assert len(none) == 0
    with pytest.raises(AssertionError, match="no matching request"):
        none.last  # noqa: B018


def test_keys_stay_redacted_and_another_key_is_told_apart(customers_double):
    key = customers_double.api_key
    wrong = {"Authorization": "Bearer wrong-one"}
    upsert(customers_double, {"customer_id": f"x-{key}", "name": "A"}, wrong)
    made = customers_double.assert_request_made
    text = failure(lambda: made(headers={"Authorization": f"Bearer {key}"}))
    assert key not in text and "wrong-one" not in text
    assert (
        'headers.Authorization: wanted "Bearer [redacted]", '
        'seen "Bearer [redacted] (another value)"'
    ) in text
    assert made(headers=wrong)
    status, answer = verify(customers_double, json={"customer": {"customer_id": key}})
    assert status == 422 and key not in json.dumps(answer)


def test_secret_parameters_and_headers_match_without_being_shown(customers_double):
    path = "/api/v1/customers?api_key=abc123&page=1"
    send(customers_double, "GET", path, headers={"X-Api-Key": "sekrit-1"})
    made = customers_double.assert_request_made
    [call] = made(query={"api_key": "any value", "page": "1"}, headers={"x-api-key": "sekrit-1"})
    assert (call.query, call.headers["X-Api-Key"]) == ("api_key=[redacted]&page=1", "[redacted]")
    text = failure(lambda: made(query={"page": "2"}, headers={"X-Api-Key": "sekrit-2"}))
    assert "sekrit" not in text and "abc123" not in text
    assert 'headers.X-Api-Key: wanted "[redacted]", seen "[redacted] (another value)"' in text


# --- Near misses ---------------------------------------------------------------------------


def test_near_misses_are_the_five_closest_closest_first(customers_double):
    send(customers_double, "GET", "/health")  # 1: far off
    upsert(customers_double, {"customer_id": "c-2", "name": "Wrong"})  # 2: one field off
    for n in range(3, 6):  # 3-5: both fields off
        upsert(customers_double, {"customer_id": f"c-{n}", "name": "Wrong"})
    send(customers_double, "GET", "/api/v1/customers")  # 6: wrong method, no body
    right = {"customer": {"customer_id": "c-2", "name": "Right"}}
    send(customers_double, "PUT", "/api/v1/customers", right)  # 7: only the method off
    status, answer = verify(customers_double, method="POST", path="/api/v1/customers", json=right)
    assert status == 422
    # The closest first; among equals, the newer first; 1 and 6 are left out.
    assert [miss["request"]["id"] for miss in answer["near_misses"]] == [2, 7, 5, 4, 3]
    assert answer["near_misses"][0]["differences"] == [
        {"field": "json.customer.name", "wanted": "Right", "seen": "Wrong"}
    ]
    assert answer["near_misses"][1]["differences"] == [
        {"field": "method", "wanted": "POST", "seen": "PUT"}
    ]
    assert (answer["recorded"], answer["matched"]) == (7, 0)


# The failure text of three typical client bugs, exactly as pytest prints it.


def test_snapshot_a_misspelled_field(customers_double):
    upsert(customers_double, {"customer_id": "cus-1", "nmae": "Acme"})
    text = failure(
        lambda: customers_double.assert_request_made(
            "POST", "/api/v1/customers", json={"customer": {"customer_id": "cus-1", "name": "Acme"}}
        )
    )
    assert text == SNAPSHOT_MISSPELLED


def test_snapshot_a_missing_authorization(customers_double):
    send(customers_double, "GET", "/api/v1/customers/cus-1", headers={})
    text = failure(
        lambda: customers_double.assert_request_made(
            "GET", "/api/v1/customers/{customer_id}", headers={"Authorization": "Bearer test-key"}
        )
    )
    assert text == SNAPSHOT_NO_AUTHORIZATION


def test_snapshot_a_wrong_customer_id(customers_double):
    upsert(customers_double, {"customer_id": "cus-1", "name": "Acme"})
    send(customers_double, "DELETE", "/api/v1/customers/cus-2")
    send(customers_double, "GET", "/api/v1/customers/cus-2")
    text = failure(
        lambda: customers_double.assert_request_made("DELETE", "/api/v1/customers/cus-1")
    )
    assert text == SNAPSHOT_WRONG_ID


SNAPSHOT_MISSPELLED = """\
No recorded request matches
expected: POST /api/v1/customers json={"customer": {"customer_id": "cus-1", "name": "Acme"}}
1 request recorded; the closest:
  #1 POST /api/v1/customers -> 422
      json.customer.name: missing (wanted "Acme")"""

SNAPSHOT_NO_AUTHORIZATION = """\
No recorded request matches
expected: GET /api/v1/customers/{customer_id} headers={"Authorization": "Bearer [redacted]"}
1 request recorded; the closest:
  #1 GET /api/v1/customers/cus-1 -> 401
      headers.Authorization: missing (wanted "Bearer [redacted]")"""

SNAPSHOT_WRONG_ID = """\
No recorded request matches
expected: DELETE /api/v1/customers/cus-1
3 requests recorded; the closest:
  #2 DELETE /api/v1/customers/cus-2 -> 404
      path: wanted "/api/v1/customers/cus-1", seen "/api/v1/customers/cus-2"
  #3 GET /api/v1/customers/cus-2 -> 404
      method: wanted "DELETE", seen "GET"
      path: wanted "/api/v1/customers/cus-1", seen "/api/v1/customers/cus-2"
  #1 POST /api/v1/customers -> 200
      method: wanted "DELETE", seen "POST"
      path: wanted "/api/v1/customers/cus-1", seen "/api/v1/customers\""""


# --- wait_for_request ----------------------------------------------------------------------


def test_wait_for_request_from_another_thread(customers_double):
    def client() -> None:
        time.sleep(0.3)
        upsert(customers_double, {"customer_id": "late", "name": "Late"})

    thread = threading.Thread(target=client)
    began = time.monotonic()
    thread.start()
    try:
        call = customers_double.wait_for_request("POST", json={"customer": {"customer_id": "late"}})
    finally:
        thread.join()
    assert time.monotonic() - began >= 0.3
    assert (call.status, call.json["customer"]["name"]) == (200, "Late")


def test_wait_for_request_fails_with_the_near_misses(customers_double):
    upsert(customers_double, {"customer_id": "early", "name": "Early"})
    began = time.monotonic()
    text = failure(lambda: customers_double.wait_for_request("DELETE", timeout=0.3))
    assert time.monotonic() - began >= 0.3
    assert text.startswith("No recorded request matches within 0.3 s\nexpected: DELETE *\n")
    assert '#1 POST /api/v1/customers -> 200\n      method: wanted "DELETE", seen "POST"' in text


# --- POST /_double/verify --------------------------------------------------------------------


def test_verify_route_answers_the_matches(customers_double):
    upsert(customers_double, {"customer_id": "c-1", "name": "A"})
    upsert(customers_double, {"customer_id": "c-2", "name": "B"})
    status, answer = verify(customers_double, method="post", json={"customer": {"name": "B"}})
    assert status == 200
    [match] = answer["matches"]
    assert (match["id"], match["method"], match["status"]) == (2, "POST", 200)
    assert match["body"] == {"customer": {"customer_id": "c-2", "name": "B"}}
    assert match["headers"]["Authorization"] == "Bearer [redacted]"
    assert isinstance(match["duration_ms"], float)
    status, answer = verify(customers_double, count=2, path="/api/v1/customers")
    assert (status, [m["id"] for m in answer["matches"]]) == (200, [1, 2])


def test_verify_route_answers_422_with_what_was_not_met(customers_double):
    upsert(customers_double, {"customer_id": "c-1", "name": "A"})
    status, answer = verify(customers_double, path="/nowhere", status=200)
    assert status == 422
    assert {key: answer[key] for key in ("status", "error", "message", "error_details")} == {
        "status": 422,
        "error": "Unprocessable entity",
        "message": "No recorded request matches",
        "error_details": {"path": ["not_met"], "count": ["not_met"]},
    }
    assert answer["wanted"] == {"path": "/nowhere", "status": 200}
    [miss] = answer["near_misses"]
    assert miss["differences"] == [
        {"field": "path", "wanted": "/nowhere", "seen": "/api/v1/customers"}
    ]


def test_verify_route_names_every_bad_field_at_once(customers_double):
    reply = request(
        port_of(customers_double),
        "POST",
        "/_double/verify",
        {
            "method": "GET /",
            "path": "/a/{x}/{x}",
            "query": {"page": 2},
            "headers": {"Bad Name": "x"},
            "status": "200",
            "count": -1,
            "colour": "red",
        },
    )
    assert (reply.status, reply.json()) == (
        422,
        {
            "status": 422,
            "error": "Unprocessable entity",
            "message": "Validation error on the record",
            "error_details": {
                key: ["value_is_invalid"]
                for key in ("colour", "method", "path", "query", "headers", "status", "count")
            },
        },
    )
    for body in (b"[]", b"not json"):
        reply = request(
            port_of(customers_double),
            "POST",
            "/_double/verify",
            body,
            {"Content-Type": "application/json"},
        )
        assert reply.status == 400
    with pytest.raises(ValueError, match="invalid verification arguments: path"):
        customers_double.assert_request_made(path="no-slash")


def test_lone_surrogates_are_verified_and_written_back_as_json_escapes(customers_double):
    """A client may send JSON's `\\ud800` (a lone surrogate, which UTF-8 cannot carry):
    it is recorded, matched and shown as that escape, never a 500."""
    port = port_of(customers_double)
    sent = {**customers_double.headers, "Content-Type": "application/json"}
    body = b'{"customer": {"customer_id": "c-1", "name": "A"}, "note": "\\ud800"}'
    assert request(port, "POST", "/api/v1/customers", body, sent).status == 200
    json_type = {"Content-Type": "application/json"}
    reply = request(port, "POST", "/_double/verify", b'{"json": {"note": "\\ud800"}}', json_type)
    assert (reply.status, reply.json()["matches"][0]["body"]["note"]) == (200, "\ud800")
    reply = request(port, "POST", "/_double/verify", b'{"method": "DELETE"}', json_type)
    assert reply.status == 422
    assert reply.json()["near_misses"][0]["request"]["body"]["note"] == "\ud800"
    reply.body.decode("utf-8")  # strict UTF-8
    reply = request(port, "POST", "/_double/verify", b'{"path": "/\\udfff"}', json_type)
    assert (reply.status, reply.json()["wanted"]) == (422, {"path": "/\udfff"})
    reply = request(port, "POST", "/_double/verify", b'{"\\udfff": 1}', json_type)
    assert (reply.status, reply.json()["error_details"]) == (422, {"\udfff": ["value_is_invalid"]})


def test_json_nested_past_100_levels_is_text_to_the_double_never_a_500(customers_double):
    """A body nested deeper than 100 levels is recorded as text, and a verification's
    `json` that deep is refused: neither makes a verification answer 500."""
    port = port_of(customers_double)
    deep = '{"a":' * 960 + "1" + "}" * 960
    body = '{"customer": {"customer_id": "c-1", "name": "A"}, "extra": ' + deep + "}"
    sent = {**customers_double.headers, "Content-Type": "application/json"}
    assert request(port, "POST", "/api/v1/customers", body.encode(), sent).status == 200
    status, answer = verify(customers_double, method="DELETE")
    assert (status, answer["near_misses"][0]["request"]["body"]) == (422, body)
    [call] = customers_double.calls("POST")
    assert (call.json, call.body) == (None, body)
    json_type = {"Content-Type": "application/json"}
    reply = request(port, "POST", "/_double/verify", ('{"json": ' + deep + "}").encode(), json_type)
    assert (reply.status, reply.json()["error_details"]) == (422, {"json": ["value_is_invalid"]})
    inner = json.loads('{"a":' * 97 + "[1]" + "}" * 97)  # in two objects: 100 levels
    upsert(customers_double, {"customer_id": "c-2", "name": "B", "extra": inner})
    [match] = customers_double.assert_request_made(json={"customer": {"extra": inner}})
    assert match.json["customer"]["extra"] == inner


# Text a verification meets at its edges: lone surrogates, braces, NUL, a key's shape.
edge_text = st.lists(
    st.sampled_from(["\ud800", "\udfff", "a", "/", "{x}", "\\", "\x00", "lk_"]), max_size=6
).map("".join)
edge_json = st.recursive(
    json_value | edge_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(any_text | edge_text, inner, max_size=3)
    ),
    max_leaves=10,
)


@fuzz
@given(
    recorded=edge_json,
    criteria=st.dictionaries(st.sampled_from(FIELDS) | edge_text, edge_json, max_size=4),
)
def test_any_verification_of_any_recorded_body_is_answered_never_a_500(
    customers_double, recorded, criteria
):
    customers_double.reset()
    port = port_of(customers_double)
    sent = {**customers_double.headers, "Content-Type": "application/json"}
    request(port, "POST", "/api/v1/customers", json.dumps(recorded).encode(), sent)
    json_type = {"Content-Type": "application/json"}
    reply = request(port, "POST", "/_double/verify", json.dumps(criteria).encode(), json_type)
    assert reply.status in (200, 422), reply.body
    reply.body.decode("utf-8")  # strict UTF-8
    assert set(reply.json()) <= {
        "matches",
        "status",
        "error",
        "message",
        "error_details",
        "wanted",
        "matched",
        "recorded",
        "near_misses",
    }


# --- Strict teardown -------------------------------------------------------------------------

STRICT_SUITE = """
import json
import urllib.error
import urllib.request

import pytest


def post(double, body, headers):
    req = urllib.request.Request(
        f"{double.url}/api/v1/customers", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(req) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.customers_double(strict=True)
def test_forgets_the_key(customers_double):
    post(customers_double, {"customer": {"customer_id": "c", "name": "A"}}, {})


@pytest.mark.customers_double(strict=True)
def test_a_fault_that_never_fires(customers_double):
    customers_double.fault(path="/api/v1/customers/never", status=503)


@pytest.mark.customers_double(strict=True)
def test_verified_422_and_a_fired_fault(customers_double):
    customers_double.fault(status=401)
    post(customers_double, {"customer": {"customer_id": "c"}}, customers_double.headers)
    post(customers_double, {"customer": {"customer_id": "c"}}, customers_double.headers)
    customers_double.assert_request_made(status=422)


def test_not_strict(customers_double):
    post(customers_double, {"customer": {}}, {})


@pytest.mark.customers_double(strict=False)
def test_marker_turns_the_ini_off(customers_double):
    post(customers_double, {"customer": {}}, {})
"""


def run_strict_suite(pytester, monkeypatch, *ini: str):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_strict=STRICT_SUITE)
    if ini:
        pytester.makeini("[pytest]\n" + "\n".join(ini) + "\n")
    return pytester.runpytest_subprocess("-p", "customers_registry.pytest_plugin", "-rf")


def test_strict_teardown_fails_what_the_test_did_not_verify(pytester, monkeypatch):
    result = run_strict_suite(pytester, monkeypatch)
    result.assert_outcomes(passed=3, failed=2)
    output = result.stdout.str()
    assert (
        "customers_double (strict):\n"
        "  an answer the test did not verify: #1 POST /api/v1/customers -> 401 "
        '{"status": 401, "error": "Unauthorized"}'
    ) in output
    assert ('customers_double (strict):\n  a fault never fired: {"id": "') in output
    assert '"path": "/api/v1/customers/never", "status": 503, "times": 1}' in output
    assert "Traceback" not in output


def test_strict_by_ini_option(pytester, monkeypatch):
    result = run_strict_suite(pytester, monkeypatch, "customers_double_strict = true")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        ["FAILED test_strict.py::test_not_strict - Failed: customers_double*"]
    )


# --- The README's recipes, run as written ----------------------------------------------------


def test_readme_verify_recipe_fails_as_the_readme_shows(tmp_path):
    (tmp_path / "test_verify_recipe.py").write_text(readme_recipe("verify"))
    result = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-p", "customers_registry.pytest_plugin"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert readme_recipe("verify-output") in result.stdout


def test_readme_verify_curl_recipe(tmp_path):
    with double.serve(seed_document=SEED) as running:
        port = port_of(running)
        assert (
            request(port, "GET", "/api/v1/customers/seeded-1", headers=running.headers).status
            == 200
        )
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_recipe("verify-curl")],
            env={**os.environ, "LAGO_URL": running.url},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    decoder, text, answers = json.JSONDecoder(), result.stdout, []
    while text:
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].lstrip()
    matched, missed = answers
    assert [(m["id"], m["path"], m["status"]) for m in matched["matches"]] == [
        (1, "/api/v1/customers/seeded-1", 200)
    ]
    assert (missed["status"], missed["error_details"]) == (
        422,
        {"path": ["not_met"], "count": ["not_met"]},
    )
    assert [miss["differences"] for miss in missed["near_misses"]] == [
        [
            {
                "field": "path",
                "wanted": "/api/v1/customers/seeded-2",
                "seen": "/api/v1/customers/seeded-1",
            }
        ]
    ]
