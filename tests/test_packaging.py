"""The package as a new user gets it: built by pip from this checkout, installed into fresh
venvs of throwaway projects, through the README's install recipes run as written.

These build and install with pip from the package index (each venv takes seconds), so
they run once, on the default backend. PIP_CONSTRAINT holds what gets installed to the
versions requirements.txt pins, so that the runs are repeatable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.support import REPO, free_port, request
from tests.test_double import SEED, leftovers, readme_recipe

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="run once, on the default backend")

SERVICE_MODULES = sorted(
    path.name for path in REPO.glob("*.py") if path.name not in ("conftest.py", "setup.py")
)
# A project that has every generic module name the service uses, and a few more.
OWN_MODULES = ["app", "models", "schemas", "auth", "openapi", "double", "config"]
OWN_TEST = """
import http.client
import importlib
import json
import sys

SERVICE = ("flask", "werkzeug", "marshmallow", "peewee", "gunicorn", "customers_registry._")


def test_the_projects_own_modules_are_its_own(customers_double):
    for name in OWN_MODULES:
        module = importlib.import_module(name)
        assert module.WHO == "the project", name
    assert not any(name.startswith(SERVICE) for name in sys.modules)  # nothing of the service


def call(double, method, path, body=None):
    host, port = double.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    data = json.dumps(body) if body else None
    connection.request(method, path, body=data, headers=double.headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_fixture_round_trip_reset_and_fault(customers_double):
    customer = {"customer": {"customer_id": "a", "name": "A"}}
    assert call(customers_double, "POST", "/api/v1/customers", customer)[0] == 200
    status, body = call(customers_double, "GET", "/api/v1/customers/a")
    assert body["customer"]["name"] == "A"
    fault = customers_double.fault(status=503, headers={"Retry-After": "1"})
    assert (fault["status"], fault["remaining"]) == (503, 1)
    assert call(customers_double, "GET", "/api/v1/customers/a")[0] == 503
    customers_double.reset()
    assert call(customers_double, "GET", "/api/v1/customers/a")[0] == 404
""".replace("OWN_MODULES", repr(OWN_MODULES))


def pinned_constraints(tmp_path: Path, leave_out: tuple[str, ...] = ()) -> Path:
    pins = []
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                if line.split("==")[0].lower() not in leave_out:
                    pins.append(line)
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def run(command, cwd: Path, env: dict[str, str], timeout: float = 300):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def recipe(name: str, cwd: Path, env: dict[str, str], timeout: float = 300):
    return run(["bash", "-euo", "pipefail", "-c", readme_recipe(name)], cwd, env, timeout)


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {
        **env,
        "HOME": str(home),
        "CUSTOMERS": str(REPO),
        "PIP_CONSTRAINT": str(pinned_constraints(home)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def project(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A throwaway project with modules of every generic name, and a venv of its own
    (activated: its bin first on PATH)."""
    root = tmp_path / "project"
    root.mkdir()
    for name in OWN_MODULES:
        (root / f"{name}.py").write_text('WHO = "the project"\n')
    (root / "test_recipe.py").write_text(readme_recipe("pytest"))
    (root / "test_own.py").write_text(OWN_TEST)
    run([sys.executable, "-m", "venv", str(root / ".venv")], root, env)
    activated = {**env, "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"}
    return root, activated


def test_the_wheel_holds_one_package_and_every_service_module(tmp_path, base_env):
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)],
        tmp_path,
        base_env,
    )
    [wheel] = tmp_path.glob("customers_registry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"customers_registry", wheel.name.split("-py3")[0] + ".dist-info"}
    service = [n.split("/_service/", 1)[1] for n in names if "/_service/" in n]
    shipped = sorted(n for n in service if "/" not in n)
    assert shipped == SERVICE_MODULES  # a new top-level module must be listed in pyproject
    pages = sorted(path.name for path in (REPO / "static").iterdir())
    assert sorted(n.removeprefix("static/") for n in service if "/" in n) == pages
    entry_points = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith("entry_points.txt")))
        .decode()
    )
    assert "customers_double = customers_registry.pytest_plugin" in entry_points
    import app

    assert wheel.name.startswith(f"customers_registry-{app.__version__}-")


