"""Prometheus metrics: every request counted, and timed, by method, route and status.

Under gunicorn each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR
(gunicorn.conf.py makes one when it is not set) and `GET /metrics` sums every worker's,
prometheus_client's multiprocess mode. Elsewhere (the double, the test client) the
process's own values are served.

Every label has a fixed set of values, whatever a client sends, so that no request can
add a series: the route label is the route's pattern (`/api/v1/customers/<customer_id>`),
never a raw path, so a customer_id never becomes a label, and requests that match no route
share one; the method is one of HTTP's usual methods, any other (gunicorn and nginx pass
made-up ones on) is `other`; the status is the one the app answered, from its own code.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

UNMATCHED = "unmatched"
OTHER_METHOD = "other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONVERTER = re.compile(r"<\w+:(\w+)>")  # "<customer_id:customer_id>" -> "<customer_id>"

REQUESTS = Counter(
    "customers_http_requests",
    "HTTP requests answered, refused ones included.",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "customers_http_request_duration_seconds",
    "Time from the request's arrival in the app to its answer.",
    ["method", "route"],
)


def instrument(app: Flask) -> None:
    """Count and time every request of `app`, and serve `GET /metrics`."""

    @app.before_request
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    # The label sets met so far, and their series: labels() costs more than the count.
    # Bounded, as every label is.
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[tuple[str, str], Any] = {}

    @app.after_request
    def count(response: Response) -> Response:
        started = g.get("metrics_started")
        rule = request.url_rule
        route = _CONVERTER.sub(r"<\1>", rule.rule) if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else OTHER_METHOD
        status = response.status_code
        counter = counters.get((method, route, status))
        if counter is None:
            counter = counters[(method, route, status)] = REQUESTS.labels(method, route, status)
        counter.inc()
        if started is not None:
            timer = timers.get((method, route))
            if timer is None:
                timer = timers[(method, route)] = DURATION.labels(method, route)
            timer.observe(time.perf_counter() - started)
        return response

    app.add_url_rule(
        "/metrics",
        "metrics",
        view_func=exposition,
        methods=["GET"],
        provide_automatic_options=False,
    )


def exposition() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
