"""CONTRACT.md section 3, the cursor walk: `meta.next_cursor` on every list answer,
`?cursor=` for the customers after it, each customer that exists for the whole walk seen
exactly once whatever is written meanwhile, filters applying, and a cursor that reveals
nothing and opens only for the organization (and the database) that made it."""

from __future__ import annotations

import base64
import random
import struct
import threading
import uuid
from datetime import datetime, timedelta

import pytest

import connections
import models
from tests.conftest import auth, database_of, mint_key

START = datetime(2024, 3, 1, 12, 0, 0)


def seed(app, count: int, seconds: int, organization: str = "default") -> list[str]:
    """`count` customers created over `seconds` distinct seconds (many ties), in the
    database directly; their customer_ids."""
    with database_of(app) as db, connections.using(db):
        owner = models.ensure_organization(organization)
        for n in range(count):
            models.upsert_customer(
                owner,
                {
                    "customer_id": f"{organization}-{n}",
                    "name": f"Customer {n}",
                    "country": "FR" if n % 3 else "US",
                },
                created_at=START + timedelta(seconds=n % seconds),
            )
    return [f"{organization}-{n}" for n in range(count)]


def get(client, query: str, key: str | None = None):
    return client.get(f"/api/v1/customers?{query}", headers=auth(key) if key else auth())


def walk(
    client, query: str = "per_page=7", key: str | None = None, between=None
) -> tuple[list[dict], list[dict]]:
    """Every page of a cursor walk: the customers seen, in order, and each page's meta;
    `between()` is called between two pages."""
    seen, metas, cursor = [], [], None
    while True:
        if between is not None and metas:
            between()
        response = get(client, query + (f"&cursor={cursor}" if cursor else ""), key)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        seen += body["customers"]
        metas.append(body["meta"])
        cursor = body["meta"]["next_cursor"]
        if cursor is None:
            return seen, metas
        assert len(metas) < 10_000


