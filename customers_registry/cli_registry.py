"""`customers-registry`: the operator's command (commands.py: `serve`, `keys`, `backup`,
`copy-to`, `migrate`, the same as `flask --app app ...` in a checkout). Every setting
comes from the environment, as for the service."""

from __future__ import annotations

from customers_registry.paths import put_service_first


def main(argv: list[str] | None = None) -> None:
    put_service_first()
    import commands  # the service's commands.py, from the folder just put first

    commands.main(argv)


if __name__ == "__main__":
    main()
