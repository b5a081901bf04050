"""CONTRACT.md section 3, search and filters on the list: search_term, countries[],
states[], zipcodes[], alone and together, with the counts and pages they give; the 422s;
organizations kept apart; writes seen at once; the index built by the upgrade."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from urllib.parse import urlencode

import pytest

import connections
import migrations
import models
import search
from app import create_app
from tests.conftest import auth, database_of, mint_key
from tests.test_migrations import old_database

PEOPLE = [
    # customer_id, name, legal_name, email, country, state, zipcode
    ("cus-ada", "Ada Lovelace", "Analytical Engines Ltd", "ada@engines.test", "GB", "LND", "N1"),
    ("cus-alan", "Alan Turing", "Bletchley Park", "alan@bletchley.test", "GB", "BKM", "MK3"),
    ("cus-grace", "Grace Hopper", "Cobol & Co", "grace@navy.test", "US", "NY", "10001"),
    ("cus-marie", "Marie Curie", "Radium 100% SARL", "marie@radium.test", "FR", "IDF", "75005"),
    ("cus-linus", "Linus Torvalds", "Kernel_Org", "linus@kernel.test", "US", "OR", "97201"),
    ("cus-emmy", "Emmy Noether", None, "emmy@math.test", "DE", "BY", "91054"),
    ("back\\slash", "Path C:\\Temp", "Windows Inc", None, None, None, None),
    ("cus-ecole", "École Normale", "ÉNS Paris", "ens@ecole.test", "FR", "IDF", "75005"),
]
FIELDS = ("customer_id", "name", "legal_name", "email", "country", "state", "zipcode")


def post(client, key: str | None = None, **customer) -> dict:
    response = client.post(
        "/api/v1/customers",
        json={"customer": customer},
        headers=auth(key) if key else auth(),
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["customer"]


@pytest.fixture
def people(client) -> dict[str, dict]:
    """The customers of PEOPLE, by customer_id, as the upsert answered them."""
    return {row[0]: post(client, **dict(zip(FIELDS, row, strict=True))) for row in PEOPLE}


def listed(client, query: str | dict | list, key: str | None = None) -> dict:
    if not isinstance(query, str):
        query = urlencode(query)
    response = client.get(f"/api/v1/customers?{query}", headers=auth(key) if key else auth())
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def found(client, query: str | dict | list, key: str | None = None) -> set[str]:
    """The customer_ids on the first page (of up to 1000) and checks the count with them."""
    if isinstance(query, str):
        query += "&per_page=1000"
    elif isinstance(query, dict):
        query = {**query, "per_page": 1000}
    else:
        query = [*query, ("per_page", 1000)]
    body = listed(client, query, key)
    ids = [customer["customer_id"] for customer in body["customers"]]
    assert body["meta"]["total_count"] == len(ids) == len(set(ids))
    return set(ids)


def list_order(customers: list[dict]) -> list[dict]:
    """The contract's order: newest first, then lago_id ascending."""
    ordered = sorted(customers, key=lambda c: c["lago_id"])
    return sorted(ordered, key=lambda c: c["created_at"], reverse=True)


# --- search_term --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("Ada", {"cus-ada"}),  # the start of a name
        ("lovelace", {"cus-ada"}),  # the end, another case
        ("VELA", {"cus-ada"}),  # the middle, upper case
        ("engines ltd", {"cus-ada"}),  # legal_name, with its space
        ("cus-gr", {"cus-grace"}),  # customer_id
        ("grace@navy.test", {"cus-grace"}),  # a whole email
        ("@navy.", {"cus-grace"}),
        ("  Turing  ", {"cus-alan"}),  # surrounding spaces ignored
        ("100%", {"cus-marie"}),  # % is literal
        ("%", {"cus-marie"}),
        ("0% S", {"cus-marie"}),
        ("l_o", {"cus-linus"}),  # _ is literal: not "Lovelace"'s "lo" nor "Alan"'s
        ("_", {"cus-linus"}),
        ("c:\\temp", {"back\\slash"}),  # \ is literal
        ("\\", {"back\\slash"}),
        ("k\\s", {"back\\slash"}),
        ("Cobol & Co", {"cus-grace"}),
        ('"', set()),  # a quote is a character like any other, found nowhere
        ('e "q', set()),
        ("g", {"cus-grace", "cus-ada", "cus-alan", "cus-linus"}),  # one character
        ("LI", {"cus-linus"}),  # two
        ("RA", {"cus-grace", "cus-marie"}),
        ("zz", set()),
        ("xyz", set()),
        ("engines.test", {"cus-ada"}),
        ("ada@engines.test ", {"cus-ada"}),
        (
            ".test",
            {"cus-ada", "cus-alan", "cus-grace", "cus-marie", "cus-linus", "cus-emmy", "cus-ecole"},
        ),
    ],
)
def test_search_term_is_a_case_insensitive_substring_of_four_fields(client, people, term, expected):
    assert found(client, {"search_term": term}) == expected


