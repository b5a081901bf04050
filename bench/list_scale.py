"""How the read routes' cost grows with the table: list (first pages), get and delete
with N customers stored, measured in-process through Flask's test client.

    .venv/bin/python bench/list_scale.py            # 10,000 and 1,000,000 customers
    .venv/bin/python bench/list_scale.py 1000 50000 # other sizes

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


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 1_000_000]
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, {REQUESTS} requests per row")
    for size in sizes:
        measure(size)
