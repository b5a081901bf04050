"""`customers-registry`: the operator's command. `serve` runs gunicorn with the shipped
gunicorn.conf.py; `keys`, `backup` and `copy-to` are the service's own commands (the
same as `flask --app app ...` in a checkout). Every setting comes from the environment,
as for the service."""

from __future__ import annotations

import runpy
import sys
from typing import Any

from customers_registry.paths import put_service_first


def main(argv: list[str] | None = None) -> None:
    directory = put_service_first()
    import click
    from flask.cli import ScriptInfo
    from gunicorn.app.base import BaseApplication

    import app as service  # the service's app.py, from the folder just put first
    import migrations

    class Gunicorn(BaseApplication):
        """gunicorn with the shipped gunicorn.conf.py, serving `create_app()`."""

        def __init__(self, overrides: dict[str, Any]):
            self.overrides = overrides
            super().__init__()

        def load_config(self) -> None:
            settings = runpy.run_path(str(directory / "gunicorn.conf.py"))
            settings.update((k, v) for k, v in self.overrides.items() if v is not None)
            for name, value in settings.items():
                if name in self.cfg.settings:
                    self.cfg.set(name, value)

        def load(self) -> Any:
            return service.create_app()

    @click.group(
        "customers-registry",
        help="The customers registry: serve it, and manage its keys and data.",
    )
    @click.version_option(
        service.__version__, prog_name="customers-registry", message="%(prog)s %(version)s"
    )
    def registry() -> None:
        pass

    @registry.command("serve")
    @click.option("--bind", help="Address to listen on (default: BIND, else 127.0.0.1:8000).")
    @click.option("--workers", type=int, help="Worker processes (default: WEB_CONCURRENCY).")
    def serve(bind: str | None, workers: int | None) -> None:
        """Serve the API with gunicorn and the shipped gunicorn.conf.py settings (which
        stop the start in one line on a bad setting or a newer database)."""
        Gunicorn({"bind": [bind] if bind else None, "workers": workers}).run()

    for command in service.COMMANDS:
        registry.add_command(command)

    info = ScriptInfo(create_app=service.create_app, set_debug_flag=False)
    try:
        registry.main(argv, prog_name="customers-registry", obj=info)
    except (ValueError, migrations.SchemaTooNew) as exc:  # met building the app for a command
        print(f"customers-registry: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