def test_other_fields_are_not_searched(client, people):
    assert found(client, {"search_term": "MK3"}) == set()  # a zip code
    assert found(client, {"search_term": "IDF"}) == set()  # a state
    assert found(client, {"search_term": "GB"}) == set()  # a country


def test_a_match_never_spans_two_fields(client, people):
    # "Ada Lovelace" then "Analytical...": no term joins the end of one to the next.
    assert found(client, {"search_term": "lovelaceanalytical"}) == set()
    assert found(client, {"search_term": "Lovelace Analytical"}) == set()


def test_a_blank_term_is_no_filter(client, people):
    for term in ("", "   ", "\t"):
        assert found(client, {"search_term": term}) == set(people)


def test_letters_outside_ascii_are_matched_as_sent(client, people):
    # Both backends fold ASCII letters; "É" is matched exactly (README: "Search").
    assert found(client, {"search_term": "École"}) == {"cus-ecole"}
    assert found(client, {"search_term": "ÉCOLE"}) == {"cus-ecole"}
    assert found(client, {"search_term": "éns paris"}) == set()
    assert found(client, {"search_term": "ÉNS PARIS"}) == {"cus-ecole"}


def test_many_matches_and_few_are_listed_in_the_same_order(client):
    # 60 customers in 3 seconds (ties on created_at). On SQLite a page of many matches
    # is read walking the list; of few, from the index's matches, sorted: both give the
    # same order, page after page.
    start = datetime(2024, 1, 1)
    with database_of(client.application) as db, connections.using(db):
        organization = models.ensure_organization("default")
        for n in range(60):
            name = f"{'common' if n % 3 else 'unusual'} rare-{n}"
            country = "JP" if n == 17 else "FR" if n % 2 else "DE"
            models.upsert_customer(
                organization,
                {"customer_id": f"c{n}", "name": name, "country": country},
                created_at=start + timedelta(seconds=n % 3),
            )
    everyone = listed(client, "per_page=1000")["customers"]
    assert everyone == list_order(everyone) and len(everyone) == 60
    cases = [
        ("common", None),  # 40
        ("rare-42", None),  # 1
        ("RARE-5", None),  # 11
        ("common", "FR"),  # 20
        ("unusual", "DE"),  # 10
        ("a", "DE"),  # a term of one character: no index
        (None, "JP"),  # 1
        (None, "DE"),  # 30
    ]
    for term, country in cases:
        expected = [
            c
            for c in everyone
            if (term is None or term.lower() in c["name"].lower())
            and country in (None, c["country"])
        ]
        for per_page in (1, 7, 100):
            query = {"per_page": per_page}
            if term:
                query["search_term"] = term
            if country:
                query["countries[]"] = country
            seen = []
            for page in range(1, len(expected) // per_page + 3):
                body = listed(client, {**query, "page": page})
                assert body["meta"]["total_count"] == len(expected)
                seen += body["customers"]
            assert seen == expected, (term, country, per_page)


def test_a_long_term_of_255_characters_is_served(client, people):
    name = "n" * 250 + "Zebra"
    post(client, customer_id="long", name=name)
    assert found(client, {"search_term": name[-255:]}) == {"long"}
    assert found(client, {"search_term": "n" * 255}) == set()


# --- countries[], states[], zipcodes[] ------------------------------------------------------


def test_countries_in_both_forms_either_case(client, people):
    assert found(client, "countries[]=GB") == {"cus-ada", "cus-alan"}
    assert found(client, "countries[]=gb") == {"cus-ada", "cus-alan"}
    assert found(client, "countries=gb") == {"cus-ada", "cus-alan"}
    both = {"cus-ada", "cus-alan", "cus-marie", "cus-ecole"}
    assert found(client, "countries[]=GB&countries[]=fr") == both
    assert found(client, "countries=GB&countries=FR") == both
    assert found(client, "countries[]=GB&countries=FR") == both
    assert found(client, "countries[]=JP") == set()


def test_states_and_zipcodes_are_exact(client, people):
    assert found(client, "states[]=IDF") == {"cus-marie", "cus-ecole"}
    assert found(client, "states[]=idf") == set()
    assert found(client, "states=NY&states=OR") == {"cus-grace", "cus-linus"}
    assert found(client, "zipcodes[]=75005") == {"cus-marie", "cus-ecole"}
    assert found(client, "zipcodes[]=7500") == set()
    assert found(client, "zipcodes=N1&zipcodes[]=MK3") == {"cus-ada", "cus-alan"}


def test_parameters_combine_with_and(client, people):
    assert found(client, "search_term=a&countries[]=GB") == {"cus-ada", "cus-alan"}
    assert found(client, "search_term=lovelace&countries[]=US") == set()
    assert found(client, "search_term=.test&countries[]=FR&zipcodes[]=75005") == {
        "cus-marie",
        "cus-ecole",
    }
    assert found(client, "search_term=radium&countries[]=FR&states[]=IDF") == {"cus-marie"}
    assert found(client, "countries[]=US&states[]=OR") == {"cus-linus"}
    assert found(client, "countries[]=US&states[]=IDF") == set()
    assert found(client, "search_term=cus-&countries[]=FR&countries[]=DE&states[]=BY") == {
        "cus-emmy"
    }


# --- meta and pages -------------------------------------------------------------------------


def test_meta_counts_the_filtered_set_and_pages_past_the_end(client, people):
    body = listed(client, "countries[]=GB&countries[]=FR&countries[]=US&per_page=2")
    assert [c["customer_id"] for c in body["customers"]] == [
        c["customer_id"]
        for c in list_order(
            [people[i] for i in people if people[i]["country"] in ("GB", "FR", "US")]
        )
    ][:2]
    assert body["meta"].pop("next_cursor")
    assert body["meta"] == {
        "current_page": 1,
        "next_page": 2,
        "prev_page": None,
        "total_pages": 3,
        "total_count": 6,
    }
    past = listed(client, "countries[]=GB&page=5&per_page=2")
    assert past == {
        "customers": [],
        "meta": {
            "current_page": 5,
            "next_page": None,
            "prev_page": 4,
            "total_pages": 1,
            "total_count": 2,
            "next_cursor": None,
        },
    }
    nothing = listed(client, "search_term=nobody-at-all&page=3")
    assert nothing == {
        "customers": [],
        "meta": {
            "current_page": 0,
            "next_page": None,
            "prev_page": None,
            "total_pages": 0,
            "total_count": 0,
            "next_cursor": None,
        },
    }


# --- 422 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "details"),
    [
        ("countries[]=USA", {"countries": ["not_a_valid_country_code"]}),
        ("countries=ZZ", {"countries": ["not_a_valid_country_code"]}),
        ("countries[]=", {"countries": ["not_a_valid_country_code"]}),
        ("countries[]=US&countries[]=%C4%B1t", {"countries": ["not_a_valid_country_code"]}),
        ("search_term=" + "a" * 256, {"search_term": ["value_is_too_long"]}),
        ("search_term=a%00b", {"search_term": ["value_is_invalid"]}),
        ("search_term=a%1Bb", {"search_term": ["value_is_invalid"]}),
        ("search_term=a&search_term=b", {"search_term": ["value_is_invalid"]}),
        # A one-value parameter in the list form is never silently left out.
        ("search_term[]=ada", {"search_term": ["value_is_invalid"]}),
        ("page[]=2&per_page[]=1", {"page": ["value_is_invalid"], "per_page": ["value_is_invalid"]}),
        ("states[]=" + "s" * 256, {"states": ["value_is_too_long"]}),
        ("zipcodes=%07", {"zipcodes": ["value_is_invalid"]}),
        # Not UTF-8: never read as U+FFFD and searched for.
        ("search_term=%FF", {"search_term": ["value_is_invalid"]}),
        (
            "countries[]=%C0%AF&states=%E9t%E9",
            {"countries": ["value_is_invalid"], "states": ["value_is_invalid"]},
        ),
        (
            "countries=XX&search_term=%01&page=0",
            {
                "countries": ["not_a_valid_country_code"],
                "search_term": ["value_is_invalid"],
                "page": ["value_is_invalid"],
            },
        ),
    ],
)
def test_a_bad_value_is_a_422_keyed_by_the_parameter(client, people, query, details):
    response = client.get(f"/api/v1/customers?{query}", headers=auth())
    assert response.status_code == 422
    assert response.get_json() == {
        "status": 422,
        "error": "Unprocessable entity",
        "message": "Validation error on the record",
        "error_details": details,
    }


