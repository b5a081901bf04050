"""The benchmark: the service against its floor, side by side, in one run.

    make bench         # the full run (about 5 minutes), writes bench/results.md and .png
    make bench-smoke   # a few seconds a profile, no scale runs: proves the bench still runs
    make bench BASELINE=22bdb7c   # upserts, this checkout against that commit, alternately

Everything talks to 127.0.0.1 only and every profile is bounded in time. The service
runs under the project's own gunicorn.conf.py on SQLite, a fresh database per profile;
the floor (bench/floor.py: parse the JSON body, answer a fixed 200) and the bare stack
(bench/bare.py: the schema and one SQLite upsert, nothing else) under the same
settings. wrk drives them all (Debian's package; installed when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SERVICE, BARE, FLOOR = "app:create_app()", "bench.bare:app", "bench.floor:app"
TARGETS = {SERVICE: "service", BARE: "bare", FLOOR: "floor"}
REPO = BENCH.parent
KEY = "bench-key-0123456789"


@dataclass
class Result:
    profile: str
    target: str
    connections: int
    rps: float
    p50: float
    p99: float
    errors: int
    rss_mb: list[float] = field(default_factory=list)
    cpu_us: float = 0.0  # the workers' CPU time (user + system) per request
    db_cpu_us: float = 0.0  # PostgreSQL's processes' CPU time per request (0: SQLite)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
        shell=True,
        check=True,
    )
    return shutil.which("wrk") or "wrk"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn with the project's config, serving the service or the floor (from `root`:
    this checkout, or a baseline's copy)."""

    def __init__(self, app: str, workdir: Path, env: dict[str, str], root: Path = REPO):
        self.port = free_port()
        self.log = open(workdir / f"{app.split(':')[0]}-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(root / "gunicorn.conf.py"), app],
            cwd=root,
            env={**os.environ, **env, "BIND": f"127.0.0.1:{self.port}"},
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start") from None
                time.sleep(0.1)

    def workers(self) -> list[str]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return children.read_text().split()

    def worker_rss_mb(self) -> list[float]:
        sizes = []
        for pid in self.workers():
            status = Path(f"/proc/{pid}/status").read_text()
            sizes.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)
        return sorted(sizes)

    def worker_cpu_seconds(self) -> float:
        """User + system CPU time the workers have used so far (threads included)."""
        return cpu_seconds(self.workers())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


