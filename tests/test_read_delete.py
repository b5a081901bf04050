"""Read one customer, list them page by page, delete one (README "API")."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote

import pytest

import models
import openapi
import schemas
from app import __version__
from tests.conftest import auth, mint_key, stored_customers

NOT_FOUND = {"status": 404, "error": "Not Found", "code": "customer_not_found"}
AWKWARD_IDS = [
    "with/slash",
    "/leading-slash",
    "trailing-slash/",
    "double//slash",
    "with space",
    "per%cent",
    "%2F-looks-encoded",
    "question?mark",
    "hash#tag",
    "amp&ersand=eq",
    "plus+sign",
    "dots/../..",
    "line\nbreak\ttab",
    "Ünïcödé-日本語-🚀",
    "x" * 255,
]


def path_of(customer_id: str) -> str:
    return "/api/v1/customers/" + quote(customer_id, safe="")


def create(client, customer_id: str, key: str | None = None, **fields) -> dict:
    body = {
        "customer": {"customer_id": customer_id, "name": f"name of {customer_id[:100]}", **fields}
    }
    response = client.post("/api/v1/customers", json=body, headers=auth(key) if key else auth())
    assert response.status_code == 200, response.get_json()
    return response.get_json()["customer"]


def listing(client, query: str = "", key: str | None = None):
    return client.get(f"/api/v1/customers{query}", headers=auth(key) if key else auth())


# --- GET one ------------------------------------------------------------------------------


def test_get_answers_the_customer_object(client):
    created = create(client, "cus-1", city="Paris", country="fr")
    response = client.get(path_of("cus-1"), headers=auth())
    assert response.status_code == 200
    assert response.get_json() == {"customer": created}


def test_get_unknown_customer_is_404_customer_not_found(client):
    response = client.get(path_of("nobody"), headers=auth())
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("customer_id", ["x" * 256, "nul\x00char", "bell\x07"])
def test_ids_no_upsert_could_store_are_simply_not_found(client, customer_id):
    for method in ("GET", "DELETE"):
        response = client.open(path_of(customer_id), method=method, headers=auth())
        assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("customer_id", AWKWARD_IDS)
def test_awkward_ids_round_trip_through_create_get_and_delete(client, app, customer_id):
    created = create(client, customer_id)
    assert created["customer_id"] == customer_id
    fetched = client.get(path_of(customer_id), headers=auth())
    assert fetched.get_json() == {"customer": created}
    deleted = client.delete(path_of(customer_id), headers=auth())
    assert deleted.get_json() == {"customer": created}
    assert client.get(path_of(customer_id), headers=auth()).status_code == 404
    assert stored_customers(app) == []


def test_lookup_is_exact(client):
    create(client, "Case")
    for other in ("case", "CASE", " Case", "Case "):
        assert client.get(path_of(other), headers=auth()).status_code == 404


# --- DELETE -------------------------------------------------------------------------------


def test_delete_answers_the_customer_as_it_was_and_removes_it(client, app):
    create(client, "keep")
    doomed = create(client, "doomed", email="d@example.test")
    response = client.delete(path_of("doomed"), headers=auth())
    assert (response.status_code, response.get_json()) == (200, {"customer": doomed})
    assert client.get(path_of("doomed"), headers=auth()).get_json() == NOT_FOUND
    page = listing(client).get_json()
    assert [c["customer_id"] for c in page["customers"]] == ["keep"]
    assert page["meta"]["total_count"] == 1
    assert [row["customer_id"] for row in stored_customers(app)] == ["keep"]


def test_delete_twice_is_404_the_second_time(client):
    create(client, "once")
    assert client.delete(path_of("once"), headers=auth()).status_code == 200
    response = client.delete(path_of("once"), headers=auth())
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_upsert_after_delete_creates_a_new_customer(client, monkeypatch):
    monkeypatch.setattr(models, "utcnow", lambda: datetime(2024, 1, 1, 12, 0, 0))
    old = create(client, "phoenix", city="Old town")
    client.delete(path_of("phoenix"), headers=auth())
    monkeypatch.setattr(models, "utcnow", lambda: datetime(2024, 1, 2, 12, 0, 0))
    new = create(client, "phoenix")
    assert new["lago_id"] != old["lago_id"]
    assert (old["created_at"], new["created_at"]) == (
        "2024-01-01T12:00:00Z",
        "2024-01-02T12:00:00Z",
    )
    assert new["city"] is None


def test_update_without_name_after_delete_is_422(client, app):
    create(client, "gone")
    client.delete(path_of("gone"), headers=auth())
    body = {"customer": {"customer_id": "gone", "city": "X"}}
    response = client.post("/api/v1/customers", json=body, headers=auth())
    assert response.get_json()["error_details"] == {"name": ["value_is_mandatory"]}
    assert stored_customers(app) == []


# --- The list -----------------------------------------------------------------------------


def test_empty_list(client):
    for query in ("", "?page=1", "?page=3&per_page=5"):
        response = listing(client, query)
        assert response.status_code == 200
        assert response.get_json() == {
            "customers": [],
            "meta": {
                "current_page": 0,
                "next_page": None,
                "prev_page": None,
                "total_pages": 0,
                "total_count": 0,
            },
        }


def _create_with_clock(client, monkeypatch, count: int, seconds: int) -> list[dict]:
    """Create `count` customers whose created_at cycles over `seconds` distinct seconds,
    so that many share one second and the tie-break decides their order."""
    start = datetime(2024, 5, 1, 9, 30, 0)
    created = []
    for n in range(count):
        moment = start + timedelta(seconds=n % seconds)
        monkeypatch.setattr(models, "utcnow", lambda moment=moment: moment)
        created.append(create(client, f"cus-{n:02d}"))
    return created


def test_25_customers_in_pages_of_10(client, monkeypatch):
    created = _create_with_clock(client, monkeypatch, 25, seconds=3)
    expected = sorted(created, key=lambda c: c["lago_id"])
    expected.sort(key=lambda c: c["created_at"], reverse=True)  # stable: lago_id breaks ties
    metas = [
        {"current_page": 1, "next_page": 2, "prev_page": None, "total_pages": 3, "total_count": 25},
        {"current_page": 2, "next_page": 3, "prev_page": 1, "total_pages": 3, "total_count": 25},
        {"current_page": 3, "next_page": None, "prev_page": 2, "total_pages": 3, "total_count": 25},
    ]
    seen = []
    for page, meta in enumerate(metas, start=1):
        body = listing(client, f"?page={page}&per_page=10").get_json()
        assert body["meta"] == meta
        assert len(body["customers"]) == (10 if page < 3 else 5)
        seen += body["customers"]
    assert seen == expected
    assert len({c["lago_id"] for c in seen}) == 25


def test_page_past_the_end_is_empty_with_true_totals(client):
    for n in range(3):
        create(client, f"c{n}")
    body = listing(client, "?page=5&per_page=2").get_json()
    assert body == {
        "customers": [],
        "meta": {
            "current_page": 5,
            "next_page": None,
            "prev_page": 4,
            "total_pages": 2,
            "total_count": 3,
        },
    }


def test_defaults_are_page_1_and_100_per_page(client, monkeypatch):
    _create_with_clock(client, monkeypatch, 105, seconds=7)
    body = listing(client).get_json()
    assert len(body["customers"]) == 100
    assert body["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 2,
        "total_count": 105,
    }


def test_per_page_maximum_is_1000(client):
    create(client, "only")
    assert listing(client, "?per_page=1000").status_code == 200
    response = listing(client, "?per_page=1001")
    assert response.status_code == 422
    assert response.get_json()["error_details"] == {"per_page": ["value_is_invalid"]}


def test_list_items_are_full_customer_objects(client):
    created = create(client, "full", country="de", zipcode=10115)
    assert listing(client).get_json()["customers"] == [created]


@pytest.mark.parametrize(
    "value", ["0", "-1", "abc", "1.5", "", " 1", "+1", "1e2", "１", "99999999999"]
)
@pytest.mark.parametrize("name", ["page", "per_page"])
def test_bad_page_parameters_are_422_keyed_by_the_parameter(client, name, value):
    response = listing(client, f"?{name}={quote(value)}")
    assert response.status_code == 422
    assert response.get_json() == {
        "status": 422,
        "error": "Unprocessable entity",
        "message": "Validation error on the record",
        "error_details": {name: ["value_is_invalid"]},
    }


def test_page_limits_are_the_ones_the_openapi_document_states(client):
    parameters = openapi.document(__version__)["paths"]["/api/v1/customers"]["get"]["parameters"]
    limits = {p["name"]: (p["schema"]["minimum"], p["schema"]["maximum"]) for p in parameters}
    assert limits == {"page": (1, schemas.MAX_PAGE), "per_page": (1, schemas.MAX_PER_PAGE)}
    for name, (_, maximum) in limits.items():
        assert listing(client, f"?{name}={maximum}").status_code == 200
        too_far = listing(client, f"?{name}={maximum + 1}")
        assert too_far.get_json()["error_details"] == {name: ["value_is_invalid"]}


def test_both_bad_parameters_are_reported_together(client):
    response = listing(client, "?page=0&per_page=5000")
    assert response.get_json()["error_details"] == {
        "page": ["value_is_invalid"],
        "per_page": ["value_is_invalid"],
    }


# --- Tenancy and auth on every route ------------------------------------------------------


def test_another_organizations_customer_is_invisible_on_every_route(app, client):
    acme, hooli = mint_key(app, "acme"), mint_key(app, "hooli")
    create(client, "acme-1", key=acme)
    create(client, "shared", key=acme, city="Acme city")
    create(client, "shared", key=hooli, city="Hooli city")

    assert client.get(path_of("acme-1"), headers=auth(hooli)).get_json() == NOT_FOUND
    assert client.delete(path_of("acme-1"), headers=auth(hooli)).get_json() == NOT_FOUND
    hooli_page = listing(client, key=hooli).get_json()
    assert [c["customer_id"] for c in hooli_page["customers"]] == ["shared"]
    assert hooli_page["customers"][0]["city"] == "Hooli city"
    assert hooli_page["meta"]["total_count"] == 1

    # Hooli deleting its "shared" leaves Acme's "shared" alone.
    assert client.delete(path_of("shared"), headers=auth(hooli)).status_code == 200
    acme_shared = client.get(path_of("shared"), headers=auth(acme)).get_json()["customer"]
    assert acme_shared["city"] == "Acme city"
    assert listing(client, key=acme).get_json()["meta"]["total_count"] == 2
    assert sorted(r["customer_id"] for r in stored_customers(app)) == ["acme-1", "shared"]


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/customers"),
        ("GET", "/api/v1/customers/x"),
        ("DELETE", "/api/v1/customers/x"),
    ],
)
def test_every_route_needs_a_key(client, app, method, path):
    create(client, "x")
    response = client.open(path, method=method, headers={"Authorization": "Bearer nope"})
    assert (response.status_code, response.get_json()) == (
        401,
        {"status": 401, "error": "Unauthorized"},
    )
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert len(stored_customers(app)) == 1


def test_wrong_method_on_a_customer_is_405(client):
    response = client.put(path_of("x"), headers=auth())
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD", "DELETE"}
