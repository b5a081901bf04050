"""Create or update, and the customer object (README "API")."""

from __future__ import annotations

import json
import logging
import re
import uuid

import pytest

import connections
import schemas
from tests.conftest import auth, database_of, stored_customers

SEED = {
    "customer_id": "5eb02857-a71e-4ea2-bcf9-57d3a41bc6ba",
    "address_line1": "5230 Penfield Ave",
    "address_line2": None,
    "city": "Woodland Hills",
    "country": "US",
    "email": "dinesh@piedpiper.test",
    "legal_name": "Coleman-Blair",
    "legal_number": "49-008-2965",
    "logo_url": "http://hooli.com/logo.png",
    "name": "Gavin Belson",
    "phone": "1-171-883-3711 x245",
    "state": "CA",
    "url": "http://hooli.com",
    "zipcode": "91364",
}
OBJECT_KEYS = [
    "lago_id",
    "customer_id",
    "address_line1",
    "address_line2",
    "city",
    "country",
    "created_at",
    "email",
    "legal_name",
    "legal_number",
    "logo_url",
    "name",
    "phone",
    "state",
    "url",
    "zipcode",
]
OPTIONAL = [
    "address_line1",
    "address_line2",
    "city",
    "email",
    "legal_name",
    "legal_number",
    "logo_url",
    "phone",
    "state",
    "url",
    "zipcode",
]


def post(client, customer=None, *, body=None, headers=None):
    payload = {"customer": customer} if body is None else body
    return client.post("/api/v1/customers", json=payload, headers=headers or auth())


def details(response) -> dict:
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"status", "error", "message", "error_details"}
    assert (body["status"], body["error"], body["message"]) == (
        422,
        "Unprocessable entity",
        "Validation error on the record",
    )
    return body["error_details"]


# --- Create and update --------------------------------------------------------------------


def test_create_answers_200_with_the_customer_object(client, app):
    response = post(client, SEED)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    customer = response.get_json()["customer"]
    assert list(customer) == OBJECT_KEYS
    assert {k: customer[k] for k in SEED} == SEED
    assert str(uuid.UUID(customer["lago_id"])) == customer["lago_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", customer["created_at"])
    [row] = stored_customers(app)
    assert row["customer_id"] == SEED["customer_id"] and row["name"] == "Gavin Belson"


def test_update_answers_200_and_keeps_lago_id_and_created_at(client, app):
    first = post(client, SEED).get_json()["customer"]
    second = post(client, {**SEED, "name": "Hooli XYZ"})
    assert second.status_code == 200
    updated = second.get_json()["customer"]
    assert updated["name"] == "Hooli XYZ"
    assert (updated["lago_id"], updated["created_at"]) == (first["lago_id"], first["created_at"])
    assert len(stored_customers(app)) == 1


def test_absent_keys_are_kept_and_null_clears(client):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], "city": None, "state": "NV"})
    customer = response.get_json()["customer"]
    assert customer["city"] is None
    assert customer["state"] == "NV"
    for kept in ("address_line1", "country", "email", "legal_name", "name", "url", "zipcode"):
        assert customer[kept] == SEED[kept]


def test_update_may_omit_name(client):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], "zipcode": "10001"})
    assert response.status_code == 200
    assert response.get_json()["customer"]["name"] == "Gavin Belson"


def test_update_with_only_the_customer_id_changes_nothing(client):
    created = post(client, SEED).get_json()["customer"]
    response = post(client, {"customer_id": SEED["customer_id"]})
    assert response.status_code == 200
    assert response.get_json()["customer"] == created


def test_every_optional_field_can_be_cleared_with_null(client):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], **dict.fromkeys(OPTIONAL)})
    customer = response.get_json()["customer"]
    assert all(customer[field] is None for field in OPTIONAL)
    assert customer["name"] == "Gavin Belson"


def test_country_null_clears_it(client):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], "country": None})
    assert response.get_json()["customer"]["country"] is None


def test_lago_client_body_with_nulls_and_vat_rate_is_accepted(client):
    # What Lago's official clients of the customer_id era send: every field, unset ones
    # as null, plus vat_rate (a number this contract does not list).
    body = {
        "customer": {
            "customer_id": "client-1",
            "name": "Client One",
            "address_line1": None,
            "address_line2": None,
            "city": None,
            "country": None,
            "email": None,
            "legal_name": None,
            "legal_number": None,
            "logo_url": None,
            "phone": None,
            "state": None,
            "url": None,
            "zipcode": None,
            "vat_rate": 12.5,
        }
    }
    response = post(client, body=body)
    assert response.status_code == 200
    customer = response.get_json()["customer"]
    assert customer["name"] == "Client One"
    assert "vat_rate" not in customer


