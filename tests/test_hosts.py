"""Several hosts: two `customers-registry serve` processes, each installed and started as
an operator starts one (tests/installed.py: its own directory, only PATH, HOME and its
settings), on one database (one PostgreSQL, or one SQLite file on a shared machine), behind
deploy/nginx.conf with both in its upstream, as the README's recipe writes it."""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import connections
import migrations
import outage
from tests.conftest import API_KEY, BACKEND, auth, stored_customers
from tests.servers import Nginx
from tests.support import request
from tests.test_double import readme_recipe

# The addresses the README's recipes are written for, replaced by the test hosts' own.
RECIPE_HOSTS = ("10.0.0.11:8000", "10.0.0.12:8000")
RECIPE_BIND = "127.0.0.1:8000"


class Balancer(Nginx):
    """deploy/nginx.conf as shipped, its upstream replaced by the README's recipe for
    several hosts (`nginx-upstream`), each recipe address by a test host's."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(ports[0])
        self.ports = ports

    def site_config(self) -> str:
        upstream = readme_recipe("nginx-upstream")
        for address, port in zip(RECIPE_HOSTS, self.ports, strict=True):
            assert upstream.count(address) == 1, f"the recipe no longer names {address}"
            upstream = upstream.replace(address, f"127.0.0.1:{port}")
        shipped = super().site_config()
        pattern = re.compile(r"^upstream customers_app \{\n.*?^\}\n", re.DOTALL | re.MULTILINE)
        assert len(pattern.findall(shipped)) == 1
        return pattern.sub(lambda _: upstream, shipped)

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text()

    def access_log(self) -> str:
        return (self.prefix / "customers.access.log").read_text()

    def request(self, method: str, path: str, body=None, headers=None) -> object:
        return request(self.port, method, path, body, headers, host=self.host)


@contextmanager
def hosts(installed, tmp_path: Path, database_url: str, count: int = 2) -> Iterator[list]:
    """`count` hosts started at the same instant, each in its own directory with its own
    environment; yields them once every one answers /health."""
    servings = []
    for n in range(count):
        home = tmp_path / f"host-{n}"
        env = installed.env(home, DATABASE_URL=database_url, API_KEY=API_KEY, TRUST_PROXY="1")
        servings.append(installed.serve(home, env, workers=2))
    with ExitStack() as stack, ThreadPoolExecutor(count) as pool:
        started = [pool.submit(serving.__enter__) for serving in servings]
        wait(started)
        for serving, future in zip(servings, started, strict=True):
            if future.exception() is None:
                stack.push(serving.__exit__)
        yield [future.result() for future in started]  # raises the first failure


def balanced(hosts_: list) -> Balancer:
    return Balancer([host.port for host in hosts_])


def customer(customer_id: str, name: str = "Someone") -> dict:
    return {"customer": {"customer_id": customer_id, "name": name, "country": "fr"}}


def assert_clean_logs(*served) -> None:
    for host in served:
        text = host.log_text()
        assert not re.search(r"\bERROR\b|Traceback", text), text[-3000:]


def answered(log_text: str, request_line: str, status: int = 200) -> int:
    """How many requests an access log shows answered `status`, by their method and path
    (`POST /api/v1/customers`). (Not /metrics: under `customers-registry serve` without
    PROMETHEUS_MULTIPROC_DIR it answers nothing at all.)"""
    return len(re.findall(rf'"{re.escape(request_line)}(\?[^"]*)?" {status} ', log_text))


# --- One schema, one row, one key table -----------------------------------------------------


def test_hosts_started_together_on_an_empty_database_make_the_schema_once(
    installed, tmp_path, database_url
):
    with hosts(installed, tmp_path, database_url) as (a, b):
        for host in (a, b):
            assert host.request("GET", "/health").status == 200
            reply = host.request(
                "POST", "/api/v1/customers", customer(f"on-{host.port}"), headers=auth()
            )
            assert reply.status == 200
    assert_clean_logs(a, b)  # no worker failed to create what another was creating
    db = connections.open_database(database_url)
    try:
        with connections.using(db):
            assert migrations.version_of(db) == migrations.SCHEMA_VERSION
            versions = db.execute_sql("SELECT count(*) FROM schema_version").fetchone()
            if BACKEND == "sqlite":
                sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            else:
                sql = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            triggers = Counter(row[0] for row in db.execute_sql(sql).fetchall())
    finally:
        db.close_all()
    assert versions == (1,)
    assert triggers and set(triggers.values()) == {1}
    assert sorted(row["customer_id"] for row in stored_customers(database_url)) == sorted(
        [f"on-{a.port}", f"on-{b.port}"]
    )


def test_racing_upserts_through_both_hosts_make_one_row_each(installed, tmp_path, database_url):
    ids = [f"shared-{n}" for n in range(25)]
    writers = 12
    with hosts(installed, tmp_path, database_url) as (a, b), balanced([a, b]) as nginx:
        start = threading.Barrier(writers)

        def writer(w: int) -> list:
            start.wait()
            return [
                nginx.request("POST", "/api/v1/customers", customer(i, f"w{w}"), headers=auth())
                for i in ids
            ]

        with ThreadPoolExecutor(writers) as pool:
            replies = [reply for batch in pool.map(writer, range(writers)) for reply in batch]
        served = {host.port: answered(host.log_text(), "POST /api/v1/customers") for host in (a, b)}
    assert Counter(reply.status for reply in replies) == {200: writers * len(ids)}
    assert all(count > 0 for count in served.values()), served  # both hosts took part
    lago_ids: dict[str, set] = {}
    for reply in replies:
        echoed = reply.json()["customer"]
        lago_ids.setdefault(echoed["customer_id"], set()).add(echoed["lago_id"])
    rows = stored_customers(database_url)
    assert sorted(row["customer_id"] for row in rows) == sorted(ids)
    assert {row["customer_id"]: {str(row["lago_id"])} for row in rows} == lago_ids
    assert_clean_logs(a, b)


def test_a_key_minted_on_one_host_works_on_the_other_and_its_revocation_everywhere(
    installed, tmp_path, database_url
):
    with hosts(installed, tmp_path, database_url) as (a, b), balanced([a, b]) as nginx:
        minted = installed.run(
            "customers-registry",
            "keys",
            "create",
            "--org",
            "acme",
            env=a.env,
            cwd=tmp_path / "host-0",
        )
        assert minted.returncode == 0, minted.stderr
        key = minted.stdout.strip().splitlines()[-1]
        body = customer("keyed")
        assert b.request("POST", "/api/v1/customers", body, headers=auth(key)).status == 200
        for route in (a, nginx):
            assert route.request("GET", "/api/v1/customers/keyed", headers=auth(key)).status == 200

        revoked = installed.run(
            "customers-registry", "keys", "revoke", key, env=b.env, cwd=tmp_path / "host-1"
        )
        assert revoked.returncode == 0, revoked.stderr
        for route in (a, b, nginx, nginx):  # nginx twice: once to each host
            reply = route.request("GET", "/api/v1/customers/keyed", headers=auth(key))
            assert (reply.status, reply.json()["status"]) == (401, 401)
        # The service's own key is untouched.
        assert nginx.request("GET", "/api/v1/customers/keyed", headers=auth()).status == 404
    assert_clean_logs(a, b)


# --- Stopping a host under load -------------------------------------------------------------


@dataclass
class Load:
    """Clients sending through nginx, each on ids of its own: an upsert, every 10th
    customer read back and every 10th deleted. Every answer should be a 200; what was
    acknowledged is kept to compare with the rows at the end."""

    nginx: Balancer
    clients: int
    limit: int  # customers in all, then the clients stop
    pause: float = 0.0  # seconds each client waits between customers
    statuses: Counter = field(default_factory=Counter)
    unexpected: list = field(default_factory=list)
    upserted: set = field(default_factory=set)
    deleted: set = field(default_factory=set)
    started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)

    def __enter__(self) -> Load:
        for c in range(self.clients):
            thread = threading.Thread(target=self._client, args=(c,))
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for(self, started: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.started < started and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.started >= started, f"only {self.started} customers sent"

    def finish(self) -> None:
        """Let the clients send the rest of `limit`, and wait for them."""
        for thread in self._threads:
            thread.join(120)
            assert not thread.is_alive()

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or self.started >= self.limit:
                return False
            self.started += 1
            return True

    def _send(self, method: str, customer_id: str, body=None) -> bool:
        path = "/api/v1/customers" if method == "POST" else f"/api/v1/customers/{customer_id}"
        reply = self.nginx.request(method, path, body, headers=auth())
        ok = reply.status == 200 and reply.json()["customer"]["customer_id"] == customer_id
        with self._lock:
            self.statuses[reply.status] += 1
            if not ok:
                self.unexpected.append((method, customer_id, reply.status, reply.body[:200]))
        return ok

    def _client(self, c: int) -> None:
        n = 0
        while self._take():
            customer_id = f"load{c}-{n}"
            if self._send("POST", customer_id, customer(customer_id)):
                with self._lock:
                    self.upserted.add(customer_id)
            if n % 10 == 5:
                self._send("GET", customer_id)
            if n % 10 == 9 and self._send("DELETE", customer_id):
                with self._lock:
                    self.deleted.add(customer_id)
            n += 1
            time.sleep(self.pause)

    def assert_all_answered_and_kept(self, database_url: str) -> None:
        assert self.unexpected == [], (self.statuses, self.unexpected[:10])
        assert set(self.statuses) == {200}
        stored = {row["customer_id"] for row in stored_customers(database_url)}
        assert stored == self.upserted - self.deleted


# A request that nginx sent to the stopping host, which reset it, and then to the other
# host: its access line names both upstreams, the first one's status as nginx's 502.
# (nginx's error log, which words the reset, is written only at `crit`: deploy/nginx.conf.)
RESENT = re.compile(r"upstream=127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+ upstream_status=502, 200 ")


def test_sigterm_to_one_host_under_load_shows_no_client_an_error(installed, tmp_path, database_url):
    with hosts(installed, tmp_path, database_url) as (a, b), balanced([a, b]) as nginx:
        with Load(nginx, clients=16, limit=1600) as load:
            load.wait_for(400)
            os.kill(a.process.pid, signal.SIGTERM)  # the master only, as systemd stops it
            assert a.process.wait(40) == 0
            load.finish()
        # The case at hand happened: requests queued on the stopping host were reset, and
        # nginx sent them to the other host instead of answering 502.
        assert RESENT.search(nginx.access_log()), nginx.access_log()[-3000:]
    load.assert_all_answered_and_kept(database_url)
    assert_clean_logs(a, b)


# --- The README's rolling restart, as written ----------------------------------------------

SYSTEMCTL = """#!/bin/sh
# `systemctl restart customers` on one test host, doing what systemd does with
# deploy/customers.service (KillMode=mixed): SIGTERM to gunicorn's master, wait for it to
# exit, start the service again with the same environment.
[ "$*" = "restart customers" ] || {{ echo "systemctl stand-in: not $*" >&2; exit 2; }}
pid=$(cat {pidfile})
kill -TERM "$pid"
while [ -e /proc/$pid ] && ! grep -q '^State:[[:space:]]*Z' /proc/$pid/status; do
    sleep 0.05
