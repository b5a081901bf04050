"""The OpenAPI document: valid 3.1, built from the schemas, true to what the service does
(every documented status reached, every answer conforming), and schemathesis against a
real gunicorn."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pytest
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import openapi
import schemas
from app import __version__
from tests.conftest import API_KEY, BACKEND, auth
from tests.support import Gunicorn
from tests.test_errors import _break_the_database, _repair_the_database


def test_document_is_valid_openapi_3_1():
    document = openapi.document(__version__)
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_served_without_a_key_and_equal_to_the_built_document(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == json.loads(json.dumps(openapi.document(__version__)))


def test_field_rules_come_from_the_schema():
    inputs = openapi.document(__version__)["components"]["schemas"]["CustomerInput"]["properties"]
    for name, field in schemas.CustomerSchema().load_fields.items():
        variants = inputs[name]["anyOf"]
        assert ({"type": "null"} in variants) == field.allow_none, name
        text = variants[0]
        if name == "country":
            assert "US" in text["enum"] and "us" in text["enum"] and "ZZ" not in text["enum"]
        else:
            assert text["maxLength"] == field.max_length, name
    assert set(inputs) == set(schemas.CUSTOMER_FIELDS)


def _validator(schema: dict) -> jsonschema.Draft202012Validator:
    document = openapi.document(__version__)
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:doc", resource)
    return jsonschema.Draft202012Validator(
        {"$ref": "urn:doc#" + schema["$ref"][1:]} if "$ref" in schema else schema,
        registry=registry,
    )


def test_contract_example_conforms_to_the_customer_schema():
    example = {"customer": openapi.EXAMPLE_CUSTOMER}
    _validator({"$ref": "#/components/schemas/CustomerEnvelope"}).validate(example)


def _request_for(client, app, tmp_path, path: str, method: str, status: int):
    """A request that makes `method path` answer `status`."""
    base = "/api/v1/customers"
    body = {"customer": {"customer_id": "known", "name": "Known"}}
    client.post(base, json=body, headers=auth())
    concrete = path.replace("{customer_id}", "known" if status != 404 else "unknown")
    if status == 401:
        return client.open(concrete, method=method, headers=auth("wrong"))
    if status == 400:
        return client.post(base, data=b"{", headers={**auth(), "Content-Type": "application/json"})
    if status == 413:
        big = json.dumps({"customer": {"customer_id": "x", "name": "y" * 70_000}})
        return client.post(base, data=big, headers={**auth(), "Content-Type": "application/json"})
    if status == 422:
        if method == "GET":
            return client.get(base + "?per_page=0", headers=auth())
        return client.post(base, json={"customer": {"customer_id": ""}}, headers=auth())
    if status == 503:
        _break_the_database(app, tmp_path)
        try:
            return client.open(concrete, method=method, json=body, headers=auth())
        finally:
            _repair_the_database(app, tmp_path)
    return client.open(concrete, method=method, json=body, headers=auth())


@pytest.mark.sqlite_only  # the 503 is made by taking the SQLite file away
def test_every_documented_status_is_reached_and_conforms(client, app, tmp_path):
    document = openapi.document(__version__)
    reached = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, spec in operation["responses"].items():
                schema = spec["content"]["application/json"]["schema"]
                if status == "414":
                    # gunicorn and nginx answer it before the app: tests/test_edges.py
                    # checks they answer this body.
                    _validator(schema).validate({"status": 414, "error": "URI Too Long"})
                    reached.append((path, method, status))
                    continue
                response = _request_for(client, app, tmp_path, path, method.upper(), int(status))
                assert response.status_code == int(status), (path, method, status)
                schema = spec["content"]["application/json"]["schema"]
                _validator(schema).validate(response.get_json())
                assert response.headers["X-Request-Id"]
                reached.append((path, method, status))
    assert len(reached) == sum(
        len(op["responses"])
        for item in document["paths"].values()
        for key, op in item.items()
        if key != "parameters"
    )


SCHEMATHESIS_EXAMPLES = 100


@pytest.mark.skipif(BACKEND != "sqlite", reason="run once, on the default backend")
def test_schemathesis_against_gunicorn(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'st.db'}", "API_KEY": API_KEY}
    with Gunicorn(env, workers=2, log_path=tmp_path / "gunicorn.log") as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--checks",
                "all",
                # JSON Schema counts 405.0 as an integer; the contract (Lago) does not, so
                # "valid data rejected" would flag a documented rule. Every other check runs.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                str(SCHEMATHESIS_EXAMPLES),
                "--seed",
                "20261125",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    match = re.search(r"(\d+) generated, (\d+) passed", output)
    assert match and int(match.group(1)) > 500 and match.group(1) == match.group(2), output
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-2000:]
    log = (tmp_path / "gunicorn.log").read_text()
    assert '" 500 ' not in log and "Traceback" not in log
