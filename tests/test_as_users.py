"""The installed commands, started as a user starts them: a fresh venv built from this
checkout, an environment holding only PATH, HOME and the settings the README names
(tests/installed.py). Each check here is of something a user meets only this way."""

from __future__ import annotations

import pytest

from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="the installed commands, once")


def test_serve_answers_with_nothing_but_path_and_home(installed, tmp_path):
    import app

    env = installed.env(tmp_path / "home")
    version = installed.run("customers-registry", "--version", env=env, cwd=tmp_path)
    assert version.stdout.strip() == f"customers-registry {app.__version__}"
    with installed.serve(tmp_path, env, workers=1) as served:
        assert served.request("GET", "/health").json() == {
            "status": "ok",
            "version": app.__version__,
        }
    assert (tmp_path / "customers.db").exists()  # the default database, in the folder it ran