def test_unknown_keys_inside_and_beside_customer_are_ignored(client):
    body = {"customer": {**SEED, "vat_rate": 20, "billing": {"x": 1}}, "extra": [1, 2]}
    response = post(client, body=body)
    assert response.status_code == 200
    assert list(response.get_json()["customer"]) == OBJECT_KEYS


def test_customer_id_is_compared_exactly(client, app):
    for customer_id in ("abc", "ABC", " abc", "abc "):
        assert post(client, {"customer_id": customer_id, "name": "n"}).status_code == 200
    assert sorted(row["customer_id"] for row in stored_customers(app)) == sorted(
        ["abc", "ABC", " abc", "abc "]
    )


def test_text_is_stored_exactly_as_sent(client, app):
    name = "Zoë 日本 🚀 e\u0301 tab\tand\r\nnewline  "
    response = post(client, {"customer_id": "ü/ß?#%", "name": name})
    assert response.status_code == 200
    assert response.get_json()["customer"]["name"] == name
    assert stored_customers(app)[0]["name"] == name
    assert stored_customers(app)[0]["customer_id"] == "ü/ß?#%"


def test_the_written_out_dump_matches_the_schema(client, app):
    created = post(client, {**SEED, "address_line2": "Suite 5", "zipcode": 12}).get_json()
    [row] = stored_customers(app)
    assert schemas.dump_customer(row) == schemas.CustomerSchema().dump(row) == created["customer"]


# --- Field rules --------------------------------------------------------------------------


@pytest.mark.parametrize("sent,stored", [("US", "US"), ("us", "US"), ("fR", "FR")])
def test_country_any_case_in_upper_case_stored(client, app, sent, stored):
    response = post(client, {**SEED, "country": sent})
    assert response.get_json()["customer"]["country"] == stored
    assert stored_customers(app)[0]["country"] == stored


@pytest.mark.parametrize(
    "country", ["USA", "ZZ", "", "U", "1", " US", 42, "ÜS", "ıt", "ſe", "ＵＳ"]
)
def test_country_must_be_an_iso_alpha_2_code(client, app, country):
    assert details(post(client, {**SEED, "country": country})) == {
        "country": ["not_a_valid_country_code"]
    }
    assert stored_customers(app) == []


@pytest.mark.parametrize("value,stored", [(42, "42"), (0, "0"), (-7, "-7"), (10**30, str(10**30))])
def test_json_integer_is_stored_as_its_decimal_text(client, value, stored):
    response = post(client, {"customer_id": value, "name": value, "zipcode": value})
    assert response.status_code == 200
    customer = response.get_json()["customer"]
    assert (customer["customer_id"], customer["name"], customer["zipcode"]) == (stored,) * 3


@pytest.mark.parametrize("value", [4.2, 42.0, 1e3, True, False, {"a": "b"}, [], ["x"], {}])
@pytest.mark.parametrize("field", ["customer_id", "name", "city", "email", "zipcode", "country"])
def test_other_json_types_are_value_is_invalid(client, app, field, value):
    assert details(post(client, {**SEED, field: value})) == {field: ["value_is_invalid"]}
    assert stored_customers(app) == []


@pytest.mark.parametrize(
    "customer,errors",
    [
        ({"name": "n"}, {"customer_id": ["value_is_mandatory"]}),
        ({"customer_id": None, "name": "n"}, {"customer_id": ["value_is_mandatory"]}),
        ({"customer_id": "", "name": "n"}, {"customer_id": ["value_is_mandatory"]}),
        ({"customer_id": " \t\n", "name": "n"}, {"customer_id": ["value_is_mandatory"]}),
        ({"customer_id": "new"}, {"name": ["value_is_mandatory"]}),
        ({"customer_id": "new", "name": None}, {"name": ["value_is_mandatory"]}),
        ({"customer_id": "new", "name": "  "}, {"name": ["value_is_mandatory"]}),
        ({"customer_id": "new", "city": "Paris"}, {"name": ["value_is_mandatory"]}),
    ],
)
def test_mandatory_fields(client, app, customer, errors):
    assert details(post(client, customer)) == errors
    assert stored_customers(app) == []


