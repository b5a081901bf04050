"""Fixtures: a fresh app on a fresh database per test, its client, and its keys.

The suite runs on SQLite (a new file per test) or, with TEST_DATABASE=postgresql, on a
real PostgreSQL server that the session starts in a temporary directory (a new database
per test). Tests marked `sqlite_only` / `postgres_only` are about one backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import connections
import models
from app import create_app

pytest_plugins = ["customers_registry.pytest_plugin", "tests.installed"]

API_KEY = "test-key-0123456789abcdef0123456789abcdef"
BACKEND = os.environ.get("TEST_DATABASE", "sqlite")
assert BACKEND in ("sqlite", "postgresql"), f"TEST_DATABASE={BACKEND!r}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: about SQLite itself (files, WAL)")
    config.addinivalue_line("markers", "postgres_only: needs PostgreSQL (several hosts)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"database backend: {BACKEND}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other = "postgres_only" if BACKEND == "sqlite" else "sqlite_only"
    skip = pytest.mark.skip(reason=f"{other} test; this run is on {BACKEND}")
    for item in items:
        if other in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """The session's PostgreSQL server (PostgreSQL runs only)."""
    from tests.servers import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(tmp_path, request) -> Iterator[str]:
    """A fresh, empty database for this test."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'customers.db'}"
        return
    server = request.getfixturevalue("postgres")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def make_app(database_url: str) -> Callable[..., Flask]:
    """Build an app on this test's database; keyword arguments override settings."""

    def build(**settings: Any) -> Flask:
        config = {"DATABASE_URL": database_url, "API_KEY": API_KEY, **settings}
        return create_app({k: v for k, v in config.items() if v is not None})

    return build


@pytest.fixture
def app(make_app) -> Iterator[Flask]:
    app = make_app()
    yield app
    app.extensions["customers.db"].close_all()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stored_customers(source: Flask | str) -> list[dict[str, Any]]:
    """Every customer row as the database holds it, whatever the organization; `source`
    is an app or a database URL."""
    with database_of(source) as db, connections.using(db):
        return list(models.Customer.select().order_by(models.Customer.id).dicts())


class database_of:  # noqa: N801 - used as a context manager, like a function
    """The database of an app (left open) or of a URL (opened and closed here)."""

    def __init__(self, source: Flask | str):
        self.source = source
        self.db = None

    def __enter__(self):
        if isinstance(self.source, str):
            self.db = connections.open_database(self.source)
            return self.db
        return self.source.extensions["customers.db"]

    def __exit__(self, *exc_info: Any) -> None:
        if self.db is not None:
            self.db.close_all()


def stored_text(app: Flask) -> bytes:
    """Everything the database holds, as bytes to search: the SQLite files byte for byte,
    or every row of every table on PostgreSQL."""
    db = app.extensions["customers.db"]
    if connections.is_sqlite(db):
        path = Path(db.database)
        return b"".join(f.read_bytes() for f in path.parent.glob(path.name + "*"))
    with connections.using(db):
        rows = [str(list(model.select().tuples())) for model in models.TABLES]
    return "".join(rows).encode()


def mint_key(app: Flask, organization: str) -> str:
    """A key minted the way an operator does it: through the CLI."""
    result = app.test_cli_runner().invoke(args=["keys", "create", "--org", organization])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]
