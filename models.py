"""Persistence: the database, its tables, and the statements the service runs.

Knows no HTTP. Every model is bound to `database`, a proxy that resolves to the
database activated for the current context (`activate` / `using`), so that several
apps, each with its own database, can live in one process: two test doubles, or
one per pytest-xdist worker.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from peewee import (
    EXCLUDED,
    SQL,
    AutoField,
    CharField,
    Database,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    OperationalError,
    UUIDField,
)
from playhouse.db_url import parseresult_to_dict
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from schemas import DEFAULT_MAX_LENGTH, URL_MAX_LENGTH

_active: ContextVar[Database] = ContextVar("customers_database")


class ActiveDatabase(DatabaseProxy):
    """A peewee proxy that resolves to the database activated in this context."""

    def __getattr__(self, attr: str) -> Any:
        try:
            target = _active.get()
        except LookupError:
            raise RuntimeError("no database is active in this context") from None
        return getattr(target, attr)

    def __enter__(self):
        return self.__getattr__("__enter__")()

    def __exit__(self, *exc_info):
        return self.__getattr__("__exit__")(*exc_info)


database = ActiveDatabase()


def activate(db: Database) -> Token:
    """Make `db` the database of this context (a request, a CLI command); returns a token."""
    return _active.set(db)


def deactivate(token: Token) -> None:
    _active.reset(token)


@contextlib.contextmanager
def using(db: Database, close: bool = True) -> Iterator[Database]:
    """Run a block against `db`, then (unless `close` is False, inside a transaction that
    goes on) hand this thread's connection back."""
    token = activate(db)
    try:
        yield db
    finally:
        if close and not db.is_closed():
            db.close()
        deactivate(token)


