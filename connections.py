"""Connections: opening a database from its URL, the database of the current context,
and what the writers of one SQLite file share (turns at the write lock, the background
checkpointer, the online backup).

Knows no HTTP and no tables. Every model is bound to `database`, a proxy that resolves
to the database activated for the current context (`activate` / `using`), so that
several apps, each with its own database, can live in one process: two test doubles,
or one per pytest-xdist worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from typing import Any
from urllib.parse import quote, urlparse, urlsplit

from peewee import Database, DatabaseProxy, OperationalError
from playhouse.db_url import parseresult_to_dict
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

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
    goes on) hand this thread's connection back to the pool; or, when the block failed,
    close it for good. A connection that met a fault is not trusted again: SQLite opens a
    file read-only when it cannot write it, and such a connection, pooled, would refuse
    every write after the storage heals."""
    token = activate(db)
    failed = True
    try:
        yield db
        failed = False
    finally:
        if close and not db.is_closed():
            if failed:
                db.manual_close()
            else:
                db.close()
        deactivate(token)


def current() -> Database:
    """The database activated in this context (LookupError when none is)."""
    return _active.get()


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
    and foreign keys; WAL is switched on by `enable_wal` when the schema is checked.
    Peewee's URL query parameters pass through to the driver.
    """
    parsed = urlparse(url)
    params = parseresult_to_dict(parsed)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        path = params.pop("database")
        if path != ":memory:":
            make_sqlite_file(path)
        db = SqliteFileDatabase(
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
        if path != ":memory:":
            db.writers = WriterTurns(path + ".lock")
            db.checkpointer = Checkpointer(path, synchronous)
        return db
    if scheme in ("postgres", "postgresql"):
        return PostgresPool(
            params.pop("database"), max_connections=max_connections, timeout=busy_timeout, **params
        )
    raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported")


def masked_url(url: str) -> str:
    """A database URL fit for a log line or a message: the password replaced by ***."""
    base, mark, query = url.partition("?")
    parts = urlsplit(base)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        base = base.replace(parts.netloc, netloc, 1)
    # The query's parameters go to the driver as settings: `?password=` is one too.
    return base + mark + _PASSWORD_PARAMETER.sub(r"\1***", query)


_PASSWORD_PARAMETER = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


# --- SQLite files: made owner-only, and checked before use ------------------------------


class UnusablePath(ValueError):
    """A database file (or a backup's) that cannot be made or written. The message names
    the path and the reason, in one line: what the commands and the start print."""


def sqlite_file(url: str) -> str | None:
    """The file of an `sqlite:///` URL; None for another scheme or `:memory:`."""
    parsed = urlparse(url)
    if parsed.scheme.split("+")[0] != "sqlite":
        return None
    path = parseresult_to_dict(parsed).get("database")
    return None if not path or path == ":memory:" else path


def _reason(exc: OSError) -> str:
    if isinstance(exc, FileExistsError):
        return "a file of that name is in the way"
    return exc.strerror or type(exc).__name__


def make_sqlite_file(path: str) -> bool:
    """Make the folder (as needed) and the empty database file when they are missing, the
    file readable and writable by its owner only (0600: it will hold the keys' hashes;
    SQLite gives its -wal and -shm files the same mode). Returns whether it made the
    file. Raises UnusablePath naming what could not be made, and why."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UnusablePath(f"cannot make the database's folder {folder}: {_reason(exc)}") from None
    if os.path.isdir(path):
        raise UnusablePath(f"the database {path} is a folder, not a file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False  # there already (or a peer made it just now)
    except OSError as exc:
        raise UnusablePath(f"cannot create the database {path}: {_reason(exc)}") from None
    os.close(fd)
    return True


def check_sqlite_writable(path: str) -> None:
    """Raise UnusablePath unless the database file and its folder can be written (SQLite
    makes its -wal, -shm and the writers' .lock file beside it). For the commands and the
    start, which say why in one line; a request meets the same as a 503."""
    make_sqlite_file(path)
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise UnusablePath(f"cannot write the database {path}: {_reason(exc)}") from None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UnusablePath(
            f"cannot write in the database's folder {folder} (SQLite keeps its -wal and"
            f" -shm files there): {_reason(exc)}"
        ) from None


class PostgresPool(PooledPostgresqlDatabase):
    """Peewee's PostgreSQL pool, pinging a connection on check-out only after it has been
    idle a while.

    Peewee sends `SELECT 1` every time it hands out a pooled connection, to find one the
    server has closed: a network round trip and a statement on the server for every
    request (pg_stat_statements: one `SELECT $1` per request, as many as the statements
    the requests run). A connection handed back less than PING_AFTER seconds ago is used
    without one. If the server went away meanwhile, the request meets the broken
    connection, answers 503 and the connection is closed for good (`using`, and the
    request teardown in app.py): a server restart costs at most one 503 per connection
    that was busy less than PING_AFTER seconds before it.
    """

    PING_AFTER = 1.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._returned_at: dict[int, float] = {}

    def _is_closed(self, conn: Any) -> bool:
        returned = self._returned_at.pop(self.conn_key(conn), None)
        if conn.closed:
            return True
        if returned is not None and time.monotonic() - returned < self.PING_AFTER:
            return self._adapter.txn_status(conn) == self._adapter.txn_unknown
        return super()._is_closed(conn)

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        key = self.conn_key(conn)
        self._returned_at[key] = time.monotonic()
        super()._close(conn, close_conn)
        if close_conn or conn.closed:  # not back in the pool
            self._returned_at.pop(key, None)


class SqliteFileDatabase(PooledSqliteDatabase):
    """The pooled SQLite database, with what its writers share on a file: turns at the
    write lock (`writers`) and the background checkpointer (`checkpointer`); both None
    for `:memory:`."""

    writers: WriterTurns | None = None
    checkpointer: Checkpointer | None = None

    def close_all(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        super().close_all()


def is_sqlite(db: Database) -> bool:
    return isinstance(db, PooledSqliteDatabase)


def enable_wal(db: Database, attempts: int = 50) -> None:
    # The switch needs a moment alone with the file; a peer starting at the same instant
    # can make it fail at once rather than wait, so try again briefly.
    for attempt in range(attempts):
        try:
            db.execute_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise  # a read-only or missing file: no use waiting
            time.sleep(0.02)


def backup_sqlite(db: Database, destination: str) -> int:
    """Copy a live SQLite database to `destination`, a new file (0600, as the database)
    in a folder that exists, with SQLite's online backup API: a consistent snapshot,
    while the service keeps writing. Returns the customers copied. Raises
    FileExistsError when anything (a file, a symbolic link, even a dangling one) has
    that name, UnusablePath when the file cannot be made; a failed backup is removed."""
    if not is_sqlite(db):
        raise ValueError("backup copies SQLite databases; for PostgreSQL use pg_dump")
    folder = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(folder):
        raise UnusablePath(f"cannot write the backup {destination}: no folder {folder}")
    try:
        # O_EXCL: never through a symbolic link, never over a file made meanwhile.
        os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise FileExistsError(destination) from None
    except OSError as exc:
        raise UnusablePath(f"cannot write the backup {destination}: {_reason(exc)}") from None
    try:
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(destination)
        raise


def lock_id(name: str) -> int:
    """A PostgreSQL advisory lock key, the same on every host."""
    return zlib.crc32(f"customers:{name}".encode())


# Bumped in a child process after fork: what a process opened or started before (a file
# descriptor's flock, a thread) is not the child's own.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class WriterTurns:
    """Writers of one SQLite file, in any thread of any process, take turns on an flock.

    SQLite lets one writer in at a time; one that finds the file busy sleeps and
    retries (1 ms, 2 ms, 5 ms, ...), long after the other has finished its ~50 us write.
    Queuing on a lock file instead wakes the next writer the moment the file is free:
    +17% upserts/s and a lower p99 with two gunicorn workers (bench/). The lock file
    (`<database>.lock`) is empty and needs no backup.
    """

    def __init__(self, path: str):
        self.path = path
        self._threads = threading.Lock()  # flock does not separate threads of a process
        self._fd: int | None = None
        self._opened_in = -1  # the `_forks` generation that opened _fd

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._opened_in != _forks:  # opened after gunicorn forks, once per process
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._opened_in = _forks
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class Checkpointer:
    """Copies committed pages from an SQLite file's write-ahead log back into the file,
    from a background thread, every `interval` seconds while writes come in.

    SQLite's own automatic checkpoint runs inside the commit that takes the log past
    1,000 pages, while that writer holds its turn: every other writer then waits out the
    page copies and the fsync. Here the copy runs beside the requests (the driver lets
    go of the GIL meanwhile), as a PASSIVE checkpoint that never blocks a writer. On 2
    cores (bench/) the upserts' p99 went from 13.5 to ~10 ms at 16 connections with
    synchronous=NORMAL, and from 10.1 to 1.8 ms at 1 connection with FULL. The
    automatic checkpoint stays on as the safety net that keeps the log bounded.

    The thread starts with the first write and ends after an interval without one, so
    an idle database (a test's, a CLI command's) costs nothing.
    """

    def __init__(self, path: str, synchronous: str, interval: float = 0.05):
        self.path = path
        self.synchronous = synchronous  # a checkpoint syncs the file as commits would
        self.interval = interval
        self._lock = threading.Lock()
        self._written = False
        self._thread: threading.Thread | None = None
        self._started_in = -1  # the `_forks` generation that started _thread
        self._stopped = threading.Event()

    def wrote(self) -> None:
        """Note a committed write: wakes the checkpointer if it sleeps."""
        with self._lock:
            self._written = True
            if self._stopped.is_set():
                return
            if self._thread is None or self._started_in != _forks:
                self._thread = threading.Thread(
                    target=self._run, name=f"checkpoint {self.path}", daemon=True
                )
                self._started_in = _forks
                self._thread.start()

    def stop(self) -> None:
        """Stop for good (the database is being closed); waits for a copy in progress."""
        with self._lock:
            self._stopped.set()
            thread = self._thread if self._started_in == _forks else None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        connection = None
        try:
            while not self._stopped.wait(self.interval):
                with self._lock:
                    if not self._written:
                        self._thread = None
                        return
                    self._written = False
                try:
                    if connection is None:
                        # mode=rw: never create the file (a database deleted meanwhile).
                        connection = sqlite3.connect(
                            f"file:{quote(self.path)}?mode=rw", uri=True, isolation_level=None
                        )
                        connection.execute(f"PRAGMA synchronous = {self.synchronous}")
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    # A full disk, a read-only file: the writes fail too (and are answered
                    # 503); the next write wakes this thread to try again.
                    logging.getLogger("customers").debug("checkpoint failed: %s", exc)
        finally:
            if connection is not None:
                connection.close()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
