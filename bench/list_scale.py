"""How the read routes' cost grows with the table: list (first pages), get and delete
with N customers stored, measured in-process through Flask's test client; and the list's
search and filters at a million customers against the naive LIKE.

    .venv/bin/python bench/list_scale.py            # 10,000 and 1,000,000 customers
    .venv/bin/python bench/list_scale.py 1000 50000 # other sizes
    .venv/bin/python bench/list_scale.py --search   # search and filters, SQLite
    .venv/bin/python bench/list_scale.py --search --postgresql

Rows are bulk-loaded straight into SQLite (not through the API), shaped like the ones
bench/upsert.lua writes. Prints p50/p99 per
route and size. Bounded: a fixed number of requests per route.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app import create_app  # noqa: E402
from bench.run import bulk_load  # noqa: E402

KEY = "bench-key"
REQUESTS = 300


def timed(client, method: str, path: str, expect: int) -> float:
    began = time.perf_counter()
    response = client.open(path, method=method, headers={"Authorization": f"Bearer {KEY}"})
    elapsed = time.perf_counter() - began
    assert response.status_code == expect, (path, response.status_code, response.get_data())
    return elapsed * 1000


def measure(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        config = {"DATABASE_URL": f"sqlite:///{path}", "API_KEY": KEY, "LOG_LEVEL": "WARNING"}
        create_app(config)
        began = time.perf_counter()
        bulk_load(path, count, other_every=10)
        load_s = time.perf_counter() - began
        client = create_app(config).test_client()
        pages = (count * 9 // 10) // 100
        cases = [
            ("list page 1 of 100", "GET", "/api/v1/customers?per_page=100", 200),
            ("list page 10 of 100", "GET", "/api/v1/customers?page=10&per_page=100", 200),
            (f"list page {pages} (last)", "GET", f"/api/v1/customers?page={pages}", 200),
            ("get one", "GET", "/api/v1/customers/cus-{n}", 200),
            ("delete one", "DELETE", "/api/v1/customers/cus-{n}", 200),
        ]
        print(f"\n{count:,} customers stored (bulk load {load_s:.1f} s)")
        print(f"{'route':<28} {'p50 ms':>8} {'p99 ms':>8}")
        own = [n for n in range(count) if n % 10 != 9]  # n % 10 == 9 is another org's
        # The cursor after page `pages - 1`: the walk's page at the depth of the last one.
        deep = client.get(
            f"/api/v1/customers?page={pages - 1}&per_page=100",
            headers={"Authorization": f"Bearer {KEY}"},
        ).get_json()["meta"]["next_cursor"]
        cases.insert(
            3,
            (
                f"cursor page {pages} (last)",
                "GET",
                f"/api/v1/customers?per_page=100&cursor={deep}",
                200,
            ),
        )
        for label, method, template, expect in cases:
            samples = []
            for i in range(REQUESTS):
                # Reads hop across the table; deletes take distinct customers.
                n = own[i] if method == "DELETE" else own[(i * 7919) % len(own)]
                samples.append(timed(client, method, template.format(n=n), expect))
            samples.sort()
            p50 = statistics.median(samples)
            p99 = samples[int(len(samples) * 0.99) - 1]
            print(f"{label:<28} {p50:>8.2f} {p99:>8.2f}")


# --- Search and filters ------------------------------------------------------------------
#
# One organization of SEARCH_OWN customers and another of SEARCH_OWN / 10 (every 11th row),
# interleaved in time. The words are drawn so that a term matches a known share of the
# first organization: "user12345" about 10 customers (user12345, user123450-123459),
# a legal-name word 1%, a name word 10%; five countries, 20% each.

SEARCH_OWN = 1_000_000
TEN = ("amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "ivory", "jasper")
SYLLABLES = ("ba", "ke", "li", "mo", "nu", "ra", "se", "ti", "vo", "zu")
HUNDRED = tuple(f"{a}{b}ton" for a in SYLLABLES for b in SYLLABLES)
FIVE = ("US", "FR", "DE", "GB", "JP")
SEARCH_CASES = [
    # label, query string, naive LIKE term (None: no naive counterpart)
    ("term ~10 (user12345)", "search_term=user12345", "user12345"),
    ("term ~1% (baketon)", "search_term=baketon", "baketon"),
    ("term ~10% (amber)", "search_term=amber", "amber"),
    ("term 2 chars (zu)", "search_term=zu", "zu"),
    ("countries[]=FR", "countries[]=FR", None),
    ("countries[]=FR&DE", "countries[]=FR&countries[]=DE", None),
    ("term ~10 + country", "search_term=user12345&countries[]=FR", "user12345"),
    ("term ~1% + country", "search_term=baketon&countries[]=FR", "baketon"),
    ("no filter", "", None),
]


def search_row(n: int) -> tuple:
    """customer_id, name, legal_name, email, country, state, zipcode of customer n."""
    return (
        f"cus-{n}",
        f"{TEN[n % 10].title()} {n % 7919}",
        f"{HUNDRED[(n // 10) % 100].title()} Holdings",
        f"user{n}@example.test",
        FIVE[n % 5],
        f"S{n % 50}",
        f"{n % 100000:05d}",
    )


def is_other(n: int) -> bool:
    return n % 11 == 10


SEARCH_COLUMNS = "customer_id, name, legal_name, email, country, state, zipcode"


def load_search_sqlite(path: str, own: int) -> None:
    import sqlite3

    total = own * 11 // 10
    start = datetime(2020, 1, 1)
    with sqlite3.connect(path) as conn:
        (org,) = conn.execute("SELECT id FROM organization WHERE name = 'default'").fetchone()
        (other,) = conn.execute(
            "INSERT INTO organization (name, created_at) VALUES ('other', ?) RETURNING id",
            (start.isoformat(" "),),
        ).fetchone()

        def rows():
            for n in range(total):
                at = datetime.fromtimestamp(start.timestamp() + n // 10).isoformat(" ")
                owner = other if is_other(n) else org
                yield (uuid.uuid4().hex, owner, *search_row(n), at, at)

        conn.executemany(
            f"INSERT INTO customer (lago_id, organization_id, {SEARCH_COLUMNS},"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )


def load_search_postgres(url: str, own: int) -> None:
    import psycopg2

    ten = "ARRAY[" + ", ".join(f"'{w.title()}'" for w in TEN) + "]"
    hundred = "ARRAY[" + ", ".join(f"'{w.title()}'" for w in HUNDRED) + "]"
    five = "ARRAY[" + ", ".join(f"'{c}'" for c in FIVE) + "]"
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT id FROM organization WHERE name = 'default'")
            (org,) = cursor.fetchone()
            cursor.execute(
                "INSERT INTO organization (name, created_at) VALUES ('other', now()) RETURNING id"
            )
            (other,) = cursor.fetchone()
            cursor.execute("ALTER TABLE customer DISABLE TRIGGER customer_counted")
            cursor.execute(
                f"""INSERT INTO customer (lago_id, organization_id, {SEARCH_COLUMNS},
                created_at, updated_at)
                SELECT gen_random_uuid(), CASE WHEN n %% 11 = 10 THEN %s ELSE %s END,
                'cus-' || n, ({ten})[n %% 10 + 1] || ' ' || (n %% 7919),
                ({hundred})[(n / 10) %% 100 + 1] || ' Holdings', 'user' || n || '@example.test',
                ({five})[n %% 5 + 1], 'S' || (n %% 50), lpad((n %% 100000)::text, 5, '0'),
                timestamp '2020-01-01' + (n / 10) * interval '1 second',
                timestamp '2020-01-01' + (n / 10) * interval '1 second'
                FROM generate_series(0, %s) AS n""",
                (other, org, own * 11 // 10 - 1),
            )
            cursor.execute("ALTER TABLE customer ENABLE TRIGGER customer_counted")
            cursor.execute(
                "UPDATE organization o SET customer_count ="
                " (SELECT count(*) FROM customer c WHERE c.organization_id = o.id)"
            )
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def without_search_index(db) -> None:
    """Take the database back to schema version 1 (no search or country index), as a
    database of release 0.1.0 is."""
    import connections
    import search

    with connections.using(db):
        search.drop_index(db)
        db.execute_sql("UPDATE schema_version SET version = 1")


def database_size(db) -> int:
    import connections

    with connections.using(db):
        if connections.is_sqlite(db):
            return db.execute_sql("SELECT sum(pgsize) FROM dbstat").fetchone()[0]
        return db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]


def naive_sql(db, term: str, country: str | None) -> tuple[str, str, list]:
    """Lago's way: ILIKE '%term%' on each of the four columns, a full scan."""
    import connections
    import search

    like = "LIKE" if connections.is_sqlite(db) else "ILIKE"
    p = db.param
    where = (
        "organization_id = {p} AND ("
        + " OR ".join(f"{c} {like} {{p}}" for c in search.SEARCHED)
        + ")"
    )
    where = where.format(p=p)
    params = [1, *[f"%{term}%"] * 4]
    if country:
        where += f" AND country = {p}"
        params.append(country)
    page = f"SELECT * FROM customer WHERE {where} ORDER BY created_at DESC, lago_id LIMIT 100"
    return page, f"SELECT count(*) FROM customer WHERE {where}", params


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.99) - 1)]


