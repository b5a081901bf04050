"""The service as a user starts it: the package installed from this checkout into a fresh
venv, and its commands (`customers-registry`, `customers-double`) run in an environment
that holds only PATH, HOME and the settings a test names, as the README tells a user to.

A test that sets something up a user never does (an environment variable, a config file)
can pass while the feature is broken for users: tests of how the installed commands
behave use these fixtures, not the checkout's modules.

    def test_x(installed, tmp_path):
        env = installed.env(tmp_path, API_KEY="k")            # PATH, HOME, API_KEY only
        result = installed.run("customers-registry", "migrate", env=env, cwd=tmp_path)
        with installed.serve(tmp_path, env) as served:       # `customers-registry serve`
            reply = served.request("GET", "/health")
            served.log_text()                                 # stdout and stderr so far
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, Reply, free_port, request

# The PATH a user's login shell has, before they add the venv (or activate it).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def pinned_constraints(path: Path) -> Path:
    """requirements*.txt's exact pins as a pip constraints file: the venv gets the
    versions the rest of the suite runs."""
    pins = []
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                pins.append(line.strip())
    path.write_text("\n".join(pins) + "\n")
    return path


@dataclass
class Served:
    """A running `customers-registry serve` (master and workers in their own session)."""

    process: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str]

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return request(self.port, method, path, body, **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@dataclass
class Installed:
    """The package installed in a fresh venv (`bin`: its scripts)."""

    venv: Path
    bin: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bin = self.venv / "bin"

    def env(self, home: Path, **settings: str) -> dict[str, str]:
        """What a user's shell holds: PATH (the venv's bin first, as after `activate`),
        HOME, and these settings, nothing else."""
        home.mkdir(parents=True, exist_ok=True)
        return {"PATH": f"{self.bin}{os.pathsep}{SYSTEM_PATH}", "HOME": str(home), **settings}

    def run(
        self, *argv: str, env: dict[str, str], cwd: Path, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run an installed command (`customers-registry ...`) to its end."""
        command = [str(self.bin / argv[0]), *argv[1:]]
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    @contextmanager
    def serve(
        self,
        cwd: Path,
        env: dict[str, str],
        *args: str,
        workers: int | None = None,
        timeout: float = 60,
    ) -> Iterator[Served]:
        """`customers-registry serve --bind 127.0.0.1:PORT` until /health answers 200."""
        port = free_port()
        log_path = cwd / f"serve-{port}.log"
        argv = [str(self.bin / "customers-registry"), "serve", "--bind", f"127.0.0.1:{port}"]
        if workers is not None:
            argv += ["--workers", str(workers)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [*argv, *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        served = Served(process, port, log_path, env)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"serve exited {process.returncode}:\n{served.log_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"serve did not answer in {timeout} s:\n{served.log_text()}"
                    )
                try:
                    if request(port, "GET", "/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            yield served
        finally:
            served.stop()


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """The package with its PostgreSQL extra, built by pip from this checkout into a new
    venv, once per session. pip's own settings (an index, a certificate) are the
    machine's: installing is not what these tests are about, starting is."""
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip_env = {
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
        "PATH": SYSTEM_PATH,
        "HOME": str(root),
        "PIP_CONSTRAINT": str(pinned_constraints(root / "constraints.txt")),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", f"{REPO}[postgresql]"],
        env=pip_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Installed(venv)
