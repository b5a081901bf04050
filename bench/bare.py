"""The bare stack: the least the design card's stack can do for an upsert, to show how much
of the distance from the floor the stack itself takes.

Flask parses the body, the service's own marshmallow schema validates it, and one SQLite
upsert runs on a connection the worker keeps open, with the service's writer turns and
checkpointer. Nothing else: no key check, no request id, no connection pool, no strict
JSON or error envelope, no row conversion. Not a product, a yardstick.

    gunicorn --config gunicorn.conf.py 'bench.bare:app'   # DATABASE_URL=sqlite:///...
"""

from __future__ import annotations

import os
import sqlite3
import uuid

from flask import Flask, jsonify, request

import connections
import migrations
import models
import schemas

app = Flask(__name__)

_url = os.environ["DATABASE_URL"]
_path = _url.removeprefix("sqlite:///")
_synchronous = os.environ.get("SQLITE_SYNCHRONOUS", "FULL")
_db = connections.open_database(_url, synchronous=_synchronous)
migrations.upgrade(_db)
with connections.using(_db):
    _organization = models.ensure_organization(models.DEFAULT_ORGANIZATION)
_db.close_all()

_turns = connections.WriterTurns(_path + ".lock")
_checkpointer = connections.Checkpointer(_path, _synchronous)
_connection = sqlite3.connect(_path, isolation_level=None, check_same_thread=False)
_connection.execute("PRAGMA busy_timeout = 10000")
_connection.execute(f"PRAGMA synchronous = {_synchronous}")


@app.post("/api/v1/customers")
def upsert():
    fields = schemas.load_customer(request.get_json(force=True))
    columns = tuple(name for name in schemas.CUSTOMER_FIELDS if name in fields)
    now = models.utcnow().isoformat(" ")
    params = [uuid.uuid4().hex, _organization, now, now, *(fields[c] for c in columns)]
    with _turns:
        row = _connection.execute(models._upsert_sql("?", columns), params).fetchone()
    _checkpointer.wrote()
    return jsonify(customer=dict(zip(models._ROW_KEYS, row, strict=True)))


@app.get("/health")
def health():
    return {"status": "ok"}