def utcnow() -> datetime:
    """Now in UTC, naive, whole seconds: the precision the contract shows and sorts by."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Organization(BaseModel):
    id = AutoField()
    name = CharField(max_length=DEFAULT_MAX_LENGTH, unique=True)
    created_at = DateTimeField(default=utcnow)
    # Kept in step with the organization's customers in the same transaction as every
    # insert and delete, so that the list's total_count does not cost a scan of them.
    customer_count = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])


class ApiKey(BaseModel):
    """A key, stored as its prefix (to find it and show it) and the SHA-256 of the whole."""

    id = AutoField()
    organization = ForeignKeyField(Organization, backref="api_keys", on_delete="CASCADE")
    prefix = CharField(max_length=32, unique=True)
    key_hash = CharField(max_length=64)
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField(null=True)


def _text(max_length: int = DEFAULT_MAX_LENGTH) -> CharField:
    return CharField(max_length=max_length, null=True)


class Customer(BaseModel):
    id = AutoField()
    lago_id = UUIDField(unique=True)
    organization = ForeignKeyField(Organization, backref="customers", on_delete="CASCADE")
    customer_id = CharField(max_length=DEFAULT_MAX_LENGTH)
    name = CharField(max_length=DEFAULT_MAX_LENGTH)
    address_line1 = _text()
    address_line2 = _text()
    city = _text()
    country = CharField(max_length=2, null=True)
    email = _text()
    legal_name = _text()
    legal_number = _text()
    logo_url = _text(URL_MAX_LENGTH)
    phone = _text()
    state = _text()
    url = _text(URL_MAX_LENGTH)
    zipcode = _text()
    created_at = DateTimeField()
    updated_at = DateTimeField()

    class Meta:
        indexes = (
            # The upsert's conflict target: customer_id is unique per organization.
            (("organization", "customer_id"), True),
        )


# The list's order, newest first then lago_id ascending, read straight off an index.
Customer.add_index(
    Customer.index(Customer.organization, Customer.created_at.desc(), Customer.lago_id)
)

TABLES = (Organization, ApiKey, Customer)
DEFAULT_ORGANIZATION = "default"


# --- Opening the database -------------------------------------------------------------


def open_database(
    url: str,
    *,
    busy_timeout: float = 10.0,
    synchronous: str = "FULL",
    max_connections: int = 32,
) -> Database:
    """A pooled peewee database for `url` (`sqlite:///path` or `postgresql://...`).

    SQLite connections get a busy timeout (writers wait for the lock instead of failing
    with "database is locked"), `synchronous` (FULL: a commit is on disk before the 200),
    and foreign keys; WAL is switched on once, by `create_tables`.
    Peewee's URL query parameters pass through to the driver.
    """
    parsed = urlparse(url)
    params = parseresult_to_dict(parsed)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = params.pop("database")
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        return PooledSqliteDatabase(
            path,
            # First, so that the pragmas after it already wait for a busy file.
            pragmas=[
                ("busy_timeout", int(busy_timeout * 1000)),
                ("synchronous", synchronous),
                ("foreign_keys", 1),
            ],
            returning_clause=True,
            # Pooled connections move between threads (one at a time, checked out).
            check_same_thread=False,
            max_connections=max_connections,
            timeout=busy_timeout,  # the pool's: how long to wait for a free connection
            **params,
        )
    if scheme in ("postgres", "postgresql"):
        return PooledPostgresqlDatabase(
            params.pop("database"), max_connections=max_connections, timeout=busy_timeout, **params
        )
    raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported")


def is_sqlite(db: Database) -> bool:
    return isinstance(db, PooledSqliteDatabase)


def create_tables(db: Database) -> None:
    """Create what is missing, safely when many processes start at once on a new database.

    When every table exists (any start but the very first) no DDL runs at all: on
    PostgreSQL even `CREATE INDEX IF NOT EXISTS` locks its table, and that lock, taken
    by a worker starting while others serve, can deadlock with their writes.
    """
    with using(db):
        if is_sqlite(db):
            _enable_wal(db)
        if not _missing_tables(db):
            return
        with _schema_lock(db):
            if _missing_tables(db):  # a peer may have created them while we waited
                db.create_tables(TABLES, safe=True)


def _missing_tables(db: Database) -> set[str]:
    return {model._meta.table_name for model in TABLES} - set(db.get_tables())


@contextlib.contextmanager
def _schema_lock(db: Database) -> Iterator[None]:
    if is_sqlite(db):
        # BEGIN IMMEDIATE takes the write lock up front (waiting out the busy timeout),
        # so concurrent starters queue instead of failing half way.
        with db.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        with db.atomic():
            # A transaction-scoped advisory lock serialises the starters on every host.
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_lock_id("create_tables"),))
            yield


def _enable_wal(db: Database, attempts: int = 50) -> None:
    # The switch needs a moment alone with the file; a peer starting at the same instant
    # can make it fail at once rather than wait, so try again briefly.
    for attempt in range(attempts):
        try:
            db.execute_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.02)


def backup_sqlite(db: Database, destination: str) -> int:
    """Copy a live SQLite database to `destination` with SQLite's online backup API: a
    consistent snapshot, while the service keeps writing. Returns the customers copied."""
    if not is_sqlite(db):
        raise ValueError("backup copies SQLite databases; for PostgreSQL use pg_dump")
    if os.path.exists(destination):
        raise FileExistsError(destination)
    source = sqlite3.connect(db.database, timeout=db.connect_params.get("timeout", 10))
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
        (verdict,) = target.execute("PRAGMA integrity_check").fetchone()
        if verdict != "ok":
            raise RuntimeError(f"backup failed its integrity check: {verdict}")
        (count,) = target.execute("SELECT count(*) FROM customer").fetchone()
        return count
    finally:
        target.close()
        source.close()


def copy_database(source: Database, target: Database, batch: int = 1000) -> dict[str, int]:
    """Copy every organization, key and customer from `source` into the empty `target`
    (for instance SQLite to PostgreSQL), ids, `lago_id`s, dates and key hashes included,
    in one transaction on the target. Returns the rows copied per table."""
    create_tables(target)
    copied = {}
    with using(target):
        if any(model.select().exists() for model in TABLES):
            raise ValueError("the target database is not empty")
    with using(target), target.atomic():
        for model in TABLES:
            copied[model._meta.table_name] = _copy_table(model, source, target, batch)
        if not is_sqlite(target):
            for model in TABLES:  # the next id after the copied ones
                table = model._meta.table_name
                target.execute_sql(
                    f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'),"
                    f' COALESCE((SELECT MAX(id) FROM "{table}"), 0) + 1, false)'
                )
    return copied


def _copy_table(model: type[BaseModel], source: Database, target: Database, batch: int) -> int:
    count, last_id = 0, 0
    while True:
        with using(source):
            rows = list(
                model.select().where(model.id > last_id).order_by(model.id).limit(batch).dicts()
            )
        if not rows:
            return count
        with using(target, close=False):  # inside copy_database's transaction
            model.insert_many(rows).execute()
        count += len(rows)
        last_id = rows[-1]["id"]


def _lock_id(name: str) -> int:
    return zlib.crc32(f"customers:{name}".encode())


def ping() -> None:
    """Raise if the database does not answer."""
    database.execute_sql("SELECT 1").fetchone()


# --- Organizations and keys -------------------------------------------------------------


def ensure_organization(name: str) -> int:
    """The id of the organization `name`, created when new (safe under concurrency)."""
    Organization.insert(name=name, created_at=utcnow()).on_conflict_ignore().execute()
    return Organization.get(Organization.name == name).id


def add_api_key(organization_id: int, prefix: str, key_hash: str) -> None:
    ApiKey.create(organization=organization_id, prefix=prefix, key_hash=key_hash)


def find_active_key(prefix: str) -> tuple[int, str] | None:
    """(organization id, key hash) of the unrevoked key with this prefix."""
    row = (
        ApiKey.select(ApiKey.organization, ApiKey.key_hash)
        .where((ApiKey.prefix == prefix) & ApiKey.revoked_at.is_null())
        .tuples()
        .first()
    )
    return None if row is None else (row[0], row[1])


def list_api_keys() -> list[dict[str, Any]]:
    query = (
        ApiKey.select(
            Organization.name.alias("organization"),
            ApiKey.prefix,
            ApiKey.created_at,
            ApiKey.revoked_at,
        )
        .join(Organization)
        .order_by(Organization.name, ApiKey.created_at, ApiKey.id)
        .dicts()
    )
    return list(query)


def revoke_api_key(prefix: str) -> bool:
    """Revoke the key with this prefix; False when there is no such unrevoked key."""
    updated = (
        ApiKey.update(revoked_at=utcnow())
        .where((ApiKey.prefix == prefix) & ApiKey.revoked_at.is_null())
        .execute()
    )
    return updated > 0


# --- Customers ------------------------------------------------------------------------


def upsert_customer(
    organization_id: int,
    fields: dict[str, str | None],
    *,
    lago_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> Customer | None:
    """Create or update the organization's customer `fields["customer_id"]` atomically.

    Only the keys present in `fields` are written; `lago_id` and `created_at` are set on
    creation only (new ones, unless given: a test double's seed may pin them).

    With a `name`, this is one `INSERT ... ON CONFLICT DO UPDATE` on the unique
    (organization, customer_id) index: concurrent first-time upserts leave one row
    (and bump the organization's count in the same transaction when it inserted).
    Without a `name` the call can only update (a new customer needs one), so it is one
    `UPDATE`, and None means there was no such customer to update.
    """
    now = utcnow()
    changes = {name: value for name, value in fields.items() if name != "customer_id"}
    if "name" not in fields:
        query = (
            Customer.update(updated_at=now, **changes)
            .where(
                (Customer.organization == organization_id)
                & (Customer.customer_id == fields["customer_id"])
            )
            .returning(Customer)
        )
        return _first(query.objects(Customer).execute())
    lago_id = lago_id or uuid.uuid4()
    query = (
        Customer.insert(
            lago_id=lago_id,
            organization=organization_id,
            created_at=created_at or now,
            updated_at=now,
            **fields,
        )
        .on_conflict(
            conflict_target=(Customer.organization, Customer.customer_id),
            update={
                Customer.updated_at: EXCLUDED.updated_at,
                **{getattr(Customer, name): getattr(EXCLUDED, name) for name in changes},
            },
        )
        .returning(Customer)
    )
    with database.atomic():
        customer = _first(query.objects(Customer).execute())
        if customer.lago_id == lago_id:  # inserted, not updated
            _count_customers(organization_id, +1)
    return customer


def _count_customers(organization_id: int, change: int) -> None:
    Organization.update(customer_count=Organization.customer_count + change).where(
        Organization.id == organization_id
    ).execute()


def get_customer(organization_id: int, customer_id: str) -> Customer | None:
    """The organization's customer, found through the unique (organization, customer_id) index."""
    return Customer.get_or_none(
        (Customer.organization == organization_id) & (Customer.customer_id == customer_id)
    )


def delete_customer(organization_id: int, customer_id: str) -> Customer | None:
    """Delete the organization's customer in one statement; return it as it was, or None."""
    query = (
        Customer.delete()
        .where((Customer.organization == organization_id) & (Customer.customer_id == customer_id))
        .returning(Customer)
    )
    with database.atomic():
        customer = _first(query.objects(Customer).execute())
        if customer is not None:
            _count_customers(organization_id, -1)
    return customer


def list_customers(organization_id: int, page: int, per_page: int) -> tuple[list[Customer], int]:
    """One page of the organization's customers, newest first then `lago_id` ascending
    (the order of the list index), and how many the organization has in all."""
    total = (
        Organization.select(Organization.customer_count)
        .where(Organization.id == organization_id)
        .scalar()
    )
    rows = list(
        Customer.select()
        .where(Customer.organization == organization_id)
        .order_by(Customer.created_at.desc(), Customer.lago_id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return rows, total or 0


def clear_customers() -> int:
    """Delete every customer of every organization (a test double's reset); keys stay."""
    with database.atomic():
        deleted = Customer.delete().execute()
        Organization.update(customer_count=0).execute()
    return deleted


def customer_exists(organization_id: int, customer_id: str) -> bool:
    return (
        Customer.select(SQL("1"))
        .where((Customer.organization == organization_id) & (Customer.customer_id == customer_id))
        .exists()
    )


def _first(cursor: Any) -> Any:
    for row in cursor:
        return row
    return None
