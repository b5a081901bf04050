"""The commands, in one place: `customers-registry ...` where the package is installed,
and (all but `serve`) `flask --app app ...` in a checkout.

    customers-registry serve [--bind ADDRESS] [--workers N]
    customers-registry keys create --org NAME | keys list | keys revoke PREFIX
    customers-registry backup FILE | copy-to URL | migrate | --version

Every setting comes from the environment, as for the service. A setting, a database
path or a schema that cannot be used stops a command in one line naming it, exit code 2.

Nothing here imports the app at import time, nor so prometheus_client, which picks its
mode (one process, or gunicorn's several) once, when first imported: `serve` runs
gunicorn.conf.py first, which chooses the metrics folder, and only then the app.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo, with_appcontext
from peewee import Database, InterfaceError, OperationalError

import auth
import connections
import migrations
import models

HERE = Path(__file__).resolve().parent

# What a database that cannot be reached, or cannot write, raises.
DATABASE_ERRORS = (OperationalError, InterfaceError)


class Refused(click.ClickException):
    """What the command was given (a name, a path) cannot be used: one line, exit 2."""

    exit_code = 2


def _app() -> Flask:
    return current_app  # type: ignore[return-value]


def _url() -> str:
    return _app().extensions["customers.settings"].database_url


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _on_database() -> Iterator[Database]:
    """The app's database, active for a block; a database error is one line, exit 1."""
    db = _app().extensions["customers.db"]
    try:
        with connections.using(db):
            yield db
    except DATABASE_ERRORS as exc:
        url = connections.masked_url(_url())
        raise click.ClickException(f"cannot use the database {url}: {_first_line(exc)}") from None


# --- keys ---------------------------------------------------------------------------------

keys_command = AppGroup("keys", help="Mint, list and revoke API keys.")


def _organization_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return auth.check_organization_name(value)
    except ValueError as exc:
        raise Refused(f"--org: {exc}") from None


@keys_command.command("create")
@click.option(
    "--org",
    "organization",
    required=True,
    callback=_organization_name,
    help=f"Organization name (1 to {auth.ORGANIZATION_MAX_LENGTH} characters, no control"
    " characters).",
)
def create_key(organization: str) -> None:
    """Mint a key (creating the organization when new); prints it, once."""
    with _on_database():
        key = auth.create_key(organization)
    click.echo(f"New key for organization {organization!r}; it is shown only this once:")
    click.echo(key)


def _shown(name: str) -> str:
    # Names are checked when made; one made by an older release is escaped all the same,
    # so that no name can forge a line of the listing.
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


@keys_command.command("list")
def list_keys() -> None:
    """Organizations and key prefixes (never whole keys)."""
    with _on_database():
        rows = models.list_api_keys()
    click.echo(f"{'ORGANIZATION':<24} {'PREFIX':<14} {'CREATED':<20} REVOKED")
    for row in rows:
        revoked = row["revoked_at"].isoformat(" ") if row["revoked_at"] else "-"
        click.echo(
            f"{_shown(row['organization']):<24} {row['prefix'] + '…':<14} "
            f"{row['created_at'].isoformat(' '):<20} {revoked}"
        )


@keys_command.command("revoke")
@click.argument("prefix")
def revoke_key(prefix: str) -> None:
    """Revoke the key whose prefix (as `keys list` shows it) or whole value is PREFIX."""
    with _on_database():
        revoked = models.revoke_api_key(auth.key_prefix(prefix.rstrip("…")))
    if not revoked:
        raise click.ClickException(f"no active key with prefix {prefix!r}")
    click.echo("revoked")


# --- backup, copy-to, migrate -------------------------------------------------------------


@click.command("backup")
@click.argument("destination", type=click.Path(dir_okay=False))
@with_appcontext
def backup_command(destination: str) -> None:
    """Copy the live SQLite database to DESTINATION, a new file (0600) in a folder that
    exists, safely while the service runs."""
    try:
        count = connections.backup_sqlite(_app().extensions["customers.db"], destination)
    except FileExistsError:
        raise click.ClickException(f"{destination} exists already; name a new file") from None
    except connections.UnusablePath as exc:
        raise Refused(str(exc)) from None
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    except DATABASE_ERRORS as exc:
        raise click.ClickException(f"backup failed: {_first_line(exc)}") from None
    click.echo(f"backed up {count} customers to {destination}")