def test_a_term_of_exactly_255_characters_and_many_values_are_accepted(client, people):
    assert listed(client, {"search_term": "a" * 255})["customers"] == []
    many = [("zipcodes", str(n)) for n in range(1000)] + [("zipcodes", "N1")]
    assert [c["customer_id"] for c in listed(client, many)["customers"]] == ["cus-ada"]


# --- organizations, writes ----------------------------------------------------------------


def test_another_organizations_customers_are_never_found_nor_counted(app, client, people):
    hooli = mint_key(app, "Hooli")
    post(client, hooli, customer_id="cus-ada", name="Ada Lovelace", country="GB", state="LND")
    post(client, hooli, customer_id="h-2", name="Gavin Belson", country="US", zipcode="10001")
    assert found(client, "search_term=lovelace", hooli) == {"cus-ada"}
    assert found(client, "search_term=gavin") == set()
    assert found(client, "search_term=g") == {"cus-grace", "cus-ada", "cus-alan", "cus-linus"}
    assert found(client, "countries[]=US") == {"cus-grace", "cus-linus"}
    assert found(client, "countries[]=US", hooli) == {"h-2"}
    assert found(client, "countries[]=GB&countries[]=us", hooli) == {"cus-ada", "h-2"}
    assert found(client, "zipcodes[]=10001") == {"cus-grace"}
    assert found(client, "states[]=LND", hooli) == {"cus-ada"}
    assert found(client, "search_term=ada&countries[]=GB", hooli) == {"cus-ada"}


