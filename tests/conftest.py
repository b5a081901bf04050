"""Fixtures: a fresh app on a fresh SQLite file per test, its client, and its keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

import models
from app import create_app

pytest_plugins = ["double"]

API_KEY = "test-key-0123456789abcdef0123456789abcdef"


@pytest.fixture
def database_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'customers.db'}"


@pytest.fixture
def make_app(database_url: str) -> Callable[..., Flask]:
    """Build an app on this test's database; keyword arguments override settings."""

    def build(**settings: Any) -> Flask:
        config = {"DATABASE_URL": database_url, "API_KEY": API_KEY, **settings}
        return create_app({k: v for k, v in config.items() if v is not None})

    return build


@pytest.fixture
def app(make_app) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stored_customers(app: Flask) -> list[dict[str, Any]]:
    """Every customer row as the database holds it, whatever the organization."""
    with models.using(app.extensions["customers.db"]):
        return list(models.Customer.select().order_by(models.Customer.id).dicts())


def mint_key(app: Flask, organization: str) -> str:
    """A key minted the way an operator does it: through the CLI."""
    result = app.test_cli_runner().invoke(args=["keys", "create", "--org", organization])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]
