"""Authentication and tenants (README "API"): keys, organizations, and the `keys` commands."""

from __future__ import annotations

import hashlib
import logging
import re

import pytest

import auth
import connections
import models
from tests.conftest import API_KEY, mint_key, stored_customers, stored_text
from tests.conftest import auth as bearer

UNAUTHORIZED = {"status": 401, "error": "Unauthorized"}
CUSTOMER = {"customer": {"customer_id": "c-1", "name": "Acme"}}


def assert_unauthorized(response) -> None:
    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": API_KEY},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"X-Api-Key": API_KEY},
    ],
)
def test_missing_or_wrong_credentials_are_401(client, app, headers):
    assert_unauthorized(client.post("/api/v1/customers", json=CUSTOMER, headers=headers))
    assert stored_customers(app) == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_word_is_case_insensitive(client, scheme):
    response = client.post(
        "/api/v1/customers", json=CUSTOMER, headers={"Authorization": f"{scheme} {API_KEY}"}
    )
    assert response.status_code == 200


def test_key_in_the_query_string_is_not_read(client, app):
    for name in ("api_key", "key", "access_token", "token"):
        response = client.post(f"/api/v1/customers?{name}={API_KEY}", json=CUSTOMER)
        assert_unauthorized(response)
    assert stored_customers(app) == []


@pytest.mark.parametrize(
    "data,content_type",
    [
        (b"not json at all", "application/json"),
        (b'{"customer": {}}', "text/plain"),
        (b"x" * 200_000, "application/json"),
    ],
)
def test_key_is_checked_before_the_body(client, data, content_type):
    response = client.post(
        "/api/v1/customers",
        data=data,
        headers={"Authorization": "Bearer wrong", "Content-Type": content_type},
    )
    assert_unauthorized(response)


def test_minted_key_works_and_is_stored_only_as_a_hash(app):
    key = mint_key(app, "acme")
    assert re.fullmatch(r"lk_[A-Za-z0-9_-]{43}", key)
    client = app.test_client()
    assert client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)).status_code == 200
    with connections.using(app.extensions["customers.db"]):
        [row] = models.ApiKey.select().dicts()
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert row["prefix"] == key[: auth.PREFIX_LENGTH]
    # Nothing the database holds has the key, or its secret part, in the clear.
    content = stored_text(app)
    assert row["key_hash"].encode() in content  # the search does see the table
    assert key.encode() not in content
    assert key[auth.PREFIX_LENGTH :].encode() not in content


def test_minted_keys_are_random(app):
    keys = {mint_key(app, "acme") for _ in range(5)}
    assert len(keys) == 5
    assert len({k[: auth.PREFIX_LENGTH] for k in keys}) == 5


def test_keys_create_prints_the_key_alone_on_the_last_line(app):
    result = app.test_cli_runner().invoke(args=["keys", "create", "--org", "Pied Piper"])
    assert result.exit_code == 0
    last = result.output.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"lk_[A-Za-z0-9_-]{43}", last)


def test_keys_list_shows_organizations_and_prefixes_never_whole_keys(app):
    acme, hooli = mint_key(app, "acme"), mint_key(app, "hooli")
    result = app.test_cli_runner().invoke(args=["keys", "list"])
    assert result.exit_code == 0
    assert "acme" in result.output and "hooli" in result.output
    for key in (acme, hooli):
        assert key[: auth.PREFIX_LENGTH] in result.output
        assert key not in result.output
        assert key[auth.PREFIX_LENGTH :] not in result.output


def test_revoked_key_answers_401_from_the_next_request_on(app):
    key = mint_key(app, "acme")
    other = mint_key(app, "acme")
    client = app.test_client()
    assert client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)).status_code == 200
    result = app.test_cli_runner().invoke(args=["keys", "revoke", key[: auth.PREFIX_LENGTH]])
    assert result.exit_code == 0, result.output
    assert_unauthorized(client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)))
    assert client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(other)).status_code == 200
    listing = app.test_cli_runner().invoke(args=["keys", "list"]).output
    revoked_line = next(line for line in listing.splitlines() if key[: auth.PREFIX_LENGTH] in line)
    assert not revoked_line.rstrip().endswith("-")


