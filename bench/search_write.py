"""What the search index costs a write, in-process: new customers upserted through
models.upsert_customer (the service's one statement) into a SQLite database with the
index (schema version 2) and into one without it (the schema of release 0.1.0), the two
alternated, with SQLITE_SYNCHRONOUS=OFF so that the figure is CPU, not the disk.

    .venv/bin/python bench/search_write.py [--customers 6000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import connections  # noqa: E402
import migrations  # noqa: E402
import models  # noqa: E402
import search  # noqa: E402


def per_insert_us(folder: Path, customers: int, indexed: bool) -> float:
    db = connections.open_database(f"sqlite:///{folder / 'bench.db'}", synchronous="OFF")
    try:
        migrations.upgrade(db)
        with connections.using(db):
            if not indexed:
                search.drop_index(db)
            organization = models.ensure_organization("bench")
            started = time.perf_counter()
            for n in range(customers):
                fields = {
                    "customer_id": f"cus-{n}",
                    "name": f"Customer {n}",
                    "legal_name": f"Customer {n} LLC",
                    "email": f"c{n}@example.test",
                    "country": ("US", "FR", "DE", "GB", "JP")[n % 5],
                    "city": "Springfield",
                    "zipcode": f"{n % 100000:05d}",
                }
                models.upsert_customer(organization, fields)
            return (time.perf_counter() - started) / customers * 1e6
    finally:
        db.close_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for indexed in (False, True) if round_ % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as folder:
                times[indexed].append(per_insert_us(Path(folder), args.customers, indexed))
    without, with_index = statistics.median(times[False]), statistics.median(times[True])
    print(f"new customer, no search index:   {without:6.1f} us (median of {args.rounds})")
    print(f"new customer, with search index: {with_index:6.1f} us (median of {args.rounds})")
    print(f"the index's cost: {with_index - without:+.1f} us a new customer")


if __name__ == "__main__":
    main()