@pytest.mark.parametrize("name", [None, "", "   "])
def test_name_cannot_be_cleared_on_update(client, app, name):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], "name": name, "city": "X"})
    assert details(response) == {"name": ["value_is_mandatory"]}
    assert stored_customers(app)[0]["name"] == "Gavin Belson"
    assert stored_customers(app)[0]["city"] == "Woodland Hills"


@pytest.mark.parametrize(
    "field,limit",
    [(f, 255) for f in ["customer_id", "name", "city", "email", "phone", "zipcode"]]
    + [("logo_url", 2048), ("url", 2048)],
)
def test_maximum_lengths(client, app, field, limit):
    at_limit = post(client, {**SEED, field: "é" * limit})
    assert at_limit.status_code == 200
    assert at_limit.get_json()["customer"][field] == "é" * limit
    assert details(post(client, {**SEED, "customer_id": "other", field: "x" * (limit + 1)})) == {
        field: ["value_is_too_long"]
    }
    assert len(stored_customers(app)) == 1


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x1f"])
@pytest.mark.parametrize("field", ["customer_id", "name", "address_line1"])
def test_c0_control_characters_are_invalid(client, app, field, char):
    assert details(post(client, {**SEED, field: f"a{char}b"})) == {field: ["value_is_invalid"]}
    assert stored_customers(app) == []


def test_tab_cr_and_lf_are_allowed(client):
    response = post(client, {**SEED, "address_line1": "a\tb\r\nc"})
    assert response.get_json()["customer"]["address_line1"] == "a\tb\r\nc"