def cpu_seconds(pids: list[str]) -> float:
    """User + system CPU time these processes have used so far (threads included)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        ticks += int(stat[11]) + int(stat[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(port: int, script: str, connections: int, seconds: float, env: dict) -> dict:
    threads = 1 if connections == 1 else 2
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / script),
            f"http://127.0.0.1:{port}",
        ],
        env={**os.environ, "API_KEY": KEY, "BENCH_DIR": str(BENCH), **env},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


# What bench/upsert.lua sends for customer n, so that stored customers look like the
# ones the upserts write: an upsert of a bulk-loaded customer then changes its size no
# more than one of a customer the API wrote (a row that grows splits its page, and the
# scale runs would measure that rather than the size of the table).
COUNTRIES = ("US", "FR", "DE", "GB", "JP", "BR", "IN", "CA")


def bench_customer(n: int) -> tuple:
    return (
        f"cus-{n}",
        f"Customer {n}",
        f"{n} Main St",
        "Springfield",
        COUNTRIES[n % len(COUNTRIES)],
        f"c{n}@example.test",
        f"Customer {n} LLC",
        f"LN-{n}",
        f"https://example.test/{n}.png",
        f"+1 555 {n % 10000:04d}",
        "CA",
        f"https://example.test/{n}",
        f"{n % 100000:05d}",
    )


def bulk_load(path: Path, count: int, other_every: int = 0) -> None:
    """`count` customers straight into SQLite (not through the API), ten a second so that
    ties on created_at are common; the count trigger keeps each organization's total.
    All belong to the default organization, or, with `other_every`, one in that many to
    a second one, 'other'."""
    start = datetime.datetime(2020, 1, 1)
    with sqlite3.connect(path) as conn:
        (org,) = conn.execute("SELECT id FROM organization WHERE name = 'default'").fetchone()
        other = org
        if other_every:
            (other,) = conn.execute(
                "INSERT INTO organization (name, created_at) VALUES ('other', ?) RETURNING id",
                (start.isoformat(" "),),
            ).fetchone()

        def rows() -> Iterator[tuple]:
            for n in range(count):
                at = (start + datetime.timedelta(seconds=n // 10)).isoformat(" ")
                owner = other if other_every and n % other_every == other_every - 1 else org
                yield (uuid.uuid4().hex, owner, *bench_customer(n), at, at)

        conn.executemany(
            "INSERT INTO customer (lago_id, organization_id, customer_id, name,"
            " address_line1, city, country, email, legal_name, legal_number, logo_url,"
            " phone, state, url, zipcode, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )


def service_env(db: Path) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{db}", "API_KEY": KEY, "LOG_LEVEL": "WARNING"}


class Postgres:
    """The bench's own PostgreSQL (Debian's, as the tests run it: tests/servers.py), on
    127.0.0.1, default settings but for `fsync` and `synchronous_commit`, which stay on:
    a commit is on disk before the 200, as with SQLITE_SYNCHRONOUS=FULL."""

    def __init__(self) -> None:
        sys.path.insert(0, str(REPO))
        from tests.servers import PostgresServer

        self.server = PostgresServer().start()

    def database(self) -> str:
        return self.server.create_database()

    def drop(self, url: str) -> None:
        self.server.drop_database(url)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its backends (ended backends not counted: the
        service's pooled connections live through a profile)."""
        main = str(self.server.process.pid)
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        return cpu_seconds([main, *children])

    def stop(self) -> None:
        self.server.stop()