def refuse_unless_empty(target: Database) -> None:
    """Raise ValueError (or SchemaTooNew, SchemaUnusable) unless `target` can receive a
    copy: no table at all, or this service's tables without a row. Reads only."""
    ours = {model._meta.table_name for model in models.TABLES}
    with connections.using(target):
        tables = {t for t in target.get_tables() if not t.startswith("sqlite_")}
        others = sorted(tables - ours - {"schema_version"})
        if others:
            raise ValueError(
                "the target database is not empty: it holds tables of another application"
                f" ({', '.join(others)})"
            )
        for table in sorted(tables & ours):
            if target.execute_sql(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
                raise ValueError("the target database is not empty")
        found = migrations.version_of(target)
    if found is not None and found > migrations.SCHEMA_VERSION:
        raise migrations.SchemaTooNew(found)


@click.command("copy-to")
@click.argument("target_url")
@with_appcontext
def copy_to_command(target_url: str) -> None:
    """Copy all data (organizations, keys, customers) into the empty database at
    TARGET_URL, e.g. to move from SQLite to PostgreSQL. A target that is not empty is
    refused before anything is changed in it."""
    shown = connections.masked_url(target_url)
    try:
        target = connections.open_database(target_url)
    except connections.UnusablePath as exc:
        raise Refused(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        refuse_unless_empty(target)
        migrations.upgrade(target)
        copied = models.copy_database(_app().extensions["customers.db"], target)
    except (ValueError, migrations.SchemaTooNew) as exc:
        raise click.ClickException(f"{shown}: {exc}") from None
    except DATABASE_ERRORS as exc:
        raise click.ClickException(f"cannot reach {shown}: {_first_line(exc)}") from None
    finally:
        target.close_all()
    click.echo(", ".join(f"{count} {table}" for table, count in copied.items()) + " copied")


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Bring the database's schema up to this release's version (the service does it
    at start too); changes nothing on an up-to-date database."""
    # Building the app upgraded the schema already, unless the database could not be
    # reached then: either upgrade says what it found.
    upgraded_from = _app().extensions["customers.preparation"].upgraded_from
    try:
        found, now = migrations.upgrade(_app().extensions["customers.db"])
    except DATABASE_ERRORS as exc:
        url = connections.masked_url(_url())
        raise click.ClickException(f"cannot reach the database {url}: {_first_line(exc)}") from None
    if found is not None and found != now:
        upgraded_from = found
    if upgraded_from is not None:
        click.echo(f"schema upgraded from version {upgraded_from} to {now}")
    else:
        click.echo(f"schema up to date at version {now}")


# The commands `flask --app app` offers (app.py registers them) and `customers-registry`.
COMMANDS = (keys_command, backup_command, copy_to_command, migrate_command)


# --- serve --------------------------------------------------------------------------------


@click.command("serve")
@click.option("--bind", help="Address to listen on (default: BIND, else 127.0.0.1:8000).")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default: WEB_CONCURRENCY)."
)
def serve_command(bind: str | None, workers: int | None) -> None:
    """Serve the API with gunicorn and the shipped gunicorn.conf.py settings (which
    stop the start in one line on a bad setting, a database that cannot be made or a
    schema that cannot be served)."""
    # The order matters. gunicorn.conf.py first: it refuses a bad number in one line
    # (gunicorn reads WEB_CONCURRENCY itself, with a traceback, when its config module
    # is imported, just below) and sets PROMETHEUS_MULTIPROC_DIR before the app, and so
    # prometheus_client, is imported (by its on_starting hook, in the master).
    config = runpy.run_path(str(HERE / "gunicorn.conf.py"))
    if bind:
        config["bind"] = [bind]
    if workers:
        config["workers"] = workers
    from gunicorn.app.base import BaseApplication

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            for name, value in config.items():
                if name in self.cfg.settings:
                    self.cfg.set(name, value)

        def load(self) -> Any:
            import app

            return app.create_app()

    Gunicorn().run()


# --- customers-registry -------------------------------------------------------------------


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import app

        click.echo(f"customers-registry {app.__version__}")
        ctx.exit()


@click.group(
    "customers-registry",
    help="The customers registry: serve it, and manage its keys and data.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def registry() -> None:
    pass


registry.add_command(serve_command)
for _command in COMMANDS:
    registry.add_command(_command)


def app_for_commands() -> Flask:
    """The app a command runs in, its database checked first: a command, unlike the
    service, has no later request to heal on, so a SQLite file it cannot write is
    refused (exit 2) and a database it cannot reach is one line (exit 1)."""
    import app

    settings = app.Settings.from_mapping(os.environ)
    path = connections.sqlite_file(settings.database_url)
    if path is not None:
        connections.check_sqlite_writable(path)
    db = connections.open_database(settings.database_url, busy_timeout=settings.db_timeout)
    try:
        with connections.using(db):
            db.connect(reuse_if_open=True)
    except DATABASE_ERRORS as exc:
        url = connections.masked_url(settings.database_url)
        raise click.ClickException(f"cannot reach the database {url}: {_first_line(exc)}") from None
    finally:
        db.close_all()
    return app.create_app()


def main(argv: list[str] | None = None) -> None:
    """`customers-registry`: a setting, a database path or a schema that cannot be used
    is one line on stderr, exit code 2."""
    info = ScriptInfo(create_app=app_for_commands, set_debug_flag=False)
    try:
        registry.main(argv, prog_name="customers-registry", obj=info)
    except (ValueError, migrations.SchemaTooNew) as exc:
        print(f"customers-registry: {exc}", file=sys.stderr)
        sys.exit(2)