def test_lone_surrogate_escape_is_invalid(client, app):
    raw = b'{"customer":{"customer_id":"a","name":"x\\ud800y"}}'
    response = client.post(
        "/api/v1/customers", data=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert details(response) == {"name": ["value_is_invalid"]}
    assert stored_customers(app) == []


def test_every_failing_field_is_reported_at_once(client, app):
    customer = {
        "customer_id": "",
        "country": "XX",
        "email": 1.5,
        "city": "c" * 256,
        "state": "a\x00",
    }
    assert details(post(client, customer)) == {
        "customer_id": ["value_is_mandatory"],
        "name": ["value_is_mandatory"],
        "country": ["not_a_valid_country_code"],
        "email": ["value_is_invalid"],
        "city": ["value_is_too_long"],
        "state": ["value_is_invalid"],
    }
    assert stored_customers(app) == []


def test_failing_update_without_name_does_not_claim_name_is_missing(client, app):
    post(client, SEED)
    response = post(client, {"customer_id": SEED["customer_id"], "country": "XX"})
    assert details(response) == {"country": ["not_a_valid_country_code"]}
    assert stored_customers(app)[0]["country"] == "US"


def test_nothing_is_written_when_an_update_fails(client, app):
    post(client, SEED)
    before = stored_customers(app)
    response = post(client, {**SEED, "name": "New", "city": "New", "country": "nope"})
    assert response.status_code == 422
    assert stored_customers(app) == before


# --- 400 and 413 --------------------------------------------------------------------------

NOT_JSON = "The body is not strict JSON (RFC 8259, UTF-8)"
NOT_AN_OBJECT = "The body must be a JSON object"
NO_CUSTOMER = "customer must be a non-empty JSON object"


def bad_request(message: str) -> dict:
    return {"status": 400, "error": "Bad Request", "message": message}


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", NOT_JSON),
        (b"not json", NOT_JSON),
        (b'{"customer": {"customer_id": "a", "name": "b"}', NOT_JSON),
        (b'{"customer": {"customer_id": NaN, "name": "b"}}', NOT_JSON),
        (b'{"customer": {"customer_id": "a", "name": "b", "x": Infinity}}', NOT_JSON),
        (b'{"customer": {"customer_id": "a", "name": "b", "x": -Infinity}}', NOT_JSON),
        ('{"customer": {"customer_id": "é", "name": "b"}}'.encode("latin-1"), NOT_JSON),
        ('{"customer": {"customer_id": "a", "name": "b"}}'.encode("utf-16"), NOT_JSON),
        (b'\xef\xbb\xbf{"customer": {"customer_id": "a", "name": "b"}}', NOT_JSON),
        (b"{'customer': {'customer_id': 'a', 'name': 'b'}}", NOT_JSON),
        (b'{"customer": {"customer_id": "a\x01", "name": "raw control character"}}', NOT_JSON),
        (b"[" * 100_000 + b"]" * 100_000, NOT_JSON),
        (b"[]", NOT_AN_OBJECT),
        (b'"customer"', NOT_AN_OBJECT),
        (b"null", NOT_AN_OBJECT),
        (b"42", NOT_AN_OBJECT),
        (b"{}", NO_CUSTOMER),
        (b'{"customer": null}', NO_CUSTOMER),
        (b'{"customer": {}}', NO_CUSTOMER),
        (b'{"customer": []}', NO_CUSTOMER),
        (b'{"customer": [{"customer_id": "a", "name": "b"}]}', NO_CUSTOMER),
        (b'{"customer": "a"}', NO_CUSTOMER),
        (b'{"customer_id": "a", "name": "b"}', NO_CUSTOMER),
    ],
)
def test_bad_bodies_are_400_naming_the_cause(make_app, raw, message):
    app = make_app(MAX_BODY_BYTES=1_000_000)
    response = app.test_client().post(
        "/api/v1/customers", data=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert (response.status_code, response.get_json()) == (400, bad_request(message))
    assert stored_customers(app) == []


@pytest.mark.parametrize(
    "content_type, message",
    [
        (None, "Content-Type must be application/json"),
        ("text/plain", "Content-Type must be application/json"),
        ("application/x-www-form-urlencoded", "Content-Type must be application/json"),
        ("application/jsonx", "Content-Type must be application/json"),
        ("application/vnd.api+json", "Content-Type must be application/json"),
        ("application/json; charset=latin-1", "Content-Type charset must be utf-8"),
    ],
)
def test_content_type_must_be_json(client, app, content_type, message):
    headers = auth()
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(
        "/api/v1/customers", data=json.dumps({"customer": SEED}), headers=headers
    )
    assert (response.status_code, response.get_json()) == (400, bad_request(message))
    assert stored_customers(app) == []


def test_the_cause_of_a_400_is_logged_without_the_body(client, caplog):
    caplog.set_level(logging.INFO, logger="customers")
    secret_body = b'{"customer": "s3cret-body-bytes"}'
    response = client.post(
        "/api/v1/customers", data=secret_body, headers={**auth(), "Content-Type": "text/plain"}
    )
    assert response.status_code == 400
    assert "bad request: Content-Type must be application/json" in caplog.text
    assert "s3cret-body-bytes" not in caplog.text


@pytest.mark.parametrize(
    "content_type", ["application/json", "APPLICATION/JSON", "application/json; charset=UTF-8"]
)
def test_json_content_type_variants_are_accepted(client, content_type):
    response = client.post(
        "/api/v1/customers",
        data=json.dumps({"customer": SEED}),
        headers={**auth(), "Content-Type": content_type},
    )
    assert response.status_code == 200


def _body_of_size(size: int) -> bytes:
    body = json.dumps({"customer": SEED, "padding": ""}).encode()
    return body.replace(b'"padding": ""', b'"padding": "' + b"p" * (size - len(body)) + b'"')


def test_body_over_the_default_64_kib_is_413(client, app):
    assert len(_body_of_size(64 * 1024 + 1)) == 64 * 1024 + 1
    response = client.post(
        "/api/v1/customers",
        data=_body_of_size(64 * 1024 + 1),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert (response.status_code, response.get_json()) == (
        413,
        {"status": 413, "error": "Payload Too Large"},
    )
    assert stored_customers(app) == []


def test_body_at_the_limit_is_accepted(client):
    response = client.post(
        "/api/v1/customers",
        data=_body_of_size(64 * 1024),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 200


def test_body_limit_is_a_setting(make_app):
    client = make_app(MAX_BODY_BYTES=1024).test_client()
    response = client.post(
        "/api/v1/customers",
        data=_body_of_size(1025),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_every_customer_index_earns_its_keep(app):
    # Each index costs every insert a page write; one whose columns lead another index
    # (as peewee's automatic foreign-key index on organization_id did) buys nothing.
    with database_of(app) as db, connections.using(db):
        indexes = [tuple(index.columns) for index in db.get_indexes("customer")]
    assert ("organization_id", "customer_id") in indexes
    for index in indexes:
        for other in indexes:
            if other != index:
                assert other[: len(index)] != index, f"{index} leads {other}"