def test_revoking_an_unknown_prefix_fails_loudly(app):
    result = app.test_cli_runner().invoke(args=["keys", "revoke", "lk_nothere"])
    assert result.exit_code != 0
    assert "no active key" in result.output


def test_revoke_takes_effect_across_app_instances(make_app):
    # Two apps on one database stand for two gunicorn workers: no key cache may
    # outlive a revocation.
    first, second = make_app(), make_app()
    key = mint_key(first, "acme")
    client = second.test_client()
    assert client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)).status_code == 200
    first.test_cli_runner().invoke(args=["keys", "revoke", key])
    assert_unauthorized(client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)))


def test_without_api_key_setting_only_minted_keys_work(make_app):
    app = make_app(API_KEY=None)
    client = app.test_client()
    assert_unauthorized(client.post("/api/v1/customers", json=CUSTOMER, headers=bearer()))
    key = mint_key(app, "acme")
    assert client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(key)).status_code == 200


def test_api_key_setting_is_a_key_of_the_default_organization(app):
    client = app.test_client()
    client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(API_KEY))
    with connections.using(app.extensions["customers.db"]):
        [row] = models.Customer.select(models.Organization.name).join(models.Organization).dicts()
    assert row["name"] == models.DEFAULT_ORGANIZATION


def test_organizations_are_separate_tenants(app):
    client = app.test_client()
    acme, hooli = mint_key(app, "acme"), mint_key(app, "hooli")
    body = {"customer": {"customer_id": "shared-id", "name": "Acme's", "city": "Paris"}}
    first = client.post("/api/v1/customers", json=body, headers=bearer(acme)).get_json()
    body = {"customer": {"customer_id": "shared-id", "name": "Hooli's"}}
    second = client.post("/api/v1/customers", json=body, headers=bearer(hooli)).get_json()
    assert first["customer"]["lago_id"] != second["customer"]["lago_id"]
    # Hooli's upsert created its own customer: it neither saw nor changed Acme's.
    assert second["customer"]["city"] is None
    rows = {row["name"]: row for row in stored_customers(app)}
    assert set(rows) == {"Acme's", "Hooli's"}
    assert rows["Acme's"]["city"] == "Paris"
    # An update without a name from Hooli cannot reach Acme's customer either.
    body = {"customer": {"customer_id": "shared-id", "city": "Berlin"}}
    client.post("/api/v1/customers", json=body, headers=bearer(hooli))
    assert {r["name"]: r["city"] for r in stored_customers(app)} == {
        "Acme's": "Paris",
        "Hooli's": "Berlin",
    }


def test_update_without_name_of_another_organizations_customer_is_422(app):
    client = app.test_client()
    acme, hooli = mint_key(app, "acme"), mint_key(app, "hooli")
    client.post("/api/v1/customers", json=CUSTOMER, headers=bearer(acme))
    response = client.post(
        "/api/v1/customers",
        json={"customer": {"customer_id": "c-1", "city": "X"}},
        headers=bearer(hooli),
    )
    assert response.status_code == 422
    assert response.get_json()["error_details"] == {"name": ["value_is_mandatory"]}
    assert [row["city"] for row in stored_customers(app)] == [None]


def test_keys_never_reach_the_logs(make_app, caplog, capfd):
    app = make_app(LOG_LEVEL="DEBUG")
    key = mint_key(app, "acme")
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    for presented in (key, API_KEY, key + "x", "lk_guess"):
        for body in (CUSTOMER, {"customer": {"customer_id": ""}}, None):
            client.post("/api/v1/customers", json=body, headers=bearer(presented))
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    for secret in (key, key[auth.PREFIX_LENGTH :], API_KEY, "lk_guess"):
        assert secret not in logged


def test_the_database_never_holds_the_api_key_setting(app):
    app.test_client().post("/api/v1/customers", json=CUSTOMER, headers=bearer())
    content = stored_text(app)
    assert b"c-1" in content  # the search does see the customer written
    assert API_KEY.encode() not in content
    with connections.using(app.extensions["customers.db"]):
        assert models.ApiKey.select().count() == 0


@pytest.mark.parametrize(
    "header,token",
    [
        ("Bearer abc", "abc"),
        ("bearer   abc", "abc"),
        ("Bearer abc ", "abc"),
        ("Bearer", None),
        ("Bearer  ", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header, token):
    assert auth.bearer_token(header) == token
