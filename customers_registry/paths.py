"""Where the service's modules are, and how a command process imports them."""

from __future__ import annotations

import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def service_directory() -> Path:
    """The folder holding app.py and its siblings: `customers_registry/_service/` in an
    installed package, the repository's top in a checkout."""
    installed = _PACKAGE / "_service"
    return installed if installed.is_dir() else _PACKAGE.parent


def put_service_first() -> Path:
    """Put the service's folder first on this process's import path, so that `app`,
    `models`, ... are the service's own whatever the current directory holds. Only for
    the commands' own processes: never call it from a test process."""
    directory = str(service_directory())
    if sys.path[:1] != [directory]:
        sys.path.insert(0, directory)
    return Path(directory)
