"""The container image, built from this checkout by podman through the README's recipes
as written, and tested as running containers: the contract over HTTP, `/metrics`, data
kept on the volume across a new container, a user that is not root, the double mode, a
clean stop on SIGTERM, nothing left behind by the removal recipe, the image's size, and
no file of the checkout in the image but the package's own.

CI machines reach no container registry, so the README's build recipe makes the base
image locally (Debian bookworm by mmdebstrap: python3, python3-venv, ca-certificates)
and keeps it between runs; the build trusts the host's CA bundle (a proxy's) for that
step only.

podman runs rootful (as root only: elsewhere these tests are skipped; in CI they fail)
with the host's own configuration, as a user's podman does: no containers.conf of the
tests'. What a host needs of the run recipe is in the recipe itself (its `--ulimit`s:
where the host's hard limits are below podman's default and podman may not raise them,
as on this machine, the recipe without them fails), so a recipe that breaks for users
breaks here too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
import uuid

import pytest

from tests.conftest import BACKEND
from tests.support import REPO, free_port, request
from tests.test_double import readme_recipe
from tests.test_operating import count, scrape

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="run once, on the default backend")

IMAGE = "localhost/customers-registry:latest"  # the README's tag
MAX_IMAGE_MB = 250
KEY = "container-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The run recipe's limits, which the tests' own containers take too.
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
# A file a developer left at the top of the checkout: it must not reach the image.
STRAY = f"stray_{uuid.uuid4().hex[:8]}.py"


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
def podman() -> dict[str, str]:
    """The environment podman runs in: the caller's, podman's configuration included."""
    if os.geteuid() != 0:
        unavailable("the container tests run rootful podman: run them as root")
    if not shutil.which("podman") or not shutil.which("mmdebstrap"):
        unavailable("podman is not installed: run `make servers` (Debian: apt-get install ...)")
    return dict(os.environ)


@pytest.fixture(scope="module")
def image(podman) -> str:
    """The image, built by the README's recipe as written, in this checkout with a stray
    file left at its top (the base is kept between runs; the built image is removed
    afterwards)."""
    stray = REPO / STRAY
    stray.write_text("SECRET = 'a developer's scratch file'\n")
    began = time.monotonic()
    try:
        run(podman, "bash", "-euo", "pipefail", "-c", readme_recipe("container-build"), cwd=REPO)
    finally:
        stray.unlink()
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
    def start(cls, env: dict, image: str, volume: str | None, **settings: str) -> Container:
        """A container of the image on `volume` (None: an anonymous one, as the image's
        VOLUME makes)."""
        container = cls(env, f"customers-test-{uuid.uuid4().hex[:8]}", free_port())
        command = ["podman", "run", "-d", "--name", container.name, *ULIMITS]
        command += ["-p", f"127.0.0.1:{container.port}:8000"]
        if volume:
            command += ["-v", f"{volume}:/data"]
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

    def volumes(self) -> list[str]:
        mounts = run(self.env, "podman", "inspect", self.name, "--format", "{{json .Mounts}}")
        return [mount["Name"] for mount in json.loads(mounts.stdout) if mount.get("Name")]

    def remove(self) -> None:
        run(self.env, "podman", "rm", "-f", "-v", self.name, check=False)


def volume_exists(podman: dict, name: str) -> bool:
    return run(podman, "podman", "volume", "exists", name, check=False).returncode == 0


def clean_up(podman: dict) -> None:
    run(podman, "podman", "rm", "-f", "-v", "customers", "customers-double", check=False)
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

        # The removal recipe leaves nothing: no container, no volume, anonymous or named.
        made = service.volumes() + double.volumes()
        assert "customers-data" in made and len(made) == 2, made  # the double's: anonymous
        run(podman, "bash", "-euo", "pipefail", "-c", readme_recipe("container-remove"))
        for name in ("customers", "customers-double"):
            assert run(podman, "podman", "container", "exists", name, check=False).returncode
        assert [name for name in made if volume_exists(podman, name)] == []
    finally:
        clean_up(podman)


def test_the_images_command_counts_requests_in_metrics(podman, image):
    container = Container.start(podman, image, None, API_KEY=KEY)
    try:
        container.wait()
        body = {"customer": {"customer_id": "metered", "name": "Counted"}}
        for _ in range(3):
            assert request(container.port, "POST", "/api/v1/customers", body, AUTH).status == 200
        samples = scrape(container.port)
        total = "customers_http_requests_total"
        posts = count(samples, total, method="POST", route="/api/v1/customers", status="200")
        assert posts == 3, samples
    finally:
        volumes = container.volumes()
        container.remove()
        assert [name for name in volumes if volume_exists(podman, name)] == []


def test_the_image_is_small_and_holds_nothing_secret(podman, image):
    size = int(run(podman, "podman", "image", "inspect", image, "--format", "{{.Size}}").stdout)
    assert size / 1e6 <= MAX_IMAGE_MB, f"{size / 1e6:.0f} MB"
    config = json.loads(run(podman, "podman", "image", "inspect", image).stdout)[0]["Config"]
    assert not any(re.match(r"(API_KEY|PIP_CERT)=", item) for item in config.get("Env", []))
    assert config.get("User") == "10001:10001"
    assert "DATABASE_URL=sqlite:////data/customers.db" in config.get("Env", [])


def allowed_in_the_context(path) -> list[str]:
    """The names .containerignore lets in (its `!name` lines)."""
    lines = path.read_text().splitlines()
    return [line[1:] for line in lines if line.startswith("!")]


def test_only_the_packages_files_are_in_any_layer_of_the_image(podman, image, tmp_path):
    """Every layer, not only the last state: the COPY layer keeps what a later RUN
    deletes. The sources copied to /src are exactly what .containerignore lets in."""
    saved = subprocess.Popen(["podman", "save", image], env=podman, stdout=subprocess.PIPE)
    names: set[str] = set()
    try:
        with tarfile.open(fileobj=saved.stdout, mode="r|") as archive:
            for member in archive:  # the layers, each a tar (and links to them)
                if member.isfile() and member.name.endswith(".tar"):
                    with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as layer:
                        names.update(entry.name.removeprefix("./") for entry in layer)
    finally:
        saved.stdout.close()
        assert saved.wait(120) == 0
    assert not [name for name in names if STRAY in name]
    sources = {name.split("/")[1] for name in names if name.startswith("src/") and "/" in name}
    sources.discard("")
    allowed = set(allowed_in_the_context(REPO / ".containerignore"))
    assert sources == allowed


def test_the_build_context_lets_in_what_the_package_takes():
    """What pyproject.toml builds the package from is let into the image's build context,
    and docker reads the same list as podman (no podman needed)."""
    allowed = allowed_in_the_context(REPO / ".containerignore")
    assert (REPO / ".dockerignore").read_text() == (REPO / ".containerignore").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    taken = [*wheel["force-include"], *wheel["packages"], pyproject["project"]["readme"]]
    taken += pyproject["project"]["license-files"]
    assert sorted(set(taken) - set(allowed)) == []
    assert all((REPO / name).exists() for name in allowed)
