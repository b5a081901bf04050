"""The container image, built from this checkout by podman through the README's recipes
as written, and tested as running containers: the contract over HTTP, data kept on the
volume across a new container, a user that is not root, the double mode, a clean stop
on SIGTERM, the image's size.

CI machines reach no container registry, so the README's build recipe makes the base
image locally (Debian bookworm by mmdebstrap: python3, python3-venv, ca-certificates)
and keeps it between runs; the build trusts the host's CA bundle (a proxy's) for that
step only. podman runs rootful with runc, cgroupfs and a file events log (the
containers.conf below), as root only: elsewhere these tests are skipped (in CI they
fail).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import BACKEND
from tests.support import REPO, free_port, request
from tests.test_double import readme_recipe

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="run once, on the default backend")

IMAGE = "localhost/customers-registry:latest"  # the README's tag
MAX_IMAGE_MB = 250
KEY = "container-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run(env: dict, *args: str, timeout: float = 600, check: bool = True, cwd=None):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check:
        assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> dict[str, str]:
    """The environment podman runs in (its containers.conf)."""
    if os.geteuid() != 0:
        unavailable("the container tests run rootful podman: run them as root")
    if not shutil.which("podman") or not shutil.which("mmdebstrap"):
        unavailable("podman is not installed: run `make servers` (Debian: apt-get install ...)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard_nofile == resource.RLIM_INFINITY else min(65536, hard_nofile)
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'runtime = "runc"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(podman) -> str:
    """The image, built by the README's recipe as written (the base is kept between runs;
    the built image is removed afterwards)."""
    began = time.monotonic()
    run(podman, "bash", "-euo", "pipefail", "-c", readme_recipe("container-build"), cwd=REPO)
    built_in = time.monotonic() - began
    size = int(run(podman, "podman", "image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    print(f"\n  image built in {built_in:.0f} s, {size / 1e6:.0f} MB")
    yield IMAGE
    run(podman, "podman", "rmi", "-f", IMAGE, check=False)
    run(podman, "podman", "image", "prune", "-f", check=False)


class Container:
    """A running container: started here, or by the README's recipe (`name`, `port`)."""

    def __init__(self, env: dict, name: str, port: int):
        self.env, self.name, self.port = env, name, port

    @classmethod
    def start(cls, env: dict, image: str, volume: str, **settings: str) -> Container:
        container = cls(env, f"customers-test-{uuid.uuid4().hex[:8]}", free_port())
        command = ["podman", "run", "-d", "--name", container.name]
        command += ["-p", f"127.0.0.1:{container.port}:8000", "-v", f"{volume}:/data"]
        for name, value in settings.items():
            command += ["-e", f"{name}={value}"]
        run(env, *command, image)
        return container

    def wait(self, path: str = "/health", timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if request(self.port, "GET", path, timeout=2).status < 500:
                    return
            except OSError:
                pass
            state = run(self.env, "podman", "inspect", self.name, "--format", "{{.State.Status}}")
            assert state.stdout.strip() == "running", self.logs()
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def logs(self) -> str:
        result = run(self.env, "podman", "logs", self.name, check=False)
        return result.stdout + result.stderr

    def stop(self) -> int:
        run(self.env, "podman", "stop", "--time", "20", self.name)
        code = run(self.env, "podman", "inspect", self.name, "--format", "{{.State.ExitCode}}")
        return int(code.stdout)

    def remove(self) -> None:
        run(self.env, "podman", "rm", "-f", self.name, check=False)


def clean_up(podman: dict) -> None:
    run(podman, "podman", "rm", "-f", "customers", "customers-double", check=False)
    run(podman, "podman", "volume", "rm", "-f", "customers-data", check=False)


def test_the_readme_recipe_serves_the_contract_and_the_double(podman, image):
    clean_up(podman)
    port, double_port = free_port(), free_port()
    settings = {"PORT": str(port), "DOUBLE_PORT": str(double_port), "API_KEY": KEY}
    try:
        run({**podman, **settings}, "bash", "-euo", "pipefail", "-c", readme_recipe("container"))
        service = Container(podman, "customers", port)
        service.wait()
        body = {"customer": {"customer_id": "boxed", "name": "In a box", "country": "fr"}}
        created = request(port, "POST", "/api/v1/customers", body, AUTH)
        assert created.status == 200
        customer = created.json()["customer"]
        assert customer["country"] == "FR"
        fetched = request(port, "GET", "/api/v1/customers/boxed", headers=AUTH)
        assert fetched.json() == {"customer": customer}
        refused = request(port, "GET", "/api/v1/customers", headers={"Authorization": "Bearer x"})
        assert (refused.status, refused.json()) == (401, {"status": 401, "error": "Unauthorized"})
        bad = request(
            port, "POST", "/api/v1/customers", b"{", {**AUTH, "Content-Type": "application/json"}
        )
        assert (bad.status, bad.json()["error"]) == (400, "Bad Request")
        assert request(port, "GET", "/nowhere").json() == {"status": 404, "error": "Not Found"}
        for path in ("/", "/assets/browser.js"):  # the customer browser, from the package
            page = request(port, "GET", path)
            assert page.status == 200
            assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        import app

        health = request(port, "GET", "/health").json()
        assert health == {"status": "ok", "version": app.__version__}
        assert run(podman, "podman", "exec", "customers", "id", "-u").stdout.strip() == "10001"

        double = Container(podman, "customers-double", double_port)
        double.wait("/_double/requests")
        double_body = {"customer": {"customer_id": "d-1", "name": "Double"}}
        headers = {"Authorization": "Bearer test-key"}
        assert request(double_port, "POST", "/api/v1/customers", double_body, headers).status == 200
        assert request(double_port, "GET", "/_double/").status == 200  # the double's page
        log = request(double_port, "GET", "/_double/requests").json()["requests"]
        assert [(r["method"], r["status"]) for r in log] == [("POST", 200)]
        assert double.stop() == 0

        assert service.stop() == 0  # SIGTERM: a clean stop
        logs = service.logs()
        assert "starting: database sqlite:////data/customers.db" in logs
        assert KEY not in logs
        # A new container on the same volume has the data.
        again = Container.start(podman, image, "customers-data", API_KEY=KEY)
        try:
            again.wait()
            kept = request(again.port, "GET", "/api/v1/customers/boxed", headers=AUTH)
            assert kept.json() == {"customer": customer}
        finally:
            again.remove()
    finally:
        clean_up(podman)


def test_the_image_is_small_and_holds_nothing_secret(podman, image):
    size = int(run(podman, "podman", "image", "inspect", image, "--format", "{{.Size}}").stdout)
    assert size / 1e6 <= MAX_IMAGE_MB, f"{size / 1e6:.0f} MB"
    config = json.loads(run(podman, "podman", "image", "inspect", image).stdout)[0]["Config"]
    assert not any(re.match(r"(API_KEY|PIP_CERT)=", item) for item in config.get("Env", []))
    assert config.get("User") == "10001:10001"
    assert "DATABASE_URL=sqlite:////data/customers.db" in config.get("Env", [])
