"""The operator's commands as users run them: `customers-registry serve`, `keys`, `backup`,
`copy-to` and `migrate` of the package installed from this checkout into a fresh venv,
in an environment holding only PATH, HOME and the settings named (tests/installed.py).

What each shows: /metrics counts under `serve`; every setting, database path, schema,
backup path or organization name that cannot be used stops the command in one line that
names it, with exit code 2, and no traceback; what they make is readable by its owner
only; a refusal changes nothing.

Storage that cannot be written: these tests run as root, for whom permission bits stop
no write, and the installed venv lies in pytest's 0700 folder, which an unprivileged
user (setpriv, runuser) cannot reach. So a folder that cannot be made is one under a
regular file (ENOTDIR), and storage that cannot be written is a read-only tmpfs
(EROFS), which stops root too; mounting one needs root (skipped otherwise, failed in CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import migrations
from tests.conftest import API_KEY, BACKEND, auth
from tests.support import free_port, request
from tests.test_migrations import OLD_DB
from tests.test_operating import count, scrape
from tests.test_trust import small_filesystem as tmpfs

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="the installed commands, once")

REGISTRY = "customers-registry"
# Every command that opens the database of DATABASE_URL, with what it needs.
DATABASE_COMMANDS = [
    ("keys", "create", "--org", "Pied Piper"),
    ("keys", "list"),
    ("keys", "revoke", "lk_AbCdEfGh"),
    ("migrate",),
    ("backup", "BACKUP"),
    ("copy-to", "TARGET"),
]


def one_line(result: subprocess.CompletedProcess) -> str:
    """The command's whole output, which must be one line (and no traceback)."""
    text = (result.stdout + result.stderr).strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def run_command(installed, env, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    argv = tuple(
        {"BACKUP": str(cwd / "backup.db"), "TARGET": f"sqlite:///{cwd / 'target.db'}"}.get(a, a)
        for a in argv
    )
    return installed.run(REGISTRY, *argv, env=env, cwd=cwd)


def refused_serve(installed, env, cwd: Path) -> str:
    """`customers-registry serve` expected to refuse: its one refusal line (gunicorn's
    own start lines may come before it; no traceback, no worker booted)."""
    result = installed.run(
        REGISTRY, "serve", "--bind", f"127.0.0.1:{free_port()}", env=env, cwd=cwd, timeout=60
    )
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text and "Booting worker" not in text, text
    [refusal] = [line for line in text.splitlines() if "customers-registry:" in line]
    return refusal


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- serve: metrics, and gunicorn's numbers --------------------------------------------------


def worker_pids(master: int) -> set[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children}


def test_metrics_count_requests_under_serve_summed_over_two_workers(installed, tmp_path):
    # No PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py makes the folder, as for any user.
    env = installed.env(tmp_path / "home", API_KEY=API_KEY)
    with installed.serve(tmp_path, env, workers=2) as served:
        # /health answered: one worker is up; the other may still be booting.
        deadline = time.monotonic() + 30
        while len(workers := worker_pids(served.process.pid)) < 2:
            assert time.monotonic() < deadline, served.log_text()
            time.sleep(0.05)

        def upsert(n: int) -> int:
            body = {"customer": {"customer_id": f"metered/{n}", "name": "M"}}
            return served.request("POST", "/api/v1/customers", body, headers=auth()).status

        def served_by() -> set[int]:
            # Each worker writes its counters to counter_<pid>.db in the folder that
            # gunicorn.conf.py made: in /dev/shm where there is one, else in /tmp.
            made = [
                *Path("/dev/shm").glob("customers-metrics-*/counter_*.db"),
                *Path("/tmp").glob("customers-metrics-*/counter_*.db"),
            ]
            return {int(p.stem.split("_")[-1]) for p in made} & workers

        # Upserts in batches of 40 from 8 connections until both workers have served
        # some (the kernel hands each connection to whichever accepts first).
        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while sent == 0 or (served_by() != workers and sent < 1000):
                assert list(pool.map(upsert, range(sent, sent + 40))) == [200] * 40
                sent += 40
        assert served_by() == workers
        assert served.request("GET", "/no/such/route").status == 404
        samples = scrape(served.port)
    total = "customers_http_requests_total"
    assert count(samples, total, method="POST", route="/api/v1/customers", status="200") == sent
    assert count(samples, total, route="unmatched", status="404") == 1
    histogram = "customers_http_request_duration_seconds_count"
    assert count(samples, histogram, method="POST", route="/api/v1/customers") == sent


def test_serve_takes_bind_and_web_concurrency_from_the_environment(installed, tmp_path):
    port = free_port()
    env = installed.env(tmp_path / "home", BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="3")
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [str(installed.bin / REGISTRY), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while len(worker_pids(process.pid)) < 3:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert request(port, "GET", "/health").status == 200
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
    assert f"Listening at: http://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize(
    "name, value, least",
    [
        ("WEB_CONCURRENCY", "two", 1),  # gunicorn reads it too, at import: checked first
        ("WEB_CONCURRENCY", "0", 1),
        ("WORKER_TIMEOUT", "30s", 0),
        ("GRACEFUL_TIMEOUT", "-1", 0),
        ("KEEPALIVE", "abc", 0),
        ("THREADS", "1.5", 1),
    ],
)
def test_a_bad_gunicorn_number_stops_serve_in_one_line(installed, tmp_path, name, value, least):
    env = installed.env(tmp_path / "home", **{name: value})
    result = installed.run(REGISTRY, "serve", env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert one_line(result) == (
        f"customers-registry: setting {name}={value!r} is not valid: a whole number,"
        f" {least} or more"
    )
    assert not (tmp_path / "customers.db").exists()


# --- database paths that cannot be used ------------------------------------------------------


def test_a_database_folder_that_cannot_be_made_is_one_line_for_every_command(installed, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "a-file" / "customers"
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{folder / 'customers.db'}")
    expected = f"customers-registry: cannot make the database's folder {folder}: Not a directory"
    for argv in DATABASE_COMMANDS:
        result = run_command(installed, env, tmp_path, *argv)
        assert (result.returncode, one_line(result)) == (2, expected), argv
    assert refused_serve(installed, env, tmp_path).endswith(expected.split(": ", 1)[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "home"]


def test_a_database_folder_that_cannot_be_written_is_one_line_for_every_command(
    installed, tmp_path
):
    with tmpfs(tmp_path / "read-only", "ro,size=1m") as folder:
        env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{folder / 'customers.db'}")
        expected = (
            f"customers-registry: cannot create the database {folder / 'customers.db'}:"
            " Read-only file system"
        )
        for argv in DATABASE_COMMANDS:
            result = run_command(installed, env, tmp_path, *argv)
            assert (result.returncode, one_line(result)) == (2, expected), argv
        assert refused_serve(installed, env, tmp_path).endswith(expected.split(": ", 1)[1])


def test_a_database_that_cannot_be_reached_is_one_line_for_every_command(installed, tmp_path):
    url = f"postgresql://customers:s3cret-pw@127.0.0.1:{free_port()}/customers"
    env = installed.env(tmp_path / "home", DATABASE_URL=url)
    masked = url.replace("s3cret-pw", "***")
    for argv in DATABASE_COMMANDS:
        result = run_command(installed, env, tmp_path, *argv)
        line = one_line(result)
        assert result.returncode == 1, argv
        assert line.startswith(f"Error: cannot reach the database {masked}: "), line
        assert "Connection refused" in line


def test_a_database_on_storage_gone_read_only_is_named_at_start(installed, tmp_path):
    # An existing database is served (503 until the storage heals: test_trust.py), and
    # the start says why; a command, which cannot wait for it to heal, refuses.
    with tmpfs(tmp_path / "fs") as fs:
        database = fs / "customers.db"
        env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{database}")
        assert run_command(installed, env, tmp_path, "migrate").returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        reason = f"cannot write the database {database}: Read-only file system"
        result = run_command(installed, env, tmp_path, "keys", "create", "--org", "A")
        assert (result.returncode, one_line(result)) == (2, f"customers-registry: {reason}")
        log_path = tmp_path / "serve.log"
        port = free_port()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(installed.bin / REGISTRY), "serve", "--bind", f"127.0.0.1:{port}"],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, log_path.read_text()
                with contextlib.suppress(OSError):
                    reply = request(port, "GET", "/health", timeout=2)
                    break
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            assert reply.status == 503
        finally:
            os.killpg(process.pid, 15)
            process.wait(30)
    [line] = [line for line in log_path.read_text().splitlines() if reason in line]
    assert "[WARNING]" in line or "WARNING" in line
    assert "answer 503 until it can be written" in line


# --- schemas that cannot be served ---------------------------------------------------------


def damaged(path: Path, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


@pytest.mark.parametrize(
    "statement, expected",
    [
        (
            "UPDATE schema_version SET version = 'one'",
            "the database's schema_version table holds 'one', not a schema version",
        ),
        (
            "UPDATE schema_version SET version = -1",
            "the database's schema_version table holds -1, not a schema version",
        ),
        (
            "ALTER TABLE customer DROP COLUMN phone",
            f"the database's schema (version {migrations.SCHEMA_VERSION}) lacks customer.phone:"
            " it was not made by this service or was changed by hand",
        ),
        (
            "ALTER TABLE api_key RENAME TO api_keys",
            f"the database's schema (version {migrations.SCHEMA_VERSION}) lacks table api_key",
        ),
    ],
)
def test_a_schema_that_cannot_be_served_is_refused_at_start(
    installed, tmp_path, statement, expected
):
    database = tmp_path / "customers.db"
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{database}")
    assert run_command(installed, env, tmp_path, "migrate").returncode == 0
    damaged(database, statement)
    before = database.read_bytes()
    for argv in [("migrate",), ("keys", "list")]:
        result = run_command(installed, env, tmp_path, *argv)
        assert result.returncode == 2
        assert one_line(result).startswith(f"customers-registry: {expected}"), argv
    assert expected in refused_serve(installed, env, tmp_path)
    assert database.read_bytes() == before


# --- backups and new databases -------------------------------------------------------------


def test_a_backup_into_a_missing_folder_is_one_line(installed, tmp_path):
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    destination = tmp_path / "backups" / "customers" / "customers-2026-12-07.db"
    result = installed.run(REGISTRY, "backup", str(destination), env=env, cwd=tmp_path)
    assert (result.returncode, one_line(result)) == (
        2,
        f"Error: cannot write the backup {destination}: no folder {destination.parent}",
    )
    assert not (tmp_path / "backups").exists()


def test_a_backup_onto_a_dangling_symlink_is_refused(installed, tmp_path):
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    link = tmp_path / "latest.db"
    link.symlink_to(tmp_path / "elsewhere.db")
    result = installed.run(REGISTRY, "backup", str(link), env=env, cwd=tmp_path)
    assert (result.returncode, one_line(result)) == (
        1,
        f"Error: {link} exists already; name a new file",
    )
    assert not (tmp_path / "elsewhere.db").exists() and link.is_symlink()


def test_new_databases_their_wal_and_backups_are_for_their_owner_only(installed, tmp_path):
    database = tmp_path / "data" / "customers.db"
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{database}", API_KEY=API_KEY)
    with installed.serve(tmp_path, env, workers=1) as served:
        body = {"customer": {"customer_id": "c-1", "name": "C"}}
        assert served.request("POST", "/api/v1/customers", body, headers=auth()).status == 200
        made = sorted(p.name for p in database.parent.iterdir())
        assert {"customers.db", "customers.db-wal", "customers.db-shm"} <= set(made)
        assert {name: mode(database.parent / name) for name in made} == dict.fromkeys(made, 0o600)
        result = installed.run(REGISTRY, "backup", str(tmp_path / "b.db"), env=env, cwd=tmp_path)
        assert result.stdout == f"backed up 1 customers to {tmp_path / 'b.db'}\n", result.stderr
    assert mode(tmp_path / "b.db") == 0o600
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'other.db'}"
    assert installed.run(REGISTRY, "migrate", env=env, cwd=tmp_path).returncode == 0
    assert mode(tmp_path / "other.db") == 0o600


# --- copy-to -----------------------------------------------------------------------------


def test_copy_to_refuses_an_old_or_foreign_target_and_changes_nothing(installed, tmp_path):
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_command(installed, env, tmp_path, "keys", "create", "--org", "A").returncode == 0
    old = tmp_path / "old.db"
    shutil.copy(OLD_DB, old)  # a database of the release before schema versions, with rows
    foreign = tmp_path / "foreign.db"
    damaged(foreign, "CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    for target, reason in [
        (old, "the target database is not empty"),
        (
            foreign,
            "the target database is not empty: it holds tables of another application (invoices)",
        ),
    ]:
        before = target.read_bytes()
        result = installed.run(REGISTRY, "copy-to", f"sqlite:///{target}", env=env, cwd=tmp_path)
        assert (result.returncode, one_line(result)) == (1, f"Error: sqlite:///{target}: {reason}")
        assert target.read_bytes() == before
        assert not Path(f"{target}-wal").exists()
    with contextlib.closing(sqlite3.connect(old)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "schema_version" not in tables


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "an organization name cannot be empty"),
        ("   ", "an organization name cannot be empty"),
        ("Acme\nACME                     lk_forged00…", "cannot hold control or invisible"),
        ("Acme\x1b[2J", "cannot hold control or invisible characters (it holds U+001B)"),
        ("Acme\u202e", "cannot hold control or invisible characters (it holds U+202E)"),
        (" Acme", "an organization name cannot begin or end with a space"),
        ("A" * 256, "an organization name is at most 255 characters (this one has 256)"),
    ],
)
def test_keys_create_refuses_an_organization_name_in_one_line(installed, tmp_path, name, reason):
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    result = installed.run(REGISTRY, "keys", "create", "--org", name, env=env, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("Error: --org: ") and reason in line
    listed = installed.run(REGISTRY, "keys", "list", env=env, cwd=tmp_path)
    assert listed.stdout.splitlines() == [
        f"{'ORGANIZATION':<24} {'PREFIX':<14} {'CREATED':<20} REVOKED"
    ]


def test_keys_create_takes_the_longest_name(installed, tmp_path):
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    name = "Ä" * 255
    result = installed.run(REGISTRY, "keys", "create", "--org", name, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("lk_")


def test_keys_list_escapes_a_name_an_older_release_took(installed, tmp_path):
    database = tmp_path / "c.db"
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{database}")
    assert run_command(installed, env, tmp_path, "keys", "create", "--org", "A").returncode == 0
    damaged(database, "UPDATE organization SET name = 'A' || char(10) || 'forged   lk_x'")
    listed = installed.run(REGISTRY, "keys", "list", env=env, cwd=tmp_path)
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("A\\nforged   lk_x ")


def test_the_commands_are_the_same_from_flask_in_a_checkout(installed, tmp_path):
    from tests.support import REPO

    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}")
    assert run_command(installed, env, tmp_path, "keys", "create", "--org", "A").returncode == 0
    installed_list = installed.run(REGISTRY, "keys", "list", env=env, cwd=tmp_path)
    flask = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "keys", "list"],
        cwd=REPO,
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flask.returncode == 0, flask.stderr
    assert flask.stdout == installed_list.stdout and len(flask.stdout.splitlines()) == 2


# --- the README's recipes, as written ---------------------------------------------------------


def test_the_keys_recipe_as_written(installed, tmp_path):
    from tests.conftest import database_of
    from tests.test_double import readme_recipe

    database = tmp_path / "customers.db"
    env = installed.env(tmp_path / "home", DATABASE_URL=f"sqlite:///{database}")
    assert run_command(installed, env, tmp_path, "migrate").returncode == 0
    # A database holding the key that the recipe revokes.
    import auth
    import connections
    import models

    with database_of(env["DATABASE_URL"]) as db, connections.using(db):
        organization = models.ensure_organization("Hooli")
        models.add_api_key(organization, "lk_AbCdEfGh", auth.hash_key("lk_AbCdEfGh" + "x" * 35))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_recipe("keys")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "New key for organization 'Pied Piper'; it is shown only this once:"
    assert auth.MINTED_KEY.fullmatch(lines[1])
    assert [line.split()[:2] for line in lines[3:5]] == [
        ["Hooli", "lk_AbCdEfGh…"],
        ["Pied", "Piper"],
    ]
    assert lines[-1] == "revoked"
    assert result.stderr == ""


class Host:
    """A Debian host as the Production section finds one, in a mount namespace of its own:
    /etc, /opt and /var are overlays whose writes land in a test folder, so the recipes
    run as written (apt-get, useradd, /opt/customers, /var/lib/customers, runuser) and
    the machine is left as it was."""

    def __init__(self, root: Path):
        self.root = root
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
        )
        script = []
        for top in ("etc", "opt", "var"):
            upper, work = root / top / "upper", root / top / "work"
            upper.mkdir(parents=True)
            work.mkdir()
            script.append(
                f"mount -t overlay overlay -o lowerdir=/{top},upperdir={upper},workdir={work}"
                f" /{top}"
            )
        deadline = time.monotonic() + 10
        while (
            Path(f"/proc/{self.holder.pid}/ns/mnt").resolve() == Path("/proc/self/ns/mnt").resolve()
        ):
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        result = self.run("; ".join(["set -e", *script]), env={"PATH": os.environ["PATH"]})
        if result.returncode != 0:
            self.close()
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount the overlays: {result.stderr}")
            pytest.skip(f"a mount namespace with overlays needs root: {result.stderr}")

    def command(self, script: str) -> list[str]:
        nsenter = ["nsenter", "--target", str(self.holder.pid), "--mount"]
        return [*nsenter, "--", "bash", "-euo", "pipefail", "-c", script]

    def run(self, script: str, env: dict[str, str], timeout: float = 600):
        return subprocess.run(
            self.command(script),
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            settings.setdefault(name, []).append(value)
    return settings


def test_the_production_recipes_as_written(installed, tmp_path, postgres):
    from tests.installed import SYSTEM_PATH, pinned_constraints
    from tests.support import REPO
    from tests.test_double import readme_recipe

    host = Host(tmp_path / "host")
    port = free_port()
    try:
        home = tmp_path / "home"
        home.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
            "PATH": SYSTEM_PATH,
            "HOME": str(home),
            "CUSTOMERS": str(REPO),
            "PIP_CONSTRAINT": str(pinned_constraints(tmp_path / "constraints.txt")),
        }

        def shell(script: str, **more: str) -> str:
            result = host.run(script, {**env, **more})
            assert result.returncode == 0, f"{script}:\n{result.stdout}\n{result.stderr}"
            return result.stdout

        def recipe(name: str, **more: str) -> str:
            return shell(readme_recipe(name), **more)

        recipe("production-install")
        # What systemd does for deploy/customers.service: its state directory, and its
        # command as its user with its environment (and the operator's /etc/customers/env,
        # here the address, as no port is sure to be free on a shared machine).
        unit = unit_settings(REPO / "deploy" / "customers.service")
        [user], [state], [workdir] = unit["User"], unit["StateDirectory"], unit["WorkingDirectory"]
        [exec_start], [env_file] = unit["ExecStart"], unit["EnvironmentFile"]
        settings = [*unit["Environment"], f"BIND=127.0.0.1:{port}", f"API_KEY={API_KEY}"]
        shell(
            f"install -d -m 0755 -o {user} -g {user} /var/lib/{state}"
            f" && mkdir -p /etc/customers && printf '%s\\n' {' '.join(settings[-2:])}"
            f" > {env_file.lstrip('-')}"
        )
        service_log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
        service = subprocess.Popen(
            host.command(
                f"set -a; . {env_file.lstrip('-')}; set +a; cd {workdir};"
                f" exec runuser -u {user} -- env {' '.join(unit['Environment'])} {exec_start}"
            ),
            env={"PATH": SYSTEM_PATH},
            stdout=service_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert service.poll() is None, (tmp_path / "service.log").read_text()
                with contextlib.suppress(OSError):
                    if request(port, "GET", "/health", timeout=2).status == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
                time.sleep(0.2)
            key = recipe("production-keys").splitlines()[-1]
            body = {"customer": {"customer_id": "cus-1", "name": "Gavin Belson"}}
            reply = request(port, "POST", "/api/v1/customers", body, auth(key))
            assert reply.status == 200
            assert recipe("production-backup").startswith("backed up 1 customers to ")
            up_to_date = f"schema up to date at version {migrations.SCHEMA_VERSION}\n"
            assert recipe("production-migrate") == up_to_date
        finally:
            os.killpg(service.pid, 15)
            service.wait(60)
            service_log.close()
        files = shell(
            "stat -c '%n %a %U' /var/lib/customers/customers.db /var/backups/customers/*.db"
        )
        assert [line.split()[1:] for line in files.splitlines()] == [
            ["600", "customers"],
            ["600", "customers"],
        ]
        target = postgres.create_database()
        try:
            copied = recipe("production-copy-to", POSTGRESQL_URL=target)
            assert copied == "2 organization, 1 api_key, 1 customer copied\n"
        finally:
            postgres.drop_database(target)
    finally:
        host.close()