def search_bench(argv: list[str]) -> None:
    import connections
    import migrations

    own = SEARCH_OWN
    for arg in argv:
        if arg.startswith("--customers="):
            own = int(arg.split("=", 1)[1])
    postgres = "--postgresql" in argv
    repeats = int(os.environ.get("SEARCH_REPEATS", "50"))
    naive_repeats = int(os.environ.get("NAIVE_REPEATS", "5"))
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        if postgres:
            from bench.run import Postgres

            server = Postgres()
            url = server.database()
        else:
            url = f"sqlite:///{os.path.join(tmp, 'search.db')}"
        config = {"DATABASE_URL": url, "API_KEY": KEY, "LOG_LEVEL": "WARNING"}
        try:
            db = create_app(config).extensions["customers.db"]
            without_search_index(db)
            db.close_all()
            began = time.perf_counter()
            if postgres:
                load_search_postgres(url, own)
            else:
                load_search_sqlite(os.path.join(tmp, "search.db"), own)
            print(
                f"{datetime.now():%Y-%m-%d %H:%M}, {'PostgreSQL' if postgres else 'SQLite'},"
                f" {own:,} + {own // 10:,} customers loaded in {time.perf_counter() - began:.0f} s"
            )
            db = connections.open_database(url)
            before = database_size(db)
            began = time.perf_counter()
            migrations.upgrade(db)  # schema version 2: builds the indexes, logs progress
            built = time.perf_counter() - began
            after = database_size(db)
            per_million = 1_000_000 / (own * 11 // 10) / 2**20
            print(
                f"migration to schema 2 (search index): {built:.1f} s;"
                f" database {before * per_million:.0f} MB per million customers before,"
                f" {after * per_million:.0f} MB after"
            )
            db.close_all()
            run_search_cases(config, url, repeats, naive_repeats)
        finally:
            if server is not None:
                server.stop()


def run_search_cases(config: dict, url: str, repeats: int, naive_repeats: int) -> None:
    import connections

    client = create_app(config).test_client()
    db = connections.open_database(url)
    print(
        f"{'page 1 of 100, with meta':<26} {'count':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'naive p50':>10} {'naive/ours':>10}"
    )
    for label, query, naive_term in SEARCH_CASES:
        path = f"/api/v1/customers?per_page=100&{query}"
        first = client.get(path, headers={"Authorization": f"Bearer {KEY}"}).get_json()
        samples = [timed(client, "GET", path, 200) for _ in range(repeats)]
        p50, p99 = percentiles(samples)
        naive = ""
        if naive_term is not None:
            country = "FR" if "countries" in query else None
            page_sql, count_sql, params = naive_sql(db, naive_term, country)
            times = []
            with connections.using(db):
                for _ in range(naive_repeats):
                    began = time.perf_counter()
                    rows = db.execute_sql(page_sql, params).fetchall()
                    (count,) = db.execute_sql(count_sql, params).fetchone()
                    times.append((time.perf_counter() - began) * 1000)
            assert count == first["meta"]["total_count"], (label, count, first["meta"])
            assert len(rows) == len(first["customers"])
            naive_p50 = statistics.median(times)
            naive = f"{naive_p50:>10.1f} {naive_p50 / p50:>9.0f}x"
        total = first["meta"]["total_count"]
        print(f"{label:<26} {total:>8,} {p50:>8.2f} {p99:>8.2f} {naive}")
    db.close_all()
    headers = {"Authorization": f"Bearer {KEY}"}
    deep = client.get("/api/v1/customers?page=8999&per_page=100", headers=headers).get_json()
    for label, path in [
        ("OFFSET page 9,000", "/api/v1/customers?page=9000&per_page=100"),
        (
            "cursor page 9,000",
            f"/api/v1/customers?per_page=100&cursor={deep['meta']['next_cursor']}",
        ),
    ]:
        p50, p99 = percentiles([timed(client, "GET", path, 200) for _ in range(repeats)])
        print(f"{label:<26} {'':>8} {p50:>8.2f} {p99:>8.2f}")


if __name__ == "__main__":
    if "--search" in sys.argv[1:]:
        search_bench(sys.argv[1:])
        sys.exit(0)
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 1_000_000]
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, {REQUESTS} requests per row")
    for size in sizes:
        measure(size)
