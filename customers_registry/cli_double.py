"""`customers-double`: the test double, from its own process (see double.py)."""

from __future__ import annotations

import sys

from customers_registry.paths import put_service_first


def main() -> None:
    put_service_first()
    try:
        import double  # the service's double.py, from the folder just put first
    except ModuleNotFoundError as exc:
        # The package installed without its dependencies (pip install --no-deps): one
        # line that says so, not a traceback.
        print(
            f"customers-double: cannot start: {exc} (this environment lacks the package's "
            "dependencies)",
            file=sys.stderr,
        )
        sys.exit(2)

    sys.exit(double.main())


if __name__ == "__main__":
    main()
