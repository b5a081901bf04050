"""Upgrades: a database made by the last release before schema versions (commit 22bdb7c,
kept in tests/data) is upgraded in place with nothing lost, on SQLite and PostgreSQL;
several processes starting on it at once take turns; a newer schema is refused."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest

import connections
import migrations
import models
from app import create_app
from tests.conftest import BACKEND, database_of
from tests.support import refused_start

DATA = Path(__file__).resolve().parent / "data"
OLD_DB = DATA / "customers-22bdb7c.db"
OLD_KEYS = json.loads((DATA / "customers-22bdb7c.db.keys.json").read_text())
OLD_PG_SCHEMA = DATA / "schema-22bdb7c-postgresql.sql"
TABLES = ("organization", "api_key", "customer")


def every_row(url: str) -> dict[str, list[dict]]:
    """Every row of every table, as Peewee reads them (ids, UUIDs, dates typed alike on
    both backends), in id order."""
    with database_of(url) as db, connections.using(db):
        return {
            model._meta.table_name: list(model.select().order_by(model.id).dicts())
            for model in models.TABLES
        }


def old_database(tmp_path: Path, request) -> str:
    """A database of the old release with the kept file's data: the file itself on
    SQLite; on PostgreSQL the old schema, then the same rows."""
    if BACKEND == "sqlite":
        path = tmp_path / "old.db"
        shutil.copy(OLD_DB, path)
        return f"sqlite:///{path}"
    server = request.getfixturevalue("postgres")
    url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    import psycopg2

    source = sqlite3.connect(OLD_DB)
    target = psycopg2.connect(url)
    try:
        with target, target.cursor() as cursor:
            cursor.execute(OLD_PG_SCHEMA.read_text())
            cursor.execute("RESET search_path")  # the dump empties it for its session
        with target, target.cursor() as cursor:
            for table in TABLES:
                cursor_rows = source.execute(f'SELECT * FROM "{table}" ORDER BY id')
                columns = [d[0] for d in cursor_rows.description]
                for row in cursor_rows:
                    values = dict(zip(columns, row, strict=True))
                    if table == "organization":
                        values["customer_count"] = 0  # the old count trigger counts them in
                    names = ", ".join(f'"{c}"' for c in values)
                    marks = ", ".join(["%s"] * len(values))
                    cursor.execute(
                        f'INSERT INTO public."{table}" ({names}) VALUES ({marks})',
                        list(values.values()),
                    )
                sequence = f"public.{table}_id_seq"
                cursor.execute(
                    f'SELECT setval(%s, (SELECT MAX(id) FROM public."{table}"))', [sequence]
                )
    finally:
        source.close()
        target.close()
    return url


@pytest.fixture
def old_url(tmp_path, request) -> str:
    return old_database(tmp_path, request)


def test_the_kept_database_is_of_the_old_release(old_url):
    with database_of(old_url) as db, connections.using(db):
        assert migrations.version_of(db) == 0
        assert "schema_version" not in db.get_tables()


def test_upgrade_keeps_every_row_and_every_key(old_url):
    before = every_row(old_url)
    assert len(before["customer"]) == 5 and len(before["api_key"]) == 3
    app = create_app({"DATABASE_URL": old_url, "API_KEY": OLD_KEYS["env_key"]})
    try:
        with connections.using(app.extensions["customers.db"]) as db:
            assert migrations.version_of(db) == migrations.SCHEMA_VERSION
        after = every_row(old_url)
        # The API_KEY organization existed already: nothing new, nothing changed.
        assert after == before
        client = app.test_client()
        for key, organization in [
            (OLD_KEYS["keys"]["Pied Piper"], "Pied Piper"),
            (OLD_KEYS["keys"]["Hooli"], "Hooli"),
            (OLD_KEYS["env_key"], "default"),
        ]:
            listed = client.get("/api/v1/customers", headers={"Authorization": f"Bearer {key}"})
            assert listed.status_code == 200, organization
            org = next(o for o in before["organization"] if o["name"] == organization)
            stored = [c for c in before["customer"] if c["organization"] == org["id"]]
            assert listed.get_json()["meta"]["total_count"] == len(stored) == org["customer_count"]
            shown = {c["customer_id"]: c for c in listed.get_json()["customers"]}
            for row in stored:
                customer = shown[row["customer_id"]]
                assert customer["lago_id"] == str(row["lago_id"])
                assert customer["created_at"] == row["created_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
                for field in ("name", "country", "city", "logo_url", "phone", "address_line2"):
                    assert customer[field] == row[field], (row["customer_id"], field)
        revoked = {"Authorization": f"Bearer {OLD_KEYS['revoked']}"}
        assert client.get("/api/v1/customers", headers=revoked).status_code == 401
        # Writes after the upgrade: the count triggers still count.
        hooli = {"Authorization": f"Bearer {OLD_KEYS['keys']['Hooli']}"}
        body = {"customer": {"customer_id": "new-after-upgrade", "name": "New"}}
        assert client.post("/api/v1/customers", json=body, headers=hooli).status_code == 200
        listed = client.get("/api/v1/customers", headers=hooli).get_json()
        assert listed["meta"]["total_count"] == 2
    finally:
        app.extensions["customers.db"].close_all()


def test_migrate_command_says_what_it_did_and_then_changes_nothing(old_url):
    app = create_app({"DATABASE_URL": old_url})
    try:
        result = app.test_cli_runner().invoke(args=["migrate"])
        upgraded = f"schema upgraded from version 0 to {migrations.SCHEMA_VERSION}\n"
        assert (result.exit_code, result.output) == (0, upgraded)
    finally:
        app.extensions["customers.db"].close_all()
    upgraded = every_row(old_url)
    again = create_app({"DATABASE_URL": old_url})
    try:
        result = again.test_cli_runner().invoke(args=["migrate"])
        up_to_date = f"schema up to date at version {migrations.SCHEMA_VERSION}\n"
        assert (result.exit_code, result.output) == (0, up_to_date)
    finally:
        again.extensions["customers.db"].close_all()
    assert every_row(old_url) == upgraded


def test_the_first_migration_drops_the_redundant_index(old_url):
    with database_of(old_url) as db, connections.using(db):
        # What releases before 2026-11-25 made besides the unique (organization,
        # customer_id) index.
        db.execute_sql('CREATE INDEX "customer_organization_id" ON "customer" ("organization_id")')
        assert "customer_organization_id" in {i.name for i in db.get_indexes("customer")}
    before = every_row(old_url)
    create_app({"DATABASE_URL": old_url}).extensions["customers.db"].close_all()
    with database_of(old_url) as db, connections.using(db):
        indexes = {i.name for i in db.get_indexes("customer")}
    assert "customer_organization_id" not in indexes
    assert "customer_organization_id_customer_id" in indexes
    assert every_row(old_url) == before


def _start(url: str) -> None:
    create_app({"DATABASE_URL": url}).extensions["customers.db"].close_all()


def test_processes_starting_at_once_on_an_old_database_take_turns(old_url):
    before = every_row(old_url)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_start, args=(old_url,)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 6
    with database_of(old_url) as db, connections.using(db):
        assert migrations.version_of(db) == migrations.SCHEMA_VERSION
    assert every_row(old_url) == before


def newer(url: str) -> None:
    with database_of(url) as db, connections.using(db):
        migrations.upgrade(db)
        db.execute_sql("UPDATE schema_version SET version = 99")


def test_a_newer_schema_is_refused_naming_both_versions(database_url):
    newer(database_url)
    with pytest.raises(migrations.SchemaTooNew) as refused:
        create_app({"DATABASE_URL": database_url})
    message = str(refused.value)
    assert "version 99" in message and f"version {migrations.SCHEMA_VERSION}" in message


def test_gunicorn_refuses_a_newer_schema_in_one_line(database_url):
    newer(database_url)
    result = refused_start({"DATABASE_URL": database_url})
    assert result.returncode == 2
    [refusal] = [line for line in result.stderr.splitlines() if "customers-registry:" in line]
    assert "schema is version 99" in refusal
    assert "Traceback" not in result.stderr


def test_a_schema_version_that_is_not_one_is_refused_at_start(database_url):
    # (A text, which SQLite alone can hold: tests/test_commands_as_users.py.)
    with database_of(database_url) as db, connections.using(db):
        migrations.upgrade(db)
        db.execute_sql("UPDATE schema_version SET version = -1")
    with pytest.raises(migrations.SchemaUnusable, match="holds -1, not a schema version"):
        create_app({"DATABASE_URL": database_url})
    result = refused_start({"DATABASE_URL": database_url})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if "customers-registry:" in line]
    assert "schema_version table holds -1" in refusal


def test_tables_without_the_columns_of_this_release_are_refused_at_start(database_url):
    with database_of(database_url) as db, connections.using(db):
        migrations.upgrade(db)
        # phone: a column no trigger of the search index reads (SQLite refuses to drop those)
        db.execute_sql('ALTER TABLE "customer" DROP COLUMN "phone"')
    with pytest.raises(migrations.SchemaUnusable, match=r"lacks customer\.phone"):
        create_app({"DATABASE_URL": database_url})
    result = refused_start({"DATABASE_URL": database_url})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if "customers-registry:" in line]
    assert "lacks customer.phone" in refusal


def test_copy_to_an_old_target_with_rows_refuses_and_changes_nothing(old_url, database_url):
    before = every_row(old_url)
    app = create_app({"DATABASE_URL": database_url})
    try:
        result = app.test_cli_runner().invoke(args=["copy-to", old_url])
    finally:
        app.extensions["customers.db"].close_all()
    assert result.exit_code == 1
    assert result.output.strip().endswith(": the target database is not empty")
    with database_of(old_url) as db, connections.using(db):
        assert migrations.version_of(db) == 0  # not upgraded
        assert "schema_version" not in db.get_tables()
    assert every_row(old_url) == before
