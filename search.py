"""The list's search, filters and cursors: the search index each backend keeps in step
with the customers table, the statements that count a filtered list and read one page
of it, and the sealed cursors of a walk.

Knows no HTTP. `search_term` is a case-insensitive substring of name, legal name,
customer_id or email. Both backends search one text per customer, those four values
joined by a character no stored value and no term can hold (schemas.py refuses C0
controls), so a match never spans two of them:

- SQLite: an FTS5 table with the `trigram` tokenizer (`customer_search`) over that text
  as `lower()` gives it, kept by triggers in the statement that writes the customer (the
  upsert stays one statement). It holds only the index (contentless), and its rowid
  says whose customer a row is: `organization_id * ORG_SPAN + customer.id`, so an
  organization's matches are a rowid range that FTS5 reads alone, without touching the
  customers table. A term of 1 or 2 characters has no trigram: it is a `LIKE` over the
  organization's customers. Either way ASCII letters fold and no other letter does, as
  SQLite's `lower()` and `LIKE` fold.
- PostgreSQL: `pg_trgm`'s GIN index on the same joined text, and `ILIKE`: case folds as
  the database's locale folds it.

Countries have an index and a per-country count of their own; states and zip codes are
checked on the rows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import string
import struct
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from peewee import Database, ProgrammingError

from connections import is_sqlite
from schemas import ListFilters

log = logging.getLogger("customers")

SEARCHED = ("name", "legal_name", "customer_id", "email")
ORG_SPAN = 1 << 40  # customer ids below a trillion; organization ids below 8 million
TRIGRAM = 3
LIST_INDEX = "customer_organization_id_created_at_lago_id"
COUNTRY_INDEX = "customer_organization_id_country"
# A page is read by walking the list index in order, checking the filters on the way,
# when that visits at most this many rows per filtered row; else from the matches, sorted.
SCAN_FACTOR = 4


def joined_text(prefix: str = "") -> str:
    """The searched text of a customer as SQL (the same on both backends, so that
    PostgreSQL's planner recognises its index expression)."""
    return " || chr(1) || ".join(f"coalesce({prefix}\"{c}\", '')" for c in SEARCHED)


# --- The index, by backend -----------------------------------------------------------


def _sqlite_rowid(prefix: str) -> str:
    return f"{prefix}organization_id * {ORG_SPAN} + {prefix}id"


def _sqlite_text(prefix: str) -> str:
    # Folded by SQLite's lower(), as its LIKE folds: ASCII letters only.
    return "lower(" + joined_text(prefix).replace("chr(1)", "char(1)") + ")"


_COUNTED_IN = """INSERT INTO customer_country_count (organization_id, country, customers)
    VALUES ({r}.organization_id, coalesce({r}.country, ''), 1)
    ON CONFLICT (organization_id, country)
    DO UPDATE SET customers = customer_country_count.customers + 1;"""
_COUNTED_OUT = """UPDATE customer_country_count SET customers = customers - 1
    WHERE organization_id = {r}.organization_id AND country = coalesce({r}.country, '');"""

# Each organization's customers per country (NULL counted as ''), kept by triggers like
# organization.customer_count: a country filter's total_count without a scan.
COUNTRY_COUNT_TABLE = """CREATE TABLE customer_country_count (
    organization_id INTEGER NOT NULL, country VARCHAR(2) NOT NULL, customers INTEGER NOT NULL,
    PRIMARY KEY (organization_id, country))"""
COUNTRY_INDEX_SQL = f'CREATE INDEX "{COUNTRY_INDEX}" ON "customer" ("organization_id", "country")'

_FTS_IN = f"""INSERT INTO customer_search (rowid, text)
    VALUES ({_sqlite_rowid("NEW.")}, {_sqlite_text("NEW.")});"""
_FTS_OUT = f"""INSERT INTO customer_search (customer_search, rowid, text)
    VALUES ('delete', {_sqlite_rowid("OLD.")}, {_sqlite_text("OLD.")});"""

SQLITE_INDEX = [
    # Only the index, no copy of the text: 'delete' is told the old text by the triggers.
    "CREATE VIRTUAL TABLE customer_search USING fts5"
    "(text, tokenize = 'trigram case_sensitive 1', content = '', columnsize = 0)",
    COUNTRY_COUNT_TABLE + " WITHOUT ROWID",
    f"""CREATE TRIGGER customer_indexed_in AFTER INSERT ON customer BEGIN
        {_FTS_IN} {_COUNTED_IN.format(r="NEW")} END""",
    f"""CREATE TRIGGER customer_indexed_out AFTER DELETE ON customer BEGIN
        {_FTS_OUT} {_COUNTED_OUT.format(r="OLD")} END""",
    # An upsert that sends the same values again (most updates) costs nothing here.
    f"""CREATE TRIGGER customer_search_changed
        AFTER UPDATE OF {", ".join(SEARCHED)}, organization_id ON customer
        WHEN {_sqlite_text("OLD.")} IS NOT {_sqlite_text("NEW.")}
            OR OLD.organization_id IS NOT NEW.organization_id
        BEGIN {_FTS_OUT} {_FTS_IN} END""",
    f"""CREATE TRIGGER customer_country_changed
        AFTER UPDATE OF country, organization_id ON customer
        WHEN OLD.country IS NOT NEW.country OR OLD.organization_id IS NOT NEW.organization_id
        BEGIN {_COUNTED_OUT.format(r="OLD")} {_COUNTED_IN.format(r="NEW")} END""",
]

SQLITE_TRIGGERS = (
    "customer_indexed_in",
    "customer_indexed_out",
    "customer_search_changed",
    "customer_country_changed",
)

POSTGRESQL_INDEX = [
    f"CREATE INDEX customer_search ON customer USING gin (({joined_text()}) gin_trgm_ops)",
    COUNTRY_COUNT_TABLE,
    # Two moves between the same countries in opposite directions at once must not
    # deadlock: the two count rows are always changed in the order of their countries.
    f"""CREATE FUNCTION customer_country_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            {_COUNTED_IN.format(r="NEW")}
        ELSIF TG_OP = 'DELETE' THEN
            {_COUNTED_OUT.format(r="OLD")}
        ELSIF coalesce(OLD.country, '') < coalesce(NEW.country, '') THEN
            {_COUNTED_OUT.format(r="OLD")}
            {_COUNTED_IN.format(r="NEW")}
        ELSE
            {_COUNTED_IN.format(r="NEW")}
            {_COUNTED_OUT.format(r="OLD")}
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER customer_country_counted AFTER INSERT OR DELETE ON customer
    FOR EACH ROW EXECUTE FUNCTION customer_country_change()""",
    """CREATE TRIGGER customer_country_changed AFTER UPDATE OF country, organization_id
    ON customer FOR EACH ROW WHEN (OLD.country IS DISTINCT FROM NEW.country
        OR OLD.organization_id IS DISTINCT FROM NEW.organization_id)
    EXECUTE FUNCTION customer_country_change()""",
]

# The key that seals the list's cursors: made once, with the schema, in the database, so
# that every process of every host seals and opens them alike.
CURSOR_KEY_TABLE = """CREATE TABLE list_cursor_key
    (id INTEGER PRIMARY KEY CHECK (id = 1), secret VARCHAR(64) NOT NULL)"""

_FILL_COUNTS = """INSERT INTO customer_country_count (organization_id, country, customers)
    SELECT organization_id, coalesce(country, ''), count(*) FROM customer GROUP BY 1, 2"""


class ExtensionRefused(ValueError):
    """PostgreSQL refused `CREATE EXTENSION pg_trgm` to the service's role. A ValueError,
    as a bad setting is: the start stops with this one line, whichever command started."""


def create_index(db: Database, batch: int = 100_000) -> None:
    """Create the search index, the country index and the cursor key in the active
    database `db` (inside the caller's transaction), and index the customers it holds,
    logging progress."""
    db.execute_sql(COUNTRY_INDEX_SQL)
    db.execute_sql(CURSOR_KEY_TABLE)
    db.execute_sql(
        f"INSERT INTO list_cursor_key (id, secret) VALUES (1, {db.param})",
        (secrets.token_hex(32),),
    )
    if is_sqlite(db):
        _create_sqlite_index(db, batch)
    else:
        _create_extension(db)
        total = db.execute_sql("SELECT count(*) FROM customer").fetchone()[0]
        began = time.monotonic()
        if total:
            log.warning("building the search index of %s customers", f"{total:,}")
        for statement in POSTGRESQL_INDEX:
            db.execute_sql(statement)
        db.execute_sql(_FILL_COUNTS)
        if total:
            log.warning("search index built in %.1f s", time.monotonic() - began)


def drop_index(db: Database) -> None:
    """Remove what `create_index` made from the active database `db`: the schema of
    release 0.1.0 (for the benchmark and the upgrade tests)."""
    db.execute_sql(f'DROP INDEX "{COUNTRY_INDEX}"')
    if is_sqlite(db):
        for trigger in SQLITE_TRIGGERS:
            db.execute_sql(f"DROP TRIGGER {trigger}")
        db.execute_sql("DROP TABLE customer_search")
    else:
        db.execute_sql("DROP INDEX customer_search")
        db.execute_sql("DROP FUNCTION customer_country_change CASCADE")  # and its triggers
    db.execute_sql("DROP TABLE customer_country_count")
    db.execute_sql("DROP TABLE list_cursor_key")


def _create_sqlite_index(db: Database, batch: int) -> None:
    for statement in SQLITE_INDEX:
        db.execute_sql(statement)
    db.execute_sql(_FILL_COUNTS)
    total = db.execute_sql("SELECT count(*) FROM customer").fetchone()[0]
    if not total:
        return
    log.warning("building the search index of %s customers", f"{total:,}")
    began, done, last_id = time.monotonic(), 0, 0
    while True:
        # Batches in id order, so that progress can be told; one transaction in all.
        cursor = db.execute_sql(
            f"INSERT INTO customer_search (rowid, text) SELECT {_sqlite_rowid('')},"
            f" {_sqlite_text('')} FROM customer WHERE id > ? ORDER BY id LIMIT ?"
            " RETURNING rowid",
            (last_id, batch),
        )
        rowids = [row[0] for row in cursor.fetchall()]
        if not rowids:
            break
        done += len(rowids)
        last_id = max(rowid % ORG_SPAN for rowid in rowids)
        if total <= batch:
            continue
        log.warning(
            "search index: %s of %s customers (%.0f s)",
            f"{done:,}",
            f"{total:,}",
            time.monotonic() - began,
        )
    log.warning("search index built in %.1f s", time.monotonic() - began)


def _create_extension(db: Database) -> None:
    installed = db.execute_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()
    if installed:
        return
    try:
        with db.atomic():  # a savepoint: the refusal must not spoil the transaction
            db.execute_sql("CREATE EXTENSION pg_trgm")
    except ProgrammingError as exc:
        name = db.execute_sql("SELECT current_database(), current_user").fetchone()
        raise ExtensionRefused(
            f"the search index needs the pg_trgm extension and role {name[1]!r} may not"
            f" create it ({str(exc).strip().splitlines()[0]}): as the database's owner or a"
            f' superuser, run: psql -d {name[0]} -c "CREATE EXTENSION pg_trgm;"'
        ) from None


# --- The statements ------------------------------------------------------------------

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _fts_query(term: str) -> str:
    # One FTS5 string: every character literal, a double quote doubled. The index holds
    # the text as SQLite's lower() gives it (ASCII letters folded, as its LIKE folds them).
    return '"' + term.translate(_ASCII_LOWER).replace('"', '""') + '"'


class FilteredList:
    """The statements for one organization's list under `filters` on `db`'s backend.

    On SQLite a term of three characters or more is looked up in the FTS5 index; the
    page is then read one of two ways, chosen from the counts: the matches are few (they
    would be met late walking the list), so they are read by id and sorted; or they are
    many, so the list index is walked in order, each row checked with LIKE (the same
    rule as the index: ASCII letters fold), until the page is full. Countries alone are
    counted from customer_country_count, and a rare country's page read off its index.
    """

    def __init__(
        self,
        db: Database,
        organization_id: int,
        filters: ListFilters,
        organization_total: int,
        table_total: int,
    ):
        self.organization_total = organization_total  # the organization's customers
        self.table_total = table_total  # every organization's
        self.sqlite = is_sqlite(db)
        self.p = db.param
        self.organization_id = organization_id
        self.filters = filters
        term = filters.search_term
        self.fts = term is not None and self.sqlite and len(term) >= TRIGRAM

    def _matches(self, select: str) -> tuple[str, list[Any]]:
        """The organization's rows of the FTS5 index that hold the term."""
        base = self.organization_id * ORG_SPAN
        sql = (
            f"SELECT {select} FROM customer_search WHERE customer_search MATCH {self.p}"
            f" AND rowid >= {self.p} AND rowid < {self.p}"
        )
        return sql, [_fts_query(self.filters.search_term or ""), base, base + ORG_SPAN]

    def _matched_customers(self) -> tuple[str, list[Any]]:
        """FROM ... for reading the customers through the FTS5 index."""
        base = self.organization_id * ORG_SPAN
        matches, params = self._matches(f"rowid - {base} AS matched")
        # CROSS JOIN: SQLite keeps this order, the index's matches first.
        return f'({matches}) CROSS JOIN "customer" ON "customer"."id" = matched', params

    def where(self, term_by_index: bool = False) -> tuple[str, list[Any]]:
        """The WHERE clause on `customer` and its parameters; the term is left to the
        caller when `term_by_index` (the FTS5 index has found its rows)."""
        p = self.p
        parts, params = [f'"organization_id" = {p}'], [self.organization_id]
        term = self.filters.search_term
        if term is not None and not term_by_index:
            if self.sqlite or len(term) < TRIGRAM:
                like = "LIKE" if self.sqlite else "ILIKE"
                tests = [f"\"{column}\" {like} {p} ESCAPE '\\'" for column in SEARCHED]
                parts.append(f"({' OR '.join(tests)})")
                params += [_like_pattern(term)] * len(SEARCHED)
            else:  # PostgreSQL: the expression of its trigram index
                parts.append(f"({joined_text()}) ILIKE {p} ESCAPE '\\'")
                params.append(_like_pattern(term))
        for column, values in (
            ("country", self.filters.countries),
            ("state", self.filters.states),
            ("zipcode", self.filters.zipcodes),
        ):
            if values:
                parts.append(f'"{column}" IN ({", ".join([p] * len(values))})')
                params += sorted(values)
        return " AND ".join(parts), params

    def count(self) -> tuple[str, list[Any]]:
        f = self.filters
        if self.fts and not (f.countries or f.states or f.zipcodes):
            return self._matches("count(*)")  # the index alone
        if f.countries and not (f.search_term or f.states or f.zipcodes):
            marks = ", ".join([self.p] * len(f.countries))
            return (
                "SELECT coalesce(sum(customers), 0) FROM customer_country_count"
                f" WHERE organization_id = {self.p} AND country IN ({marks})",
                [self.organization_id, *sorted(f.countries)],
            )
        if self.fts:
            source, params = self._matched_customers()
            where, where_params = self.where(term_by_index=True)
            return f"SELECT count(*) FROM {source} WHERE {where}", [*params, *where_params]
        where, params = self.where()
        source = '"customer"'
        if self.sqlite and not f.countries and self.organization_total * 3 > self.table_total:
            # Nothing narrows the rows but the organization, which holds most of them:
            # reading the table in order beats fetching its rows one by one by an index.
            source += " NOT INDEXED"
        return f"SELECT count(*) FROM {source} WHERE {where}", params

    def page(
        self,
        columns: str,
        limit: int,
        offset: int,
        count: int,
        after: tuple[Any, Any] | None = None,
    ) -> tuple[str, list[Any]]:
        """The page's statement, planned from the counts (see the class); `after`: only
        the rows after this (created_at, lago_id) in the list's order, as stored."""
        order = 'ORDER BY "created_at" DESC, "lago_id"'
        tail = f"{order} LIMIT {self.p} OFFSET {self.p}"
        p = self.p
        # The list's order mixes directions, so no row value compares; the first part is
        # a range of the list index, the second checks ties on created_at.
        keyset = f'"created_at" <= {p} AND ("created_at" < {p} OR "lago_id" > {p})'
        keyset_params = [after[0], after[0], after[1]] if after else []
        # How many rows of the list walking it would visit to fill this page.
        visits = (offset + limit) * self.organization_total / max(count, 1)
        dense = visits <= SCAN_FACTOR * count
        if self.fts and not dense:
            source, params = self._matched_customers()
            where, where_params = self.where(term_by_index=True)
            params += where_params
        else:
            source = '"customer"'
            if self.sqlite:
                index = COUNTRY_INDEX if self.filters.countries and not dense else LIST_INDEX
                source += f' INDEXED BY "{index}"'
            where, params = self.where()
        if after:
            where += f" AND {keyset}"
        sql = f"SELECT {columns} FROM {source} WHERE {where} {tail}"
        return sql, [*params, *keyset_params, limit, offset]


# --- Cursors --------------------------------------------------------------------------
#
# A cursor is the list position after one customer: its organization, created_at and
# lago_id, 32 bytes, encrypted (XOR with an HMAC-SHA256 keystream of a random nonce) and
# then authenticated (HMAC-SHA256 of nonce and ciphertext, 16 bytes), with keys derived
# from the database's cursor key: it reveals nothing, and one that was not made here for
# this organization does not open.

_POSITION = struct.Struct(">qq16s")  # organization id, created_at (epoch seconds), lago_id
_NONCE, _TAG = 12, 16


class BadCursor(ValueError):
    """The cursor was not made by this database for this organization."""


def _keys(secret: str) -> tuple[bytes, bytes]:
    root = bytes.fromhex(secret)
    return (
        hmac.new(root, b"list cursor: encryption", hashlib.sha256).digest(),
        hmac.new(root, b"list cursor: authentication", hashlib.sha256).digest(),
    )


def _xor(key: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = hmac.new(key, nonce, hashlib.sha256).digest()  # 32 bytes: the whole position
    return bytes(a ^ b for a, b in zip(data, stream, strict=False))


def seal_cursor(secret: str, organization_id: int, created_at: datetime, lago_id: uuid.UUID) -> str:
    """The cursor after the customer (`created_at`, `lago_id`) of an organization."""
    encrypt, authenticate = _keys(secret)
    seconds = int(created_at.replace(tzinfo=UTC).timestamp())
    nonce = secrets.token_bytes(_NONCE)
    sealed = _xor(encrypt, nonce, _POSITION.pack(organization_id, seconds, lago_id.bytes))
    tag = hmac.new(authenticate, nonce + sealed, hashlib.sha256).digest()[:_TAG]
    return base64.urlsafe_b64encode(nonce + sealed + tag).decode().rstrip("=")


def open_cursor(secret: str, organization_id: int, cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, lago_id) of a cursor made by `seal_cursor` for this organization;
    `BadCursor` for any other text."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except ValueError:
        raise BadCursor(cursor) from None
    if len(raw) != _NONCE + _POSITION.size + _TAG or not cursor.isascii():
        raise BadCursor(cursor)
    nonce, sealed, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    encrypt, authenticate = _keys(secret)
    expected = hmac.new(authenticate, nonce + sealed, hashlib.sha256).digest()[:_TAG]
    if not hmac.compare_digest(tag, expected):
        raise BadCursor(cursor)
    owner, seconds, lago_id = _POSITION.unpack(_xor(encrypt, nonce, sealed))
    if owner != organization_id:
        raise BadCursor(cursor)
    created_at = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    return created_at, uuid.UUID(bytes=lago_id)
