"""What the `customers_double` fixture costs a test, over the same test against a double
started once and never reset.

    .venv/bin/python bench/fixture_overhead.py [tests] [rounds]

Writes a throwaway suite of N tests (default 300), each making one upsert over HTTP, in
two versions: one asks for `customers_double` (a reset before each test), the other for
the session's double as it is. Runs each version with pytest, alternating, R rounds
(default 3), and prints the median wall time of each and the difference per test. Both
runs start the double once, so the difference is what the fixture adds to every test.

On a busy machine that difference drowns in noise, so it also times the fixture's own
work directly: the reset it sends before each test (over HTTP, after one upsert), N
times, median and mean.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TEST = """
import http.client
import json

import pytest


@pytest.mark.parametrize("n", range({tests}))
def test_one_upsert(n, {fixture}):
    double = {fixture}
    host, port = double.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({{"customer": {{"customer_id": f"c-{{n}}", "name": "N"}}}})
    connection.request("POST", "/api/v1/customers", body=body, headers=double.headers)
    assert connection.getresponse().status == 200
    connection.close()
"""


def run_suite(path: Path) -> tuple[float, float]:
    """Wall time, and CPU time of the pytest process and the double it starts (a busy
    machine stretches the first, hardly the second)."""
    cpu_before = _children_cpu()
    began = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "customers_registry.pytest_plugin",
            "-p",
            "no:cacheprovider",
            str(path),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=path.parent,
    )
    return time.perf_counter() - began, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def direct_cost(tests: int) -> None:
    """The fixture's per-test work, timed in this process against a double process."""
    sys.path.insert(0, str(REPO))
    from customers_registry.pytest_plugin import DoubleProcess

    process = DoubleProcess()
    double = process.start()
    try:
        host, port = double.url.removeprefix("http://").split(":")
        body = json.dumps({"customer": {"customer_id": "c", "name": "N"}})
        took = []
        for _ in range(tests):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("POST", "/api/v1/customers", body=body, headers=double.headers)
            connection.getresponse().read()
            connection.close()
            began = time.perf_counter()
            double.reset()
            took.append((time.perf_counter() - began) * 1000)
    finally:
        process.stop()
    print(
        f"the reset before each test, direct:  median {statistics.median(took):.2f} ms, "
        f"mean {statistics.mean(took):.2f} ms"
    )


def main() -> None:
    tests = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    workdir = Path(tempfile.mkdtemp(prefix="customers-fixture-bench-"))
    suites = {}
    for fixture in ("customers_double", "customers_double_server"):
        path = workdir / f"test_{fixture}.py"
        path.write_text(TEST.format(tests=tests, fixture=fixture))
        suites[fixture] = path
    times: dict[str, list[float]] = {fixture: [] for fixture in suites}
    cpu: dict[str, list[float]] = {fixture: [] for fixture in suites}
    for _ in range(rounds):
        for fixture, path in suites.items():
            wall, used = run_suite(path)
            times[fixture].append(wall)
            cpu[fixture].append(used)
    fresh = statistics.median(times["customers_double"])
    once = statistics.median(times["customers_double_server"])
    print(
        f"{datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, {tests} tests, {rounds} rounds"
    )
    print(f"customers_double (reset per test): median {fresh:.2f} s")
    print(f"started once, never reset:         median {once:.2f} s")
    print(f"fixture cost per test: {(fresh - once) / tests * 1000:.2f} ms")
    # The fastest run of each is the one least disturbed by whatever else the machine ran.
    fastest = min(times["customers_double"]) - min(times["customers_double_server"])
    print(f"fixture cost per test, fastest runs: {fastest / tests * 1000:.2f} ms")
    cpu_cost = statistics.median(cpu["customers_double"]) - statistics.median(
        cpu["customers_double_server"]
    )
    print(f"fixture CPU per test (pytest + double): {cpu_cost / tests * 1000:.2f} ms")
    direct_cost(tests)


if __name__ == "__main__":
    main()