def test_an_updated_customer_is_found_by_its_new_values_at_once(client, people):
    post(client, customer_id="cus-ada", name="Augusta King", email="augusta@engines.test")
    assert found(client, {"search_term": "lovelace"}) == set()
    assert found(client, {"search_term": "augusta"}) == {"cus-ada"}
    assert found(client, {"search_term": "engines ltd"}) == {"cus-ada"}  # kept
    post(client, customer_id="cus-ada", legal_name=None, country="FR")
    assert found(client, {"search_term": "engines ltd"}) == set()
    assert found(client, "countries[]=GB") == {"cus-alan"}
    assert found(client, "countries[]=FR") == {"cus-ada", "cus-marie", "cus-ecole"}
    post(client, customer_id="cus-ada", country=None)
    assert found(client, "countries[]=FR") == {"cus-marie", "cus-ecole"}
    # The same values again (most upserts) change nothing.
    post(client, customer_id="cus-alan", name="Alan Turing", email="alan@bletchley.test")
    assert found(client, {"search_term": "turing"}) == {"cus-alan"}


def test_a_deleted_customer_is_gone_at_once_and_its_id_reusable(client, people):
    assert client.delete("/api/v1/customers/cus-grace", headers=auth()).status_code == 200
    assert found(client, {"search_term": "hopper"}) == set()
    assert found(client, "countries[]=US") == {"cus-linus"}
    post(client, customer_id="cus-grace", name="Grace Brewster", country="US")
    assert found(client, {"search_term": "grace"}) == {"cus-grace"}
    assert found(client, {"search_term": "hopper"}) == set()
    assert found(client, "countries[]=US") == {"cus-grace", "cus-linus"}


def test_the_double_reset_empties_the_index(app, client, people):
    with database_of(app) as db, connections.using(db):
        models.clear_customers()
    assert found(client, {"search_term": "lovelace"}) == set()
    assert found(client, "countries[]=GB") == set()
    post(client, customer_id="cus-ada", name="Ada Lovelace", country="GB")
    assert found(client, {"search_term": "lovelace"}) == {"cus-ada"}
    assert found(client, "countries[]=GB") == {"cus-ada"}


# --- upgrades -----------------------------------------------------------------------------


def _findable(app, organizations: dict[str, str]) -> None:
    """Every stored customer of each organization (name: key) is found by its name, its
    customer_id and its country."""
    client = app.test_client()
    rows = models_rows(app)
    for organization, key in organizations.items():
        mine = [r for r in rows if r["organization_name"] == organization]
        assert mine, organization
        for row in mine:
            for term in (row["name"], row["customer_id"]):
                assert row["customer_id"] in found(client, {"search_term": term}, key)
            if row["country"]:
                assert row["customer_id"] in found(client, {"countries[]": row["country"]}, key)