done
cd {home}
env -i {env} setsid customers-registry serve --bind 127.0.0.1:{port} --workers 2 \\
    >>restarted.log 2>&1 </dev/null &
echo $! >{pidfile}
"""


def systemctl_standin(host, home: Path) -> tuple[Path, Path]:
    """A directory holding `systemctl` for this host, and the file of its master's pid."""
    pidfile = home / "master.pid"
    pidfile.write_text(f"{host.process.pid}\n")
    folder = home / "bin"
    folder.mkdir()
    script = folder / "systemctl"
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in host.env.items())
    script.write_text(SYSTEMCTL.format(pidfile=pidfile, home=home, env=env, port=host.port))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder, pidfile


def stop_restarted(pidfile: Path) -> None:
    """SIGTERM a restarted service (not our child: we cannot wait for it) until it is gone."""
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + 40
    while status.exists() and "\nState:\tZ" not in status.read_text():
        assert time.monotonic() < deadline, f"restarted service {pid} did not stop"
        time.sleep(0.05)


def test_readme_rolling_restart_under_load(installed, tmp_path, database_url):
    recipe = readme_recipe("rolling-restart")
    assert RECIPE_BIND in recipe
    restarted: list[Path] = []
    with hosts(installed, tmp_path, database_url) as (a, b), balanced([a, b]) as nginx:
        try:
            with Load(nginx, clients=4, limit=20_000, pause=0.05) as load:
                for n, host in enumerate((a, b)):
                    home = tmp_path / f"host-{n}"
                    folder, pidfile = systemctl_standin(host, home)
                    restarted.append(pidfile)
                    served_before = load.started
                    result = subprocess.run(
                        ["sh", "-e", "-c", recipe.replace(RECIPE_BIND, f"127.0.0.1:{host.port}")],
                        env={**host.env, "PATH": f"{folder}{os.pathsep}{host.env['PATH']}"},
                        cwd=home,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    log = (home / "restarted.log").read_text(errors="replace")
                    assert result.returncode == 0, result.stdout + result.stderr + log
                    assert int(pidfile.read_text()) != host.process.pid
                    # Back in nginx's rotation before the next host stops.
                    assert answered(log, "POST /api/v1/customers") > 0, log
                    assert load.started > served_before
                    assert not re.search(r"\bERROR\b|Traceback", log), log
        finally:
            for pidfile in restarted:
                if pidfile.exists():
                    stop_restarted(pidfile)
    load.assert_all_answered_and_kept(database_url)
    assert_clean_logs(a, b)


# --- A database outage, in two lines --------------------------------------------------------

STARTED = re.compile(
    r"database unavailable: (.*); answering 503 until it is back \(database (\S+), worker (\d+)\)$"
)
ENDED = re.compile(
    r"database available again after ([\d.]+) s; (\d+) requests answered 503 meanwhile"
    r" \(database (\S+), worker (\d+)\)$"
)


def outage_lines(log: str) -> tuple[list, list]:
    lines = log.splitlines()
    starts = [m for m in map(STARTED.search, lines) if m]
    ends = [m for m in map(ENDED.search, lines) if m]
    return starts, ends


@pytest.mark.postgres_only
def test_an_outage_is_logged_when_it_starts_and_when_it_ends(
    installed, tmp_path, postgres, database_url
):
    # A password (trust authentication ignores it) that must stay out of every line.
    url = database_url.replace("postgres@", "postgres:pw-s3cret-4711@", 1)
    masked = url.replace("pw-s3cret-4711", "***")
    env = installed.env(tmp_path / "home", DATABASE_URL=url, API_KEY=API_KEY)
    with installed.serve(tmp_path, env, workers=2) as host:
        reply = host.request("POST", "/api/v1/customers", customer("before"), headers=auth())
        assert reply.status == 200
        refused = 0
        postgres.stop_server()
        try:
            for n in range(60):
                path = "/health" if n % 3 == 0 else "/api/v1/customers"
                body = customer(f"down-{n}") if n % 3 == 1 else None
                reply = host.request("POST" if body else "GET", path, body, headers=auth())
                assert (reply.status, reply.json()["status"]) == (503, 503)
                refused += 1
        finally:
            postgres.start_server()
        # The end line comes with the first request a worker serves a second or more
        # after its last refusal: ask until every worker that wrote a start wrote an end.
        deadline = time.monotonic() + 30
        while True:
            reply = host.request("GET", "/api/v1/customers", headers=auth())
            refused += reply.status == 503  # a pooled connection the restart cut
            starts, ends = outage_lines(host.log_text())
            if {m.group(3) for m in starts} == {m.group(4) for m in ends}:
                break
            assert time.monotonic() < deadline, host.log_text()[-3000:]
            time.sleep(0.05)
        log = host.log_text()
    assert starts and len(starts) <= 2  # at most one per worker
    assert Counter(m.group(3) for m in starts) == Counter(m.group(4) for m in ends)
    assert all(count == 1 for count in Counter(m.group(3) for m in starts).values())
    assert sum(int(m.group(2)) for m in ends) == refused
    for start in starts:
        # The first line of psycopg2's message: a pooled connection the stop cut, or a
        # new one refused.
        reasons = "server closed the connection unexpectedly|terminating connection|refused"
        assert re.search(reasons, start.group(1)), start.group(1)
        assert start.group(2) == masked
    assert {m.group(3) for m in ends} == {masked}
    assert "pw-s3cret-4711" not in log
    assert "Is the server running" not in log  # the driver's second line
    errors = [line for line in log.splitlines() if re.search(r"\bERROR\b", line)]
    assert len(errors) == len(starts), errors


def test_outage_log_counts_and_waits_for_quiet(caplog):
    now = [100.0]
    log = logging.getLogger("test_outage")
    tracker = outage.OutageLog("postgresql://u:***@db/c", log, password="pw", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        tracker.served()  # no outage: nothing to say
        tracker.refused(Exception("could not connect: pw refused\n\tIs the server running?\n"))
        now[0] += 0.4
        tracker.refused(Exception("again"))
        now[0] += 0.3
        tracker.served()  # 0.3 s after the last refusal: maybe a partial fault, wait
        now[0] += 0.1
        tracker.refused(Exception("writes still fail"))
        now[0] += 0.2
        tracker.served()  # back at 101.0
        now[0] += 0.9
        tracker.served()  # 1.1 s after the last refusal: the outage is over
        tracker.served()
    messages = [record.getMessage() for record in caplog.records]
    assert [record.levelname for record in caplog.records] == ["ERROR", "WARNING"]
    assert messages[0] == (
        "database unavailable: could not connect: *** refused; answering 503 until it is"
        f" back (database postgresql://u:***@db/c, worker {os.getpid()})"
    )
    assert messages[1] == (
        "database available again after 1.0 s; 3 requests answered 503 meanwhile"
        f" (database postgresql://u:***@db/c, worker {os.getpid()})"
    )
