"""The SQLite file's own machinery: the background checkpointer and the writers' turns."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import connections
from tests.conftest import auth

pytestmark = pytest.mark.sqlite_only


def checkpoint_threads(path: Path | str) -> list[threading.Thread]:
    """The checkpointer threads of this database file (other tests' may still be ending)."""
    return [t for t in threading.enumerate() if t.name == f"checkpoint {path}"]


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def upsert(client, customer_id: str) -> None:
    body = {"customer": {"customer_id": customer_id, "name": f"Name of {customer_id}"}}
    assert client.post("/api/v1/customers", json=body, headers=auth()).status_code == 200


def rows_in_main_file(db_path: Path, tmp_path: Path) -> set[str]:
    """The customer_ids the database file holds by itself, without its write-ahead log:
    what checkpoints have copied back into it."""
    alone = tmp_path / "alone.db"
    shutil.copyfile(db_path, alone)  # the -wal file is not copied
    conn = sqlite3.connect(alone)
    try:
        return {row[0] for row in conn.execute("SELECT customer_id FROM customer")}
    except sqlite3.DatabaseError:  # not even the table yet (or a copy caught mid-write)
        return set()
    finally:
        conn.close()


def test_writes_reach_the_database_file_in_the_background(app, client, tmp_path):
    db_path = Path(app.extensions["customers.db"].database)
    upsert(client, "first")
    upsert(client, "second")
    # A handful of writes is far below SQLite's own automatic checkpoint (1,000 pages):
    # only the background checkpointer copies them into the file.
    assert wait_for(lambda: rows_in_main_file(db_path, tmp_path) >= {"first", "second"})
    # With no more writes, the thread ends by itself; the next write starts it again.
    assert wait_for(lambda: not checkpoint_threads(db_path))
    upsert(client, "third")
    assert checkpoint_threads(db_path)
    assert wait_for(lambda: "third" in rows_in_main_file(db_path, tmp_path))
    assert wait_for(lambda: not checkpoint_threads(db_path))


def test_closing_the_database_stops_the_checkpointer_for_good(app, client):
    db_path = app.extensions["customers.db"].database
    upsert(client, "first")
    assert checkpoint_threads(db_path)
    app.extensions["customers.db"].close_all()
    assert not checkpoint_threads(db_path)  # close_all waited for it
    upsert(client, "second")  # the pool opens a new connection; no thread starts
    assert not checkpoint_threads(db_path)


def test_the_checkpointer_never_creates_a_missing_file(tmp_path):
    path = tmp_path / "gone.db"
    checkpointer = connections.Checkpointer(str(path), "NORMAL")
    checkpointer.wrote()
    assert checkpoint_threads(path)
    assert wait_for(lambda: not checkpoint_threads(path))
    assert list(tmp_path.iterdir()) == []
