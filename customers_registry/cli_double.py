"""`customers-double`: the test double, from its own process (see double.py)."""

from __future__ import annotations

import sys

from customers_registry.paths import put_service_first


def main() -> None:
    put_service_first()
    import double  # the service's double.py, from the folder just put first

    sys.exit(double.main())


if __name__ == "__main__":
    main()