def test_pytest_plugin_in_a_project_with_its_own_modules(tmp_path, base_env):
    root, env = project(tmp_path, base_env)
    assert not (root / ".venv" / "bin" / "pytest").exists()  # the recipe installs it
    result = recipe("install-pytest", root, env)
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout
    assert not (root / "conftest.py").exists()


def test_pytest_plugin_beside_conflicting_pins_runs_the_double_from_elsewhere(tmp_path, base_env):
    root, env = project(tmp_path, base_env)
    own_pins = ["flask==2.3.3", "werkzeug==2.3.8", "marshmallow==3.26.1"]
    run(
        ["pip", "install", "--quiet", *own_pins, f"pytest=={pytest.__version__}"],
        root,
        {**env, "PIP_CONSTRAINT": ""},
    )
    result = recipe("install-pytest-apart", root, env)
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout
    versions = run(
        [
            "python",
            "-c",
            "import importlib.metadata as m;"
            "print(m.version('flask'), m.version('werkzeug'), m.version('marshmallow'))",
        ],
        root,
        env,
    )
    assert versions.stdout.split() == ["2.3.3", "2.3.8", "3.26.1"]  # the project's own


def test_customers_double_command_from_the_package(tmp_path, base_env):
    recipe("install-any-language", tmp_path, base_env)
    command = tmp_path / "double-venv" / "bin" / "customers-double"
    version = run([str(command), "--version"], tmp_path, base_env)
    import app

    assert version.stdout.strip() == f"customers-double {app.__version__}"
    process = subprocess.Popen(
        [str(command), "--api-key", "k-1"],
        cwd=tmp_path,
        env={**base_env, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        port = int(url.rsplit(":", 1)[1])
        assert len(leftovers(tmp_path)) == 1
        body = {"customer": {"customer_id": "c-1", "name": "One"}}
        headers = {"Authorization": "Bearer k-1"}
        assert request(port, "POST", "/api/v1/customers", body, headers).status == 200
        fetched = request(port, "GET", "/api/v1/customers/c-1", headers=headers)
        assert fetched.json()["customer"]["name"] == "One"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        process.stdout.close()
        process.stderr.close()
    assert leftovers(tmp_path) == []
    # The README's shell recipe, with this customers-double first on the PATH.
    (tmp_path / "seed.json").write_text(json.dumps(SEED))
    path = f"{command.parent}{os.pathsep}{base_env['PATH']}"
    result = recipe("shell", tmp_path, {**base_env, "PATH": path, "TMPDIR": str(tmp_path)})
    assert '"customer_id":"seeded-1"' in result.stdout
    assert leftovers(tmp_path) == []


def test_self_hosting_recipe_serves_with_a_minted_key(tmp_path, base_env):
    port = free_port()
    output = tmp_path / "recipe.out"
    with open(output, "w") as out:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", readme_recipe("install-self-host")],
            cwd=tmp_path,
            env={**base_env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, output.read_text()[-3000:]
            try:
                health = request(port, "GET", "/health", timeout=2)
                if health.status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        import app

        assert health.json() == {"status": "ok", "version": app.__version__}
        # gunicorn.conf.py's settings hold under `serve`: one worker per core.
        assert f"{os.cpu_count()} workers" in output.read_text()
        [key] = re.findall(r"^(lk_[A-Za-z0-9_-]{43})$", output.read_text(), re.MULTILINE)
        body = {"customer": {"customer_id": "pp-1", "name": "Pied Piper"}}
        created = request(
            port, "POST", "/api/v1/customers", body, {"Authorization": f"Bearer {key}"}
        )
        assert created.status == 200
        refused = request(port, "POST", "/api/v1/customers", body, {"Authorization": "Bearer x"})
        assert refused.status == 401
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    assert key not in output.read_text().replace(f"\n{key}\n", "", 1)  # shown once, not logged
    assert (tmp_path / "customers.db").exists()
    assert json.loads(created.body)["customer"]["customer_id"] == "pp-1"
