"""Database outages in the log: one line when the database stops answering, one when it
answers again, instead of one record per refused request.

While PostgreSQL is down (or an SQLite file cannot be written) every request that needs
the database is answered 503. Logged one by one, that was about 1,600 two-line records
per host in a 5 s outage. Each worker process keeps an `OutageLog` instead: the first refused
request writes the start line (the driver's reason, first line only, and the database's
URL with its password masked), the requests refused after it are only counted, and the
first request served once the refusals have stopped writes the end line with that count.

Knows no HTTP: app.py calls `refused` from its 503 handler and `served` when a request
has used the database without a fault.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable


def reason(exc: BaseException) -> str:
    """The first line of a driver's message (psycopg2's runs over two or three lines:
    `... Connection refused` then `Is the server running ...`)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class OutageLog:
    """One worker's view of the database's outages.

    An outage starts at the first refused request and ends at the first request served
    `quiet` seconds or more after the last refused one. The quiet time keeps a partial
    fault (a full SQLite disk refuses writes while reads still work) from writing a pair
    of lines at every write that follows a read.
    """

    def __init__(
        self,
        database: str,
        log: logging.Logger,
        password: str | None = None,
        quiet: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.database = database  # as logged: the URL with its password masked
        self.log = log
        self.password = password  # kept out of the driver's text, should it appear there
        self.quiet = quiet
        self.clock = clock
        self._lock = threading.Lock()  # threaded workers share one OutageLog
        self._started: float | None = None
        self._refused = 0
        self._last_refusal = 0.0
        self._back: float | None = None  # the first request served after the last refusal

    def refused(self, exc: BaseException) -> None:
        """A request was answered 503 because of `exc`."""
        with self._lock:
            now = self.clock()
            self._refused += 1
            self._last_refusal = now
            self._back = None
            if self._started is not None:
                return
            self._started = now
        text = reason(exc)
        if self.password:
            text = text.replace(self.password, "***")
        self.log.error(
            "database unavailable: %s; answering 503 until it is back (database %s, worker %d)",
            text,
            self.database,
            os.getpid(),
        )

    def served(self) -> None:
        """A request used the database without a fault."""
        with self._lock:
            if self._started is None:
                return
            now = self.clock()
            if self._back is None:
                self._back = now
            if now - self._last_refusal < self.quiet:
                return
            lasted, refused = self._back - self._started, self._refused
            self._started, self._refused, self._back = None, 0, None
        self.log.warning(
            "database available again after %.1f s; %d requests answered 503 meanwhile"
            " (database %s, worker %d)",
            lasted,
            refused,
            self.database,
            os.getpid(),
        )
