"""Persistence: the tables, and the statements the service runs on them.

Knows no HTTP. The models are bound to `connections.database`, the database of the
current context; opening databases and the machinery of a shared SQLite file live in
connections.py, the schema's versions and upgrades in migrations.py.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from peewee import (
    SQL,
    AutoField,
    CharField,
    Database,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    UUIDField,
)
from peewee import __exception_wrapper__ as driver_errors

import search
from connections import current, database, is_sqlite, using
from schemas import CUSTOMER_FIELDS, DEFAULT_MAX_LENGTH, URL_MAX_LENGTH, ListFilters


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
    # Kept in step with the organization's customers by triggers (_COUNT_TRIGGERS), so
    # that the list's total_count does not cost a scan of them.
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
    # No index of its own: the unique (organization, customer_id) index leads with it.
    organization = ForeignKeyField(
        Organization, backref="customers", on_delete="CASCADE", index=False
    )
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


def copy_database(source: Database, target: Database, batch: int = 1000) -> dict[str, int]:
    """Copy every organization, key and customer from `source` into the empty `target`
    (for instance SQLite to PostgreSQL), ids, `lago_id`s, dates and key hashes included,
    in one transaction on the target, whose schema must be up to date
    (`migrations.upgrade`). Returns the rows copied per table."""
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
        if model is Organization:
            for row in rows:
                row["customer_count"] = 0  # the count trigger counts the copied customers
        with using(target, close=False):  # inside copy_database's transaction
            model.insert_many(rows).execute()
        count += len(rows)
        last_id = rows[-1]["id"]


# Written by the SQLite health probe: a constant in the file header, so the probe is a
# real (tiny) write that fails when the disk is full or the file read-only.
_APPLICATION_ID = 0x4C41474F  # "LAGO"


def ping() -> None:
    """Raise if the database cannot serve requests. On SQLite that includes writing: a
    full disk or a read-only file leave reads working but every upsert failing."""
    if is_sqlite(current()):
        _write(f"PRAGMA application_id = {_APPLICATION_ID}", ())
    else:
        _run("SELECT 1", ())


# --- Organizations and keys -------------------------------------------------------------


def ensure_organization(name: str) -> int:
    """The id of the organization `name`, created when new (safe under concurrency)."""
    Organization.insert(name=name, created_at=utcnow()).on_conflict_ignore().execute()
    return Organization.get(Organization.name == name).id


def add_api_key(organization_id: int, prefix: str, key_hash: str) -> None:
    ApiKey.create(organization=organization_id, prefix=prefix, key_hash=key_hash)


def find_active_key(prefix: str) -> tuple[int, str] | None:
    """(organization id, key hash) of the unrevoked key with this prefix."""
    row = _one(_run(_statement("key", database.param), (prefix,)))
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
#
# The statements on the request path are written out as SQL, from the models' own
# column names, once per shape, and then only executed: building the same 14-column
# upsert through Peewee's query builder cost ~240 us of CPU a request, running it in
# SQLite ~13 us. They read back only what the customer object shows (not the id, the
# organization or updated_at), as dicts keyed by field name, converted by the fields.

# A customer as the API shows it: `lago_id` (a UUID), `created_at` (a naive UTC
# datetime) and the text fields of CUSTOMER_FIELDS.
Row = dict[str, Any]

_OBJECT_COLUMNS = tuple(
    field
    for field in Customer._meta.sorted_fields
    if field.name in ("lago_id", "created_at", *CUSTOMER_FIELDS)
)
_RETURNING = ", ".join(f'"{field.column_name}"' for field in _OBJECT_COLUMNS)
_BY_CUSTOMER_ID = '"organization_id" = {p} AND "customer_id" = {p}'


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{column}"' for column in columns)


@functools.lru_cache(maxsize=512)
def _upsert_sql(param: str, columns: tuple[str, ...]) -> str:
    inserted = ("lago_id", "organization_id", "created_at", "updated_at", *columns)
    updated = ("updated_at", *(column for column in columns if column != "customer_id"))
    return (
        f'INSERT INTO "customer" ({_quoted(inserted)})'
        f" VALUES ({', '.join([param] * len(inserted))})"
        ' ON CONFLICT ("organization_id", "customer_id") DO UPDATE SET '
        + ", ".join(f'"{column}" = excluded."{column}"' for column in updated)
        + f" RETURNING {_RETURNING}"
    )


@functools.lru_cache(maxsize=512)
def _update_sql(param: str, columns: tuple[str, ...]) -> str:
    assignments = ", ".join(f'"{column}" = {param}' for column in ("updated_at", *columns))
    return (
        f'UPDATE "customer" SET {assignments}'
        f" WHERE {_BY_CUSTOMER_ID.format(p=param)} RETURNING {_RETURNING}"
    )


@functools.cache
def _statement(name: str, param: str) -> str:
    where = _BY_CUSTOMER_ID.format(p=param)
    return {
        "get": f'SELECT {_RETURNING} FROM "customer" WHERE {where}',
        "delete": f'DELETE FROM "customer" WHERE {where} RETURNING {_RETURNING}',
        "key": f'SELECT "organization_id", "key_hash" FROM "api_key"'
        f' WHERE "prefix" = {param} AND "revoked_at" IS NULL',
        # The list index's order, newest first then lago_id ascending.
        "page": f'SELECT {_RETURNING} FROM "customer" WHERE "organization_id" = {param}'
        f' ORDER BY "created_at" DESC, "lago_id" LIMIT {param} OFFSET {param}',
        "count": f'SELECT "customer_count" FROM "organization" WHERE "id" = {param}',
        "table count": 'SELECT sum("customer_count") FROM "organization"',
        "cursor key": 'SELECT "secret" FROM "list_cursor_key" WHERE "id" = 1',
    }[name]


def _run(sql: str, params: Sequence[Any]) -> list[tuple]:
    # Every row is fetched: SQLite finishes (and, outside a transaction, commits) a
    # statement with RETURNING only once it has been stepped to the end.
    cursor = database.execute_sql(sql, params)
    try:
        # SQLite may fail only now (a full disk shows when the statement completes):
        # translate the driver's error into peewee's, as execute_sql does.
        with driver_errors:
            return cursor.fetchall() if cursor.description is not None else []
    finally:
        cursor.close()


def _write(sql: str, params: Sequence[Any]) -> list[tuple]:
    """Run one writing statement (its own transaction), taking turns with the other
    writers of an SQLite file first."""
    db = current()
    writers = getattr(db, "writers", None)
    # Inside a longer transaction this connection may hold SQLite's lock already: taking
    # the turn now could leave a peer holding the turn and waiting for that lock.
    if writers is None or db.in_transaction():
        return _run(sql, params)
    with writers:
        rows = _run(sql, params)
    db.checkpointer.wrote()
    return rows


# The drivers hand back text as it is; only these need a conversion.
_CONVERTED = (Customer.lago_id, Customer.created_at)
_ROW_KEYS = tuple(field.name for field in _OBJECT_COLUMNS)


def _customer_row(values: tuple | None) -> Row | None:
    if values is None:
        return None
    row = dict(zip(_ROW_KEYS, values, strict=True))
    for field in _CONVERTED:
        row[field.name] = field.python_value(row[field.name])
    return row


def _one(rows: list[tuple]) -> tuple | None:
    return rows[0] if rows else None


def upsert_customer(
    organization_id: int,
    fields: dict[str, str | None],
    *,
    lago_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> Row | None:
    """Create or update the organization's customer `fields["customer_id"]` atomically.

    Only the keys present in `fields` are written; `lago_id` and `created_at` are set on
    creation only (new ones, unless given: a test double's seed may pin them).

    With a `name`, this is one `INSERT ... ON CONFLICT DO UPDATE` on the unique
    (organization, customer_id) index: concurrent first-time upserts leave one row
    (the count trigger fires when it inserted).
    Without a `name` the call can only update (a new customer needs one), so it is one
    `UPDATE`, and None means there was no such customer to update.
    """
    now = Customer.updated_at.db_value(utcnow())
    param = database.param
    if "name" not in fields:
        columns = tuple(
            name for name in CUSTOMER_FIELDS if name in fields and name != "customer_id"
        )
        params = [now, *(fields[c] for c in columns), organization_id, fields["customer_id"]]
        return _customer_row(_one(_write(_update_sql(param, columns), params)))
    columns = tuple(name for name in CUSTOMER_FIELDS if name in fields)
    lago_id = lago_id or uuid.uuid4()
    params = [
        Customer.lago_id.db_value(lago_id),
        organization_id,
        Customer.created_at.db_value(created_at) if created_at else now,
        now,
        *(fields[c] for c in columns),
    ]
    return _customer_row(_one(_write(_upsert_sql(param, columns), params)))


def get_customer(organization_id: int, customer_id: str) -> Row | None:
    """The organization's customer, found through the unique (organization, customer_id) index."""
    rows = _run(_statement("get", database.param), (organization_id, customer_id))
    return _customer_row(_one(rows))


def delete_customer(organization_id: int, customer_id: str) -> Row | None:
    """Delete the organization's customer in one statement; return it as it was, or None."""
    rows = _write(_statement("delete", database.param), (organization_id, customer_id))
    return _customer_row(_one(rows))


def list_customers(
    organization_id: int,
    page: int,
    per_page: int,
    filters: ListFilters | None = None,
    cursor: str | None = None,
) -> tuple[list[Row], int, str | None]:
    """One page of the organization's customers that pass `filters`, newest first then
    `lago_id` ascending (the order of the list index): page number `page`, or, given a
    `cursor`, the customers after it. Returns the rows, how many pass in all, and the
    cursor after the last row (None when no row follows it). Raises `search.BadCursor`
    for a cursor not made here for this organization."""
    param = database.param
    filters = filters or ListFilters()
    after = None
    if cursor is not None:
        created_at, lago_id = search.open_cursor(_cursor_secret(), organization_id, cursor)
        after = (Customer.created_at.db_value(created_at), Customer.lago_id.db_value(lago_id))
    counted = _one(_run(_statement("count", param), (organization_id,)))
    organization_total = total = counted[0] if counted else 0
    offset = 0 if after else (page - 1) * per_page
    if not filters and not after:
        # One more row than the page: whether another follows it.
        rows = _run(_statement("page", param), (organization_id, per_page + 1, offset))
    elif not organization_total:
        return [], 0, None
    else:
        statements = search.FilteredList(
            current(),
            organization_id,
            filters,
            organization_total,
            _one(_run(_statement("table count", param), ()))[0] if filters else total,
        )
        if filters:
            total = _one(_run(*statements.count()))[0]
        if offset >= total:
            return [], total, None
        rows = _run(*statements.page(_RETURNING, per_page + 1, offset, total, after))
    customers = [_customer_row(values) for values in rows[:per_page]]
    next_cursor = None
    if len(rows) > per_page:
        last = customers[-1]
        next_cursor = search.seal_cursor(
            _cursor_secret(), organization_id, last["created_at"], last["lago_id"]
        )
    return customers, total, next_cursor


def _cursor_secret() -> str:
    """The database's cursor key, read once per database object."""
    db = current()
    secret = getattr(db, "cursor_secret", None)
    if secret is None:
        (secret,) = _one(_run(_statement("cursor key", database.param), ()))
        db.cursor_secret = secret
    return secret


def clear_customers() -> int:
    """Delete every customer of every organization (a test double's reset); keys stay."""
    return Customer.delete().execute()  # the trigger brings every count to 0
