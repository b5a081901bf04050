"""Hostile input at every route (hypothesis): never a 500, always the contract's envelope,
never a leak, never a write on an answer other than 200.

FUZZ_EXAMPLES sets the examples per test (default 500; `make test` runs the default on
SQLite and on PostgreSQL).
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import schemas
from tests.conftest import API_KEY, auth, stored_customers
from tests.test_trust import assert_no_leak

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "500"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

STATUSES = {200, 400, 401, 404, 405, 413, 422}
ENVELOPE_KEYS = {"status", "error", "message", "error_details", "code"}

# Any character at all, lone surrogates included (JSON carries them as \ud800 escapes).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(schemas.CUSTOMER_FIELDS)
customer = st.dictionaries(field_names | any_text, json_value, max_size=16)
plausible_customer = st.fixed_dictionaries(
    {"customer_id": st.text(min_size=1, max_size=20), "name": st.text(min_size=1, max_size=20)},
    optional={
        name: json_value | any_text
        for name in schemas.CUSTOMER_FIELDS
        if name not in ("customer_id", "name")
    },
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "APPLICATION/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ]
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)


def unechoed(response) -> bytes:
    """The answer less the customers' field values: those are what callers sent (in this
    request or an earlier one) stored and shown back, which is no leak even when a value
    happens to read "SELECT" or "/tmp/"."""
    body = response.get_json(silent=True)
    if response.status_code != 200 or not isinstance(body, dict):
        return response.get_data()
    for customer in body.get("customers") or [body.get("customer")]:
        if isinstance(customer, dict):
            customer.update(dict.fromkeys(schemas.CUSTOMER_FIELDS, None))
    return json.dumps(body).encode()


def check(response, before: list, after: list, method: str) -> None:
    """What every answer must be, whatever was sent."""
    assert response.status_code in STATUSES, response.get_data()
    assert_no_leak(unechoed(response), API_KEY)
    assert response.headers.get("X-Request-Id")
    body = response.get_json(silent=True)
    assert isinstance(body, dict), response.get_data()
    if response.status_code != 200:
        assert body["status"] == response.status_code
        assert isinstance(body["error"], str)
        assert set(body) <= ENVELOPE_KEYS
        assert after == before, "a refused request changed the database"
    if method == "GET":
        assert after == before


def post(client, app, data: bytes, content_type: str, headers=None, fuzzed=True):
    if fuzzed:  # a failing example shows exactly what was sent, ASCII-safe, to replay it
        note(f"POST /api/v1/customers Content-Type: {content_type!r} headers: {headers!r}")
        note(f"body: {data!r}")
    before = stored_customers(app)
    response = client.post(
        "/api/v1/customers",
        data=data,
        headers={**(headers if headers is not None else auth()), "Content-Type": content_type},
    )
    check(response, before, stored_customers(app), "POST")
    return response


@fuzz
@given(document=customer)
def test_any_customer_object(client, app, document):
    response = post(client, app, json.dumps({"customer": document}).encode(), "application/json")
    if response.status_code == 200:
        assert response.get_json()["customer"]["customer_id"] == str(document["customer_id"])


@fuzz
@given(document=plausible_customer)
def test_plausible_customers_round_trip_or_are_422(client, app, document):
    response = post(client, app, json.dumps({"customer": document}).encode(), "application/json")
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        stored = response.get_json()["customer"]
        path = "/api/v1/customers/" + quote(stored["customer_id"], safe="")
        assert client.get(path, headers=auth()).get_json() == {"customer": stored}


@fuzz
@given(document=json_value)
def test_any_json_document(client, app, document):
    post(client, app, json.dumps(document).encode(), "application/json")


@fuzz
@given(data=st.binary(max_size=300), content_type=content_types)
def test_any_bytes_with_any_content_type(client, app, data, content_type):
    post(client, app, data, content_type)


@fuzz
@given(customer_id=any_text, method=st.sampled_from(["GET", "DELETE", "PUT", "PATCH"]))
def test_any_customer_id_in_the_path(client, app, customer_id, method):
    client.post(
        "/api/v1/customers", json={"customer": {"customer_id": "keep", "name": "K"}}, headers=auth()
    )
    before = stored_customers(app)
    path = "/api/v1/customers/" + quote(customer_id.encode("utf-8", "surrogatepass"), safe="")
    note(f"{method} {path}")
    response = client.open(path, method=method, headers=auth())
    after = stored_customers(app)
    if customer_id == "keep" and method == "DELETE":
        assert response.status_code == 200 and after == []
    else:
        check(response, before, after, "GET")


@fuzz
@given(page=header_text, per_page=header_text)
def test_any_page_parameters(client, app, page, per_page):
    before = stored_customers(app)
    query = f"?page={quote(page)}&per_page={quote(per_page)}"
    note(f"GET /api/v1/customers{query}")
    response = client.get("/api/v1/customers" + query, headers=auth())
    check(response, before, stored_customers(app), "GET")
    if response.status_code == 200:
        assert set(response.get_json()) == {"customers", "meta"}


# Search and filter values: any character (quote() sends a lone surrogate as the bytes
# of no character, which the server reads as U+FFFD), short or past 255, or a word that
# the search's own syntax uses.
filter_text = any_text | st.text(max_size=300) | st.sampled_from(["%", "_", "\\", '"', "*", "OR"])
filter_names = st.sampled_from(
    [
        "search_term",
        "search_term[]",
        "countries",
        "countries[]",
        "states[]",
        "zipcodes",
        "zipcodes[]",
        "cursor",
        "page",
        "per_page[]",
    ]
)


@fuzz
@given(parameters=st.lists(st.tuples(filter_names, filter_text), max_size=8))
def test_any_search_and_filter_parameters(client, app, parameters):
    client.post(
        "/api/v1/customers",
        json={"customer": {"customer_id": "f-1", "name": "Ada", "country": "FR"}},
        headers=auth(),
    )
    before = stored_customers(app)
    query = "&".join(
        f"{quote(name)}={quote(value.encode('utf-8', 'surrogatepass'), safe='')}"
        for name, value in parameters
    )
    note(f"GET /api/v1/customers?{query}")
    response = client.get("/api/v1/customers?" + query, headers=auth())
    check(response, before, stored_customers(app), "GET")
    if response.status_code == 200:
        assert set(response.get_json()) == {"customers", "meta"}


@fuzz
@given(authorization=header_text, request_id=header_text, scheme=st.sampled_from(["", "Bearer "]))
def test_any_authorization_and_request_id_headers(client, app, authorization, request_id, scheme):
    headers = {"Authorization": scheme + authorization, "X-Request-Id": request_id}
    body = json.dumps({"customer": {"customer_id": "h", "name": "H"}}).encode()
    response = post(client, app, body, "application/json", headers=headers)
    assert response.status_code == 401  # no key but the real one gets in


@pytest.mark.parametrize(
    "body",
    [
        b'{"customer": ' * 5000 + b"{}" + b"}" * 5000,
        b'{"customer": {"customer_id": "a", "name": "' + b"\\ud800" * 2000 + b'"}}',
        b'{"customer": {"customer_id": "' + b"9" * 5000 + b'", "name": "n"}}',
        b'{"customer": {"customer_id": ' + b"9" * 5000 + b', "name": "n"}}',
        b'{"customer": {"customer_id": 1e999, "name": "n"}}',
        b'{"customer": {"customer_id": "a", "name": "n"}}' + b" " * 60000,
        b"\xff\xfe\x00\x00",
    ],
)
def test_pathological_bodies(make_app, body):
    app = make_app(MAX_BODY_BYTES=1_000_000)
    post(app.test_client(), app, body, "application/json", fuzzed=False)


def test_values_that_read_like_leaks_are_the_callers_own_echo(client, app):
    document = {"customer_id": "Traceback", "name": "SELECT", "city": "/tmp/app.py sqlite"}
    body = json.dumps({"customer": document}).encode()
    response = post(client, app, body, "application/json", fuzzed=False)
    assert response.get_json()["customer"]["name"] == "SELECT"
    listed = client.get("/api/v1/customers", headers=auth())
    check(listed, [], [], "GET")
