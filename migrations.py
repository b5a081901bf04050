"""The schema's versions, and the upgrades between them.

The database records its schema version in the one-row table `schema_version`. A
database made before versions existed (releases before 0.1.0) has the tables but not
that one: version 0. `upgrade` brings any database to SCHEMA_VERSION in place, in one
transaction, under a lock that every process on every host respects, and refuses a
database whose schema is newer than this code's.

A new schema change is a new function in MIGRATIONS, keyed by the version it makes, and
SCHEMA_VERSION moves to it; `_create` always makes the newest schema directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from peewee import Database

import search
from connections import enable_wal, is_sqlite, lock_id, using
from models import TABLES

SCHEMA_VERSION = 2

log = logging.getLogger("customers")


class SchemaTooNew(RuntimeError):
    """The database was made or upgraded by a newer release than this one."""

    def __init__(self, found: int):
        super().__init__(
            f"the database's schema is version {found}, newer than this release's schema "
            f"version {SCHEMA_VERSION}: run the release that upgraded it, or a newer one"
        )
        self.found = found


class SchemaUnusable(ValueError):
    """The database's schema cannot be served: its recorded version is not a version, or
    its tables lack columns this release reads. A ValueError, so that the start and the
    commands refuse it in one line, as they refuse a bad setting."""


def upgrade(db: Database) -> tuple[int | None, int]:
    """Bring `db` to SCHEMA_VERSION: create the schema in an empty database, or apply the
    migrations after its version. Returns (the version found, None for an empty database;
    the version now). Raises SchemaTooNew for a newer database.

    On a database already at this version (any start but the first after a release) it
    reads one row and runs no DDL: on PostgreSQL even `CREATE ... IF NOT EXISTS` locks a
    table, and that lock, taken by a worker starting while others serve, can deadlock
    with their writes.
    """
    with using(db):
        if is_sqlite(db):
            enable_wal(db)
        found = version_of(db)
        if found == SCHEMA_VERSION:
            check_columns(db)
            return found, found
        with _schema_lock(db):
            found = version_of(db)  # a peer may have upgraded it while we waited
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaTooNew(found)
            if found is None:
                _create(db)
            else:
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[version](db)
            if found != SCHEMA_VERSION:
                _record_version(db)
            check_columns(db)  # a failure here rolls the upgrade back
    if found is not None and found != SCHEMA_VERSION:
        log.warning("database schema upgraded from version %s to %s", found, SCHEMA_VERSION)
    return found, SCHEMA_VERSION


def version_of(db: Database) -> int | None:
    """The schema version of the active database `db`; 0 for one made before versions
    existed, None for an empty one. Raises SchemaUnusable for a recorded version that is
    not one (a text, a negative number: a table edited by hand or by another program)."""
    tables = set(db.get_tables())
    if "schema_version" in tables:
        row = db.execute_sql("SELECT version FROM schema_version WHERE id = 1").fetchone()
        if row is None:
            return 0
        version = row[0]
        # SQLite keeps whatever was written; a bool is an int to Python, not a version.
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise SchemaUnusable(
                f"the database's schema_version table holds {version!r}, not a schema"
                f" version (this release's is {SCHEMA_VERSION}): restore the backup taken"
                " before it was changed, or set it to the version of the release that made"
                " the database"
            )
        return version
    if tables & {model._meta.table_name for model in TABLES}:
        return 0
    return None


def check_columns(db: Database) -> None:
    """Raise SchemaUnusable when a table of this release's schema is missing, or lacks a
    column it reads or writes (the database was made by another program, or changed by
    hand): every request would fail. Columns of its own that a table adds are left alone."""
    tables = set(db.get_tables())
    missing = []
    for model in TABLES:
        table = model._meta.table_name
        if table not in tables:
            missing.append(f"table {table}")
            continue
        present = {column.name for column in db.get_columns(table)}
        missing += [
            f"{table}.{field.column_name}"
            for field in model._meta.sorted_fields
            if field.column_name not in present
        ]
    if missing:
        raise SchemaUnusable(
            f"the database's schema (version {SCHEMA_VERSION}) lacks {', '.join(missing)}:"
            " it was not made by this service or was changed by hand; point DATABASE_URL at"
            " the service's own database, or restore its backup"
        )


def _create(db: Database) -> None:
    db.create_tables(TABLES)
    for statement in _COUNT_TRIGGERS["sqlite" if is_sqlite(db) else "postgresql"]:
        db.execute_sql(statement)
    search.create_index(db)
    _create_version_table(db)


def _create_version_table(db: Database) -> None:
    db.execute_sql(
        "CREATE TABLE IF NOT EXISTS schema_version"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
    )


def _record_version(db: Database) -> None:
    db.execute_sql(
        f"INSERT INTO schema_version (id, version) VALUES (1, {db.param})"
        " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        (SCHEMA_VERSION,),
    )


# --- Migrations, by the version each makes ----------------------------------------------


def _to_1(db: Database) -> None:
    """0.1.0: the schema records its version; the index on customer.organization_id goes
    (releases before 2026-11-25 made it; the unique (organization, customer_id) index
    leads with the same column, so it only cost a page write per insert)."""
    db.execute_sql('DROP INDEX IF EXISTS "customer_organization_id"')
    _create_version_table(db)


def _to_2(db: Database) -> None:
    """0.2.0: the list's search index, the country index and counts, and the cursor
    key (search.py), built from the customers already stored, with progress in the log
    (on a 2-core machine, 20 to 70 s for a million customers on SQLite, 10 s on
    PostgreSQL)."""
    search.create_index(db)


MIGRATIONS: dict[int, Callable[[Database], None]] = {1: _to_1, 2: _to_2}


# --- The schema's parts that Peewee's models do not describe ------------------------------

# The database keeps each organization's customer_count in step with its customers: a
# trigger runs in the statement that inserts or deletes one (an upsert that updates
# fires no INSERT trigger), whoever runs it: the service, a bulk load or a copy.
_COUNT_TRIGGERS = {
    "sqlite": [
        """CREATE TRIGGER customer_counted_in AFTER INSERT ON customer BEGIN
        UPDATE organization SET customer_count = customer_count + 1
        WHERE id = NEW.organization_id; END""",
        """CREATE TRIGGER customer_counted_out AFTER DELETE ON customer BEGIN
        UPDATE organization SET customer_count = customer_count - 1
        WHERE id = OLD.organization_id; END""",
    ],
    "postgresql": [
        """CREATE FUNCTION customer_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE organization SET customer_count = customer_count + 1
                WHERE id = NEW.organization_id;
            ELSE
                UPDATE organization SET customer_count = customer_count - 1
                WHERE id = OLD.organization_id;
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER customer_counted AFTER INSERT OR DELETE ON customer
        FOR EACH ROW EXECUTE FUNCTION customer_count_change()""",
    ],
}


@contextlib.contextmanager
def _schema_lock(db: Database) -> Iterator[None]:
    if is_sqlite(db):
        # BEGIN IMMEDIATE takes the write lock up front (waiting out the busy timeout),
        # so concurrent starters queue instead of failing half way.
        with db.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        with db.atomic():
            # A transaction-scoped advisory lock serialises the starters on every host
            # (the same key as releases before 0.1.0 took to create the tables).
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (lock_id("create_tables"),))
            yield