def models_rows(app) -> list[dict]:
    with database_of(app) as db, connections.using(db):
        query = models.Customer.select(
            models.Customer, models.Organization.name.alias("organization_name")
        )
        return list(query.join(models.Organization).dicts())


def test_the_release_before_versions_is_upgraded_with_every_customer_findable(tmp_path, request):
    from tests.test_migrations import OLD_KEYS

    url = old_database(tmp_path, request)
    app = create_app({"DATABASE_URL": url, "API_KEY": OLD_KEYS["env_key"]})
    try:
        _findable(app, {**OLD_KEYS["keys"], "default": OLD_KEYS["env_key"]})
    finally:
        app.extensions["customers.db"].close_all()


def test_a_0_1_0_database_is_upgraded_with_every_customer_findable(make_app, database_url):
    app = make_app()
    client = app.test_client()
    for row in PEOPLE:
        post(client, **dict(zip(FIELDS, row, strict=True)))
    db = app.extensions["customers.db"]
    with connections.using(db):
        search.drop_index(db)  # the schema release 0.1.0 made: version 1
        db.execute_sql("UPDATE schema_version SET version = 1")
    db.close_all()
    upgraded = make_app()
    try:
        with connections.using(upgraded.extensions["customers.db"]) as db:
            assert migrations.version_of(db) == migrations.SCHEMA_VERSION == 2
        _findable(upgraded, {"default": None})
        assert found(upgraded.test_client(), "countries[]=FR&countries[]=GB") == {
            "cus-ada",
            "cus-alan",
            "cus-marie",
            "cus-ecole",
        }
    finally:
        upgraded.extensions["customers.db"].close_all()


@pytest.mark.sqlite_only  # PostgreSQL builds its index in one statement: a line before, one after
def test_building_the_index_logs_its_progress(app, client):
    for row in PEOPLE:
        post(client, **dict(zip(FIELDS, row, strict=True)))
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("customers")
    logger.addHandler(handler)
    db = app.extensions["customers.db"]
    try:
        with connections.using(db), db.atomic():
            search.drop_index(db)
            search.create_index(db, batch=3)
    finally:
        logger.removeHandler(handler)
    progress = [line.split(" (")[0] for line in lines]
    assert progress[:4] == [
        "building the search index of 8 customers",
        "search index: 3 of 8 customers",
        "search index: 6 of 8 customers",
        "search index: 8 of 8 customers",
    ]
    assert len(progress) == 5 and progress[4].startswith("search index built in ")
    assert found(client, {"search_term": "hopper"}) == {"cus-grace"}


@pytest.mark.postgres_only
def test_a_role_that_may_not_create_pg_trgm_is_told_what_to_run(postgres, database_url):
    import psycopg2

    name = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("DROP ROLE IF EXISTS limited_role")
        cursor.execute("CREATE ROLE limited_role LOGIN")
        cursor.execute("GRANT CREATE, USAGE ON SCHEMA public TO limited_role")
    admin.close()
    limited = database_url.replace("postgres@", "limited_role@")
    try:
        with pytest.raises(search.ExtensionRefused) as refused:
            create_app({"DATABASE_URL": limited})
        message = str(refused.value)
        assert "\n" not in message
        assert "pg_trgm" in message and "limited_role" in message
        assert f'psql -d {name} -c "CREATE EXTENSION pg_trgm;"' in message
    finally:
        postgres.drop_database(database_url)  # with what the role made in it
        postgres._admin("DROP ROLE limited_role")


# --- the README -----------------------------------------------------------------------------


def test_the_readme_search_recipe_prints_its_answer(customers_double, tmp_path):
    from tests.test_double import run_shell_recipe

    run_shell_recipe("search", customers_double, tmp_path)


def test_the_openapi_document_lists_the_parameters_as_the_contract_spells_them():
    import openapi
    from app import __version__

    operation = openapi.document(__version__)["paths"]["/api/v1/customers"]["get"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    # The plain repeated form is in the descriptions: as parameters of their own, the
    # two spellings would be two arguments of one name in a generated client.
    assert names == [
        "page",
        "per_page",
        "cursor",
        "search_term",
        "countries[]",
        "states[]",
        "zipcodes[]",
    ]
    countries = next(p for p in operation["parameters"] if p["name"] == "countries[]")
    assert "plain repeated `countries`" in countries["description"]
    pattern = re.compile(countries["schema"]["items"]["pattern"])
    assert all(pattern.fullmatch(code) for code in ("US", "us", "FR", "fR"))
    assert not any(pattern.fullmatch(code) for code in ("XX", "USA", ""))