def bulk_load_postgres(url: str, count: int) -> None:
    """`count` customers of the upserts' shape (bench_customer) straight into PostgreSQL,
    ten a second; the count trigger is off meanwhile and the count set once."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT id FROM organization WHERE name = 'default'")
            (org,) = cursor.fetchone()
            cursor.execute("ALTER TABLE customer DISABLE TRIGGER customer_counted")
            cursor.execute(
                """INSERT INTO customer (lago_id, organization_id, customer_id, name,
                address_line1, city, country, email, legal_name, legal_number, logo_url,
                phone, state, url, zipcode, created_at, updated_at)
                SELECT gen_random_uuid(), %s, 'cus-' || n, 'Customer ' || n, n || ' Main St',
                'Springfield', (ARRAY['US','FR','DE','GB','JP','BR','IN','CA'])[n %% 8 + 1],
                'c' || n || '@example.test', 'Customer ' || n || ' LLC', 'LN-' || n,
                'https://example.test/' || n || '.png',
                '+1 555 ' || lpad((n %% 10000)::text, 4, '0'),
                'CA', 'https://example.test/' || n, lpad((n %% 100000)::text, 5, '0'),
                timestamp '2020-01-01' + (n / 10) * interval '1 second',
                timestamp '2020-01-01' + (n / 10) * interval '1 second'
                FROM generate_series(0, %s) AS n""",
                (org, count - 1),
            )
            cursor.execute("ALTER TABLE customer ENABLE TRIGGER customer_counted")
            cursor.execute(
                "UPDATE organization SET customer_count = %s WHERE id = %s", (count, org)
            )
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        conn.close()


@contextlib.contextmanager
def search_index_built_after(url: str) -> Iterator[None]:
    """The database at `url` taken back to schema version 1 (no search index) for the
    duration, then upgraded again: the index built once from every row."""
    sys.path.insert(0, str(REPO))
    import connections
    import migrations
    import search

    db = connections.open_database(url)
    try:
        with connections.using(db):
            search.drop_index(db)
            db.execute_sql("UPDATE schema_version SET version = 1")
        yield
        migrations.upgrade(db)
    finally:
        db.close_all()


def run_profile(
    name: str,
    app: str,
    script: str,
    connections: int,
    seconds: float,
    stored: int,
    env: dict,
    postgres: Postgres | None = None,
    root: Path = REPO,
) -> Result:
    with tempfile.TemporaryDirectory(prefix="customers-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.db"
        server_env = {**service_env(db), **env}
        if postgres is not None:
            server_env["DATABASE_URL"] = postgres.database()
        if app.startswith("app:") and stored:
            # Create the schema, load the rows, then serve them.
            subprocess.run(
                [sys.executable, "-c", "import app; app.create_app()"],
                cwd=REPO,
                env={**os.environ, **server_env},
                check=True,
            )
            # The search index is built after the rows, as an upgrade to schema 2 builds
            # it: kept row by row through its triggers, a million take many minutes.
            with search_index_built_after(server_env["DATABASE_URL"]):
                if postgres is not None:
                    bulk_load_postgres(server_env["DATABASE_URL"], stored)
                else:
                    bulk_load(db, stored)
        server = Server(app, workdir, server_env, root)
        try:
            pool = {"POOL": str(max(stored, 10_000))}
            wrk(server.port, script, connections, min(2, seconds), {**pool, **env})  # warm up
            cpu_before = server.worker_cpu_seconds()
            db_before = postgres.cpu_seconds() if postgres is not None else 0.0
            figures = wrk(server.port, script, connections, seconds, {**pool, **env})
            cpu = server.worker_cpu_seconds() - cpu_before
            db_cpu = postgres.cpu_seconds() - db_before if postgres is not None else 0.0
            rss = server.worker_rss_mb()
        finally:
            server.stop()
            if postgres is not None:
                postgres.drop(server_env["DATABASE_URL"])
    errors = sum(int(figures[k]) for k in figures if k.endswith("errors") or k == "timeouts")
    target = TARGETS[app]
    requests = figures["requests"]
    return Result(
        name,
        target,
        connections,
        figures["rps"],
        figures["p50_ms"],
        figures["p99_ms"],
        errors,
        rss,
        cpu / requests * 1e6 if requests else 0.0,
        db_cpu / requests * 1e6 if requests else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes; no scale")
    parser.add_argument("--seconds", type=float, default=10, help="per profile")
    parser.add_argument(
        "--only",
        metavar="PROFILE",
        help='run only the profiles whose name starts so (e.g. "upsert, 16 conns"), no report',
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="compare upserts (FULL and NORMAL) with this git revision (or a folder holding"
        " a copy of the tree), alternately; no report",
    )
    parser.add_argument("--rounds", type=int, default=6, help="with --baseline")
    args = parser.parse_args()
    ensure_wrk()
    if args.baseline:
        compare(args.baseline, args.rounds, args.seconds)
        return
    seconds = 2 if args.smoke else args.seconds
    normal = {"SQLITE_SYNCHRONOUS": "NORMAL"}
    plan = [
        ("upsert, 1 conn", FLOOR, "upsert.lua", 1, 0, {}),
        ("upsert, 1 conn", SERVICE, "upsert.lua", 1, 0, {}),
        ("upsert, 16 conns", FLOOR, "upsert.lua", 16, 0, {}),
        ("upsert, 16 conns", BARE, "upsert.lua", 16, 0, {}),
        ("upsert, 16 conns", SERVICE, "upsert.lua", 16, 0, {}),
        ("mixed, 16 conns", SERVICE, "read.lua", 16, 10_000, {"MODE": "mixed"}),
    ]
    sizes = [200] if args.smoke else [10_000, 1_000_000]
    for size in sizes:
        plan += [
            (f"upsert, {size:,} stored", SERVICE, "upsert.lua", 16, size, {}),
            (f"list p1, {size:,} stored", SERVICE, "read.lua", 1, size, {"MODE": "list"}),
        ]
    plan += [
        ("upsert, 16 conns, NORMAL", BARE, "upsert.lua", 16, 0, normal),
        ("upsert, 16 conns, NORMAL", SERVICE, "upsert.lua", 16, 0, normal),
    ]
    pg = {"BACKEND": "postgresql"}
    plan += [
        ("PostgreSQL: upsert, 1 conn", SERVICE, "upsert.lua", 1, 0, pg),
        ("PostgreSQL: upsert, 16 conns", SERVICE, "upsert.lua", 16, 0, pg),
        *(
            (
                f"PostgreSQL: list p1, {size:,} stored",
                SERVICE,
                "read.lua",
                1,
                size,
                {**pg, "MODE": "list"},
            )
            for size in sizes
        ),
    ]
    if args.only:
        plan = [step for step in plan if step[0].startswith(args.only)]
    postgres = Postgres() if any(step[5].get("BACKEND") == "postgresql" for step in plan) else None
    results = []
    for name, app, script, connections, stored, env in plan:
        on_postgres = postgres if env.get("BACKEND") == "postgresql" else None
        result = run_profile(name, app, script, connections, seconds, stored, env, on_postgres)
        results.append(result)
        database_cpu = (
            f"  PostgreSQL CPU {result.db_cpu_us:4.0f} us/req" if result.db_cpu_us else ""
        )
        print(
            f"{result.profile:<28} {result.target:<8} {result.rps:>9.1f} req/s"
            f"  p50 {result.p50:6.2f} ms  p99 {result.p99:6.2f} ms  errors {result.errors}"
            f"  worker CPU {result.cpu_us:4.0f} us/req{database_cpu}"
            f"  worker RSS {', '.join(f'{mb:.0f}' for mb in result.rss_mb)} MB",
            flush=True,
        )
    if postgres is not None:
        postgres.stop()
    if not args.only:
        report(results, args.smoke)


def compare(rev: str, rounds: int, seconds: float) -> None:
    """The upsert profile (16 connections, FULL then NORMAL) against `rev`'s service (its
    own app and gunicorn.conf.py, from `git archive`, on this venv) and this checkout's,
    alternately, `rounds` times each, the order swapped every round so that neither
    always runs first. Prints each run, then both medians and their ratio: req/s, and the
    workers' CPU time per request, the steadier figure on a busy machine."""
    import statistics

    with tempfile.TemporaryDirectory(prefix="customers-baseline-") as tmp:
        root = Path(tmp)
        if Path(rev).is_dir():  # a copy of the tree made by hand (an experiment)
            root = Path(rev).resolve()
        else:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        sides = {rev: root, "this checkout": REPO}
        for profile, env in (("FULL", {}), ("NORMAL", {"SQLITE_SYNCHRONOUS": "NORMAL"})):
            runs: dict[str, list[Result]] = {side: [] for side in sides}
            for n in range(rounds):
                order = list(sides) if n % 2 == 0 else list(sides)[::-1]
                for side in order:
                    result = run_profile(
                        f"upsert, 16 conns, {profile}",
                        SERVICE,
                        "upsert.lua",
                        16,
                        seconds,
                        0,
                        env,
                        root=sides[side],
                    )
                    runs[side].append(result)
                    print(
                        f"{profile:<7} round {n + 1} {side:<14} {result.rps:8.1f} req/s"
                        f"  worker CPU {result.cpu_us:5.0f} us/req  errors {result.errors}",
                        flush=True,
                    )
            medians = {
                side: (
                    statistics.median(r.rps for r in results),
                    statistics.median(r.cpu_us for r in results),
                )
                for side, results in runs.items()
            }
            (base_rps, base_cpu), (rps, cpu) = medians[rev], medians["this checkout"]
            print(
                f"{profile}: median {rev} {base_rps:.1f} req/s, {base_cpu:.0f} us/req;"
                f" this checkout {rps:.1f} req/s, {cpu:.0f} us/req;"
                f" ratio {rps / base_rps:.3f}x req/s, {cpu / base_cpu:.3f}x CPU per request",
                flush=True,
            )