def test_a_walk_gives_the_list_in_its_order_with_page_numbers_null(app, client):
    seed(app, 50, seconds=4)
    listed = get(client, "per_page=1000").get_json()["customers"]
    for per_page in (1, 7, 50, 100):
        seen, metas = walk(client, f"per_page={per_page}")
        assert seen == listed
        assert len(metas) == max(1, -(-50 // per_page))
        for meta in metas[1:]:
            assert meta["current_page"] is meta["next_page"] is meta["prev_page"] is None
            assert (meta["total_count"], meta["total_pages"]) == (50, -(-50 // per_page))


def test_next_cursor_is_on_every_answer_and_null_at_the_end(app, client):
    assert get(client, "").get_json()["meta"]["next_cursor"] is None  # no customers
    seed(app, 5, seconds=2)
    assert get(client, "per_page=5").get_json()["meta"]["next_cursor"] is None
    assert get(client, "per_page=9").get_json()["meta"]["next_cursor"] is None
    assert get(client, "page=3&per_page=2").get_json()["meta"]["next_cursor"] is None
    assert get(client, "page=9&per_page=2").get_json()["meta"]["next_cursor"] is None
    # A page-numbered answer's cursor goes on from that page.
    page_2 = get(client, "page=2&per_page=2").get_json()
    after = get(client, f"per_page=2&cursor={page_2['meta']['next_cursor']}").get_json()
    page_3 = get(client, "page=3&per_page=2").get_json()
    assert after["customers"] == page_3["customers"]
    assert after["meta"]["next_cursor"] is None


def test_filters_apply_to_the_walk(app, client):
    seed(app, 60, seconds=5)
    for query in (
        "countries[]=US",
        "search_term=customer 1",  # 11 of 60: read from the index's matches on SQLite
        "search_term=CUSTOMER",  # all of them: read walking the list
        "search_term=4&countries[]=FR",
        "search_term=customer 1&countries[]=US",  # 3: from the index's matches on SQLite
        "search_term=zz",
    ):
        listed = get(client, f"{query}&per_page=1000").get_json()
        for per_page in (1, 4):
            seen, metas = walk(client, f"{query}&per_page={per_page}")
            assert seen == listed["customers"], (query, per_page)
            assert metas[-1]["total_count"] == listed["meta"]["total_count"]


def test_each_customer_there_all_along_is_seen_once_while_others_write(app):
    """Between every two pages of a walk (7 at a time), three writers each write once
    through the API: one inserts (now), one inserts in the very seconds being walked and
    updates anyone, one deletes."""
    originals = seed(app, 400, seconds=6)
    doomed = sorted(random.Random(7).sample(originals, 80))  # deleted during the walk
    kept = sorted(set(originals) - set(doomed))  # updated during the walk
    stop = threading.Event()
    turns = threading.Barrier(4)  # the reader and the three writers
    errors: list[BaseException] = []

    def write(number: int, n: int, client, pick: random.Random) -> None:
        if number == 0:  # a new customer, created now: before the walk's position
            body = {"customer": {"customer_id": f"new-{n}", "name": f"New {n}"}}
            assert client.post("/api/v1/customers", json=body, headers=auth()).status_code == 200
        elif number == 1:  # a new customer in the seconds being walked, and an update
            with database_of(app) as db, connections.using(db):
                models.upsert_customer(
                    models.ensure_organization("default"),
                    {"customer_id": f"tied-{n}", "name": f"Tied {n}"},
                    created_at=START + timedelta(seconds=pick.randrange(6)),
                )
            customer = {"customer_id": pick.choice(kept), "name": f"Renamed {n}"}
            response = client.post("/api/v1/customers", json={"customer": customer}, headers=auth())
            assert response.status_code == 200
        elif n <= len(doomed) // 2:  # two deletes
            for customer_id in doomed[2 * n - 2 : 2 * n]:
                response = client.delete(f"/api/v1/customers/{customer_id}", headers=auth())
                assert response.status_code == 200

    def writer(number: int) -> None:
        client, pick, n = app.test_client(), random.Random(number), 0
        try:
            while True:
                turns.wait()
                if stop.is_set():
                    return
                n += 1
                write(number, n, client, pick)
                turns.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
            turns.abort()

    def between() -> None:
        turns.wait()  # the writers write
        turns.wait()  # and are done

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    try:
        seen, metas = walk(app.test_client(), "per_page=7", between=between)
        stop.set()
        turns.wait()
    finally:
        turns.abort()
        for thread in threads:
            thread.join()
    assert not errors, errors
    ids = [customer["customer_id"] for customer in seen]
    lago_ids = [customer["lago_id"] for customer in seen]
    assert len(lago_ids) == len(set(lago_ids)), "a customer was seen twice"
    for customer_id in kept:
        assert ids.count(customer_id) == 1, customer_id
    # The writers did write during the walk, so the test proves something.
    with database_of(app) as db, connections.using(db):
        stored = {c.customer_id for c in models.Customer.select(models.Customer.customer_id)}
    assert not set(doomed) & stored
    assert {f"new-{n}" for n in range(1, 41)} <= stored
    assert {f"tied-{n}" for n in range(1, 41)} <= stored
    assert any(i.startswith("tied-") for i in ids)  # some were walked into
    assert len(metas) > 50


# --- what a cursor is ---------------------------------------------------------------------


def test_a_cursor_reveals_no_id_and_no_time(app, client):
    seed(app, 3, seconds=1)
    body = get(client, "per_page=1").get_json()
    cursor = body["meta"]["next_cursor"]
    customer = body["customers"][0]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    lago_id = uuid.UUID(customer["lago_id"])
    seconds = int((START - datetime(1970, 1, 1)).total_seconds())
    for secret in (
        lago_id.bytes,
        lago_id.hex.encode(),
        customer["lago_id"].encode(),
        struct.pack(">q", seconds),
        str(seconds).encode(),
        b"default-0",
    ):
        assert secret not in raw and secret not in cursor.encode()
    # A new cursor each time for the same position.
    assert get(client, "per_page=1").get_json()["meta"]["next_cursor"] != cursor


INVALID = {
    "status": 422,
    "error": "Unprocessable entity",
    "message": "Validation error on the record",
    "error_details": {"cursor": ["value_is_invalid"]},
}


def test_a_forged_or_changed_cursor_is_a_422(app, client):
    seed(app, 3, seconds=1)
    cursor = get(client, "per_page=1").get_json()["meta"]["next_cursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    flipped = []
    for index in (0, 15, len(raw) - 1):
        changed = bytearray(raw)
        changed[index] ^= 1
        flipped.append(base64.urlsafe_b64encode(bytes(changed)).decode().rstrip("="))
    forged = base64.urlsafe_b64encode(bytes(60)).decode()
    for bad in [
        *flipped,
        forged,
        cursor[:-2],
        cursor + "AA",
        "",
        "x",
        "%FF",
        "🚀" * 20,
        cursor.upper(),
    ]:
        response = client.get("/api/v1/customers", query_string={"cursor": bad}, headers=auth())
        assert response.status_code == 422, bad
        assert response.get_json() == INVALID


def test_a_cursor_with_page_is_a_422(app, client):
    seed(app, 3, seconds=1)
    cursor = get(client, "per_page=1").get_json()["meta"]["next_cursor"]
    for query in (f"page=2&cursor={cursor}", f"page=1&per_page=1&cursor={cursor}"):
        assert get(client, query).get_json() == INVALID
    both = get(client, f"page=0&cursor={cursor}").get_json()["error_details"]
    assert both == {"page": ["value_is_invalid"], "cursor": ["value_is_invalid"]}


def test_a_cursor_in_the_list_form_is_a_422_not_a_walk_from_the_start(app, client):
    seed(app, 3, seconds=1)
    cursor = get(client, "per_page=1").get_json()["meta"]["next_cursor"]
    assert get(client, f"per_page=1&cursor[]={cursor}").get_json() == INVALID


def test_another_organizations_cursor_is_a_422_never_its_data(app, client):
    seed(app, 5, seconds=2)
    hooli = mint_key(app, "Hooli")
    seed(app, 5, seconds=2, organization="Hooli")
    theirs = get(client, "per_page=2", hooli).get_json()["meta"]["next_cursor"]
    ours = get(client, "per_page=2").get_json()["meta"]["next_cursor"]
    assert get(client, f"per_page=2&cursor={theirs}").get_json() == INVALID
    assert get(client, f"per_page=2&cursor={ours}", hooli).get_json() == INVALID
    seen, _ = walk(client, "per_page=2", hooli)
    assert {c["customer_id"] for c in seen} == {f"Hooli-{n}" for n in range(5)}


def test_a_cursor_opens_on_every_host_of_the_database_and_only_there(app, client, make_app):
    seed(app, 6, seconds=2)
    cursor = get(client, "per_page=2").get_json()["meta"]["next_cursor"]
    other_host = make_app()  # another process on the same database
    try:
        after = get(other_host.test_client(), f"per_page=2&cursor={cursor}").get_json()
        assert after["customers"] == get(client, "page=2&per_page=2").get_json()["customers"]
    finally:
        other_host.extensions["customers.db"].close_all()


def test_a_cursor_of_another_database_is_a_422(app, client, tmp_path):
    from app import create_app
    from tests.conftest import API_KEY

    seed(app, 4, seconds=2)
    elsewhere = create_app(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'elsewhere.db'}", "API_KEY": API_KEY}
    )
    try:
        seed(elsewhere, 4, seconds=2)
        theirs = get(elsewhere.test_client(), "per_page=2").get_json()["meta"]["next_cursor"]
    finally:
        elsewhere.extensions["customers.db"].close_all()
    assert get(client, f"per_page=2&cursor={theirs}").get_json() == INVALID


@pytest.mark.parametrize("per_page", [1, 1000])
def test_a_deep_cursor_page_reads_from_where_it_stands(app, client, per_page):
    seed(app, 30, seconds=30)
    listed = get(client, "per_page=1000").get_json()["customers"]
    seen, _ = walk(client, f"per_page={per_page}")
    assert seen == listed


def test_the_readme_cursor_recipe_prints_its_answer(customers_double, tmp_path):
    from tests.test_double import run_shell_recipe

    run_shell_recipe("cursor", customers_double, tmp_path)
