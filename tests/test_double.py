"""The service as a test double: the command, the context manager, the pytest fixture,
the test client, the request log, and proof that production has none of it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import double
from app import create_app
from tests.support import REPO, Gunicorn, request

# The double always runs on its own throwaway SQLite file, whatever the suite's backend.
pytestmark = pytest.mark.sqlite_only

SEED = {
    "customers": [
        {
            "lago_id": "99a6094e-199b-4101-896a-54e927ce7bd7",
            "customer_id": "seeded-1",
            "name": "Gavin Belson",
            "country": "us",
            "created_at": "2022-04-29T08:59:51Z",
        },
        {"customer_id": "seeded-2", "name": "Hooli", "city": "Palo Alto"},
    ]
}


# --- The "other service" under test: registers a customer over plain HTTP -----------------


class BillingError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"{status}: {body}")
        self.status, self.body = status, body


def register_customer(base_url: str, api_key: str, customer_id: str, name: str) -> str:
    """What another service's code does: create the customer in 'Lago', keep its lago_id."""
    data = json.dumps({"customer": {"customer_id": customer_id, "name": name}}).encode()
    req = urllib.request.Request(
        f"{base_url}/api/v1/customers",
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.load(response)["customer"]["lago_id"]
    except urllib.error.HTTPError as exc:
        raise BillingError(exc.code, json.load(exc)) from None


def get_json(url: str, api_key: str | None = None, method: str = "GET") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


# --- The command ----------------------------------------------------------------------------


def start_command(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "double.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        text=True,
    )
    ready = process.stdout.readline().strip()
    if not ready:
        process.wait(10)
        raise AssertionError(f"no ready line; stderr: {process.stderr.read()}")
    return process, ready


def leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.iterdir() if p.name.startswith("customers-double-")]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_serves_a_seeded_double_and_cleans_up_on_signal(tmp_path, stop_signal):
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(SEED))
    process, url = start_command(tmp_path, "--api-key", "k-123", "--seed", str(seed_file))
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert len(leftovers(tmp_path)) == 1  # its throwaway database
        status, body = get_json(f"{url}/api/v1/customers/seeded-1", "k-123")
        assert status == 200
        assert body["customer"]["lago_id"] == "99a6094e-199b-4101-896a-54e927ce7bd7"
        assert body["customer"]["created_at"] == "2022-04-29T08:59:51Z"
        assert body["customer"]["country"] == "US"
        lago_id = register_customer(url, "k-123", "from-other-service", "Other")
        assert (
            get_json(f"{url}/api/v1/customers?per_page=10", "k-123")[1]["meta"]["total_count"] == 3
        )
        with pytest.raises(BillingError) as failure:
            register_customer(url, "wrong-key", "x", "y")
        assert failure.value.status == 401
        assert failure.value.body == {"status": 401, "error": "Unauthorized"}
    finally:
        process.send_signal(stop_signal)
        assert process.wait(10) == 0
        process.stdout.close()
        process.stderr.close()
    assert port_is_closed(url)
    assert leftovers(tmp_path) == []
    assert lago_id


def test_command_request_log_over_http(tmp_path):
    process, url = start_command(tmp_path)
    try:
        register_customer(url, double.DEFAULT_API_KEY, "c-1", "First")
        get_json(f"{url}/api/v1/customers/c-1", double.DEFAULT_API_KEY)
        status, log = get_json(f"{url}/_double/requests?limit=1")
        assert status == 200
        assert [(r["method"], r["path"], r["status"]) for r in log["requests"]] == [
            ("GET", "/api/v1/customers/c-1", 200)
        ]
        log = get_json(f"{url}/_double/requests")[1]["requests"]
        assert log[0]["method"] == "POST" and log[0]["path"] == "/api/v1/customers"
        assert log[0]["body"] == {"customer": {"customer_id": "c-1", "name": "First"}}
        assert log[0]["response"]["customer"]["name"] == "First"
        assert get_json(f"{url}/_double/reset", method="POST") == (200, {"status": "reset"})
        assert get_json(f"{url}/_double/requests")[1] == {"requests": []}
        status, body = get_json(f"{url}/api/v1/customers/c-1", double.DEFAULT_API_KEY)
        assert (status, body["code"]) == (404, "customer_not_found")
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()
    assert leftovers(tmp_path) == []


