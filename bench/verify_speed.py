"""How long `POST /_double/verify` takes over a full request log.

    .venv/bin/python bench/verify_speed.py [rounds]

Starts `double.py` as the command does, records 1,000 upserts (contract-shaped bodies,
the double's key), then times each verification below R times (default 20) from the
client, on one keep-alive-free connection per call as the fixture makes them, and prints
the median and the worst. The target: under 50 ms over 1,000 recorded requests.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECORDED = 1000

CASES = {
    "one match (json subset + path)": {
        "method": "POST",
        "path": "/api/v1/customers",
        "json": {"customer": {"customer_id": "cus-500", "country": "FR"}},
    },
    "no match, 5 near misses": {
        "method": "POST",
        "path": "/api/v1/customers",
        "json": {"customer": {"customer_id": "cus-500", "name": "Nobody"}},
        "headers": {"Authorization": "Bearer test-key"},
    },
    "pattern, count=1000 (all listed)": {"path": "/api/v1/{what}", "count": RECORDED},
}


def call(port: int, method: str, path: str, body: object) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "Authorization": "Bearer test-key"}
        connection.request(method, path, json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    process = subprocess.Popen(
        [sys.executable, str(REPO / "double.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline().strip().rsplit(":", 1)[1])
        for n in range(RECORDED):
            customer = {
                "customer_id": f"cus-{n}",
                "name": f"Customer {n}",
                "country": "FR",
                "email": f"billing-{n}@example.com",
                "city": "Lyon",
                "zipcode": "69001",
            }
            assert call(port, "POST", "/api/v1/customers", {"customer": customer})[0] == 200
        print(
            f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
            f"{RECORDED} requests recorded, {rounds} rounds"
        )
        for name, criteria in CASES.items():
            took = []
            for _ in range(rounds):
                began = time.perf_counter()
                status, body = call(port, "POST", "/_double/verify", criteria)
                took.append((time.perf_counter() - began) * 1000)
            print(
                f"{name:34} {status}  median {statistics.median(took):6.1f} ms, "
                f"max {max(took):6.1f} ms, {len(body) / 1024:7.0f} KiB"
            )
    finally:
        process.terminate()
        process.wait(10)


if __name__ == "__main__":
    main()