def report(results: list[Result], smoke: bool) -> None:
    by = {(r.profile, r.target): r for r in results}
    lines = [
        f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
        f"gunicorn.conf.py on SQLite (SQLITE_SYNCHRONOUS=FULL unless named), and on a local"
        " PostgreSQL 15 (fsync and synchronous_commit on) where the profile says so.",
        "",
        "| profile | target | req/s | p50 ms | p99 ms | errors | worker CPU us/req"
        " | PostgreSQL CPU us/req | worker RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = ", ".join(f"{mb:.0f}" for mb in r.rss_mb)
        lines.append(
            f"| {r.profile} | {r.target} | {r.rps:.0f} | {r.p50:.2f} | {r.p99:.2f} |"
            f" {r.errors} | {r.cpu_us:.0f} | {f'{r.db_cpu_us:.0f}' if r.db_cpu_us else '-'}"
            f" | {rss} |"
        )
    lines.append("")
    floor16 = by[("upsert, 16 conns", "floor")]
    for profile, floor in (
        ("upsert, 1 conn", by[("upsert, 1 conn", "floor")]),
        ("upsert, 16 conns", floor16),
        ("upsert, 16 conns, NORMAL", floor16),
    ):
        for target in ("service", "bare"):
            if (profile, target) in by:
                r = by[(profile, target)]
                lines.append(
                    f"- {profile}: {target}/floor {r.rps / floor.rps:.2f}x req/s,"
                    f" p99 {r.p99 / floor.p99:.2f}x, errors {r.errors}"
                )
    if not smoke:
        small, big = (
            by[("upsert, 10,000 stored", "service")],
            by[("upsert, 1,000,000 stored", "service")],
        )
        lines.append(f"- upserts at 1,000,000 vs 10,000 stored: {big.rps / small.rps:.2f}x req/s")
        listed = by[("list p1, 1,000,000 stored", "service")]
        lines.append(f"- list p1 at 1,000,000 stored, 1 conn: p50 {listed.p50:.2f} ms")
    for profile in ("upsert, 1 conn", "upsert, 16 conns"):
        pg_key = (f"PostgreSQL: {profile}", "service")
        if pg_key in by:
            pg, lite = by[pg_key], by[(profile, "service")]
            lines.append(
                f"- {profile}: PostgreSQL/SQLite {pg.rps / lite.rps:.2f}x req/s,"
                f" p99 {pg.p99:.2f} against {lite.p99:.2f} ms"
            )
    lines.append(f"- largest worker RSS: {max(mb for r in results for mb in r.rss_mb):.0f} MB")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if not smoke:
        (BENCH / "results.md").write_text(text)
        plot(results)


def plot(results: list[Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.profile}\n({r.target})" for r in results]
    palette = {"floor": "#999999", "bare": "#a0aec0", "service": "#2b6cb0"}
    colors = [palette[r.target] for r in results]
    figure, (rps_axis, p99_axis) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    rps_axis.bar(labels, [r.rps for r in results], color=colors)
    rps_axis.set_ylabel("requests/s")
    p99_axis.bar(labels, [r.p99 for r in results], color=colors)
    p99_axis.set_ylabel("p99 latency (ms)")
    p99_axis.tick_params(axis="x", labelrotation=60, labelsize=8)
    figure.suptitle(
        f"customers service (blue) vs floor and bare stack (greys),"
        f" {datetime.date.today()}, {os.cpu_count()} cores"
    )
    figure.tight_layout()
    figure.savefig(BENCH / "results.png", dpi=90)


if __name__ == "__main__":
    main()