def test_command_refuses_a_bad_seed_and_leaves_nothing(tmp_path):
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps({"customers": [{"customer_id": "a"}, {"name": "b"}]}))
    result = subprocess.run(
        [sys.executable, str(REPO / "double.py"), "--seed", str(seed_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "value_is_mandatory" in result.stderr and "0" in result.stderr
    assert leftovers(tmp_path) == []


# --- The context manager and the fixture ------------------------------------------------


def test_context_manager_serves_resets_and_shuts_down():
    with double.serve(api_key="ctx-key", seed_document=SEED) as running:
        assert running.api_key == "ctx-key"
        register_customer(running.url, "ctx-key", "c-9", "Nine")
        assert [r["path"] for r in running.requests()] == ["/api/v1/customers"]
        assert get_json(f"{running.url}/api/v1/customers", "ctx-key")[1]["meta"]["total_count"] == 3
        running.reset()
        assert running.requests() == []
        assert get_json(f"{running.url}/api/v1/customers", "ctx-key")[1]["meta"]["total_count"] == 0
        # Keys survive a reset.
        register_customer(running.url, "ctx-key", "c-10", "Ten")
        workdir = Path(running.app.extensions["customers.db"].database).parent
        url = running.url
    assert port_is_closed(url)
    assert not workdir.exists()
    assert not any(t.name == "customers-double" for t in threading.enumerate())


def test_two_doubles_in_one_process_do_not_see_each_other():
    with double.serve() as first, double.serve() as second:
        assert first.url != second.url
        first_id = register_customer(first.url, first.api_key, "same-id", "In first")
        second_id = register_customer(second.url, second.api_key, "same-id", "In second")
        assert first_id != second_id
        one = get_json(f"{first.url}/api/v1/customers", first.api_key)[1]
        two = get_json(f"{second.url}/api/v1/customers", second.api_key)[1]
        assert [c["name"] for c in one["customers"]] == ["In first"]
        assert [c["name"] for c in two["customers"]] == ["In second"]
        first.reset()
        assert get_json(f"{first.url}/api/v1/customers/same-id", first.api_key)[0] == 404
        assert get_json(f"{second.url}/api/v1/customers/same-id", second.api_key)[0] == 200
        assert [r["status"] for r in first.requests()] == [404]  # only what came after reset
        assert len(second.requests()) == 3


def test_concurrent_requests_on_a_double():
    with double.serve() as running:
        errors = []

        def worker(n: int) -> None:
            try:
                register_customer(running.url, running.api_key, f"c-{n % 5}", f"n{n}")
            except Exception as exc:  # collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        listed = get_json(f"{running.url}/api/v1/customers", running.api_key)[1]
        assert listed["meta"]["total_count"] == 5
        assert [r["method"] for r in running.requests()] == ["POST"] * 40 + ["GET"]


def test_the_fixture_gives_a_fresh_double(customers_double):
    assert customers_double.requests() == []
    register_customer(customers_double.url, customers_double.api_key, "fx", "Fixture")
    [entry] = customers_double.requests()
    assert (entry["method"], entry["status"]) == ("POST", 200)


def test_the_fixture_gives_a_fresh_double_again(customers_double):
    # Nothing from the test before.
    status, body = get_json(f"{customers_double.url}/api/v1/customers", customers_double.api_key)
    assert (status, body["meta"]["total_count"]) == (200, 0)


def test_double_answers_errors_exactly_like_the_service(customers_double):
    url, key = customers_double.url, customers_double.api_key
    with pytest.raises(BillingError) as failure:
        register_customer(url, key, "", "x")
    assert failure.value.status == 422
    assert failure.value.body == {
        "status": 422,
        "error": "Unprocessable entity",
        "message": "Validation error on the record",
        "error_details": {"customer_id": ["value_is_mandatory"]},
    }
    big = b'{"customer": {"customer_id": "a", "name": "' + b"x" * 70_000 + b'"}}'
    port = int(url.rsplit(":", 1)[1])
    reply = request(port, "POST", "/api/v1/customers", big, customers_double.headers)
    assert (reply.status, reply.json()) == (413, {"status": 413, "error": "Payload Too Large"})
    reply = request(port, "POST", "/api/v1/customers", big, customers_double.headers, chunked=True)
    assert (reply.status, reply.json()) == (413, {"status": 413, "error": "Payload Too Large"})
    assert [r["status"] for r in customers_double.requests()] == [422, 413, 413]


# --- Production has none of it ----------------------------------------------------------


@pytest.mark.parametrize("method,path", [("GET", "/_double/requests"), ("POST", "/_double/reset")])
def test_production_app_has_no_inspection_or_reset(app, client, method, path):
    response = client.open(path, method=method)
    assert (response.status_code, response.get_json()) == (
        404,
        {"status": 404, "error": "Not Found"},
    )


def test_production_gunicorn_has_no_inspection_or_reset(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "API_KEY": "k"}
    with Gunicorn(env, workers=1) as server:
        for method, path in [("GET", "/_double/requests"), ("POST", "/_double/reset")]:
            reply = request(server.port, method, path)
            assert (reply.status, reply.json()) == (404, {"status": 404, "error": "Not Found"})


# --- The README's recipes, run as written -----------------------------------------------


def readme_recipe(name: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```\w+\n(.*?)```", readme, re.DOTALL)
    assert match, f"README has no recipe {name!r}"
    return match.group(1)


def run_shell_recipe(recipe: str, double: Any, cwd: Path) -> str:
    """Run a README shell recipe, as written, against `double` (`$LAGO_URL`,
    `$LAGO_API_KEY`), in an environment holding only those, PATH and HOME as a user's
    shell would; its output, which must be the recipe `<recipe>-answer`."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_recipe(recipe)],
        cwd=cwd,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(cwd),
            "LAGO_URL": double.url,
            "LAGO_API_KEY": double.api_key,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == readme_recipe(f"{recipe}-answer")
    return result.stdout


def run_recipe_tests(tmp_path: Path, recipe: str, passed: int) -> None:
    """Run a README recipe of pytest tests, as written, in a checkout: installed, the
    entry point loads the plugin (tests/test_packaging.py); here, -p does."""
    (tmp_path / f"test_{recipe}.py").write_text(readme_recipe(recipe))
    plugin = ["-p", "customers_registry.pytest_plugin", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugin, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"\b{passed} passed\b", result.stdout), result.stdout


PROJECT_TEST = """
import json
import urllib.request


def test_the_double_runs_beside_the_projects_own_modules(customers_double):
    body = json.dumps({"customer": {"customer_id": "c-1", "name": "A"}}).encode()
    request = urllib.request.Request(
        customers_double.url + "/api/v1/customers", data=body, headers=customers_double.headers
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    customers_double.assert_request_made("POST", "/api/v1/customers", status=200)
"""


def run_project(project: Path, python: str = sys.executable, **env: str):
    """pytest in a project's folder, as its `pytest` command runs (-P: the current folder
    is not put on the import path; pytest puts the tests' folder there itself)."""
    plugin = ["-p", "customers_registry.pytest_plugin", "-p", "no:cacheprovider"]
    return subprocess.run(
        [python, "-P", "-m", "pytest", "-q", *plugin],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("on_pythonpath", [False, True])
def test_a_project_whose_modules_shadow_the_standard_library(tmp_path, on_pythonpath):
    # The double's process must not have the project's folder on its import path, even
    # when the project puts it on PYTHONPATH: the standard library's `secrets` (keys) and
    # `json` are the ones it gets.
    for name in ("secrets", "json"):
        (tmp_path / f"{name}.py").write_text(f'raise ImportError("the project\'s {name}.py")\n')
    (tmp_path / "test_project.py").write_text(PROJECT_TEST)
    path = os.pathsep.join([str(REPO), *([str(tmp_path)] if on_pythonpath else [])])
    if on_pythonpath:
        (tmp_path / "json.py").unlink()  # on PYTHONPATH, it would break pytest itself
    result = run_project(tmp_path, PYTHONPATH=path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_its_dependencies_the_fixture_says_what_to_set(tmp_path):
    """The "apart" set-up with CUSTOMERS_DOUBLE_COMMAND forgotten: a test environment
    holding pytest and the plugin, but not Flask, Peewee or marshmallow."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True)
    [site] = (tmp_path / "venv").glob("lib/python*/site-packages")
    only_pytest = tmp_path / "only-pytest"
    only_pytest.mkdir()
    installed = Path(pytest.__file__).resolve().parent.parent
    for name in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py"):
        (only_pytest / name).symlink_to(installed / name)
    (site / "only-pytest.pth").write_text(f"{only_pytest}\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_project.py").write_text(PROJECT_TEST)
    python = str(tmp_path / "venv" / "bin" / "python")
    result = run_project(project, python)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in result.stdout
    assert (
        "customers_double: the double cannot run in this test environment (No module named 'flask')"
    ) in output
    assert (
        "Set CUSTOMERS_DOUBLE_COMMAND to the customers-double of that environment, e.g.\n"
        '    export CUSTOMERS_DOUBLE_COMMAND="$HOME/.customers-double/bin/customers-double"'
    ) in output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output


def test_readme_pytest_recipe_in_a_checkout(tmp_path):
    run_recipe_tests(tmp_path, "pytest", passed=3)


def test_readme_test_client_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_recipe("test-client"), "README recipe", "exec"), namespace)
    assert namespace["response"].status_code == 200


def test_test_client_route_needs_only_a_config_mapping(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'tc.db'}", "API_KEY": "k"})
    client = app.test_client()
    body = {"customer": {"customer_id": "tc", "name": "Test client"}}
    response = client.post("/api/v1/customers", json=body, headers={"Authorization": "Bearer k"})
    assert response.status_code == 200


def test_context_manager_double_takes_faults_like_the_command():
    with double.serve() as running:
        fault = running.fault(status=503, headers={"Retry-After": "1"}, times=2)
        assert (fault["status"], fault["times"], fault["remaining"]) == (503, 2, 2)
        with pytest.raises(BillingError) as failure:
            register_customer(running.url, running.api_key, "f-1", "Faulted")
        assert failure.value.body == {"status": 503, "error": "Service Unavailable"}
        [entry] = running.requests()
        assert (entry["status"], entry["fault"]) == (503, fault["id"])
        with pytest.raises(ValueError, match="status"):
            running.fault(status=700)
        running.reset()
        assert register_customer(running.url, running.api_key, "f-1", "After reset")
